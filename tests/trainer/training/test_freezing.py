"""Tests for trainer/freezing.py: the cross-attention warm-up optax wrapper."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainer.training import freezing


def _params():
  rng = np.random.default_rng(0)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  layer = {
      'pre_attention_norm': {'scale': f(4)},
      'self_attn': {'q_proj': {'kernel': f(4, 2, 3)}},
      'pre_cross_attn_norm': {'scale': f(4)},
      'cross_attn': {'q_proj': {'kernel': f(4, 2, 3)}, 'k_proj': {'kernel': f(6, 1, 3)}},
      'post_cross_attn_norm': {'scale': f(4)},
      'mlp': {'gate_proj': {'kernel': f(4, 8)}},
  }
  return {'encoder': {'embedder': {'embedding': f(10, 6)}, 'layer_0': {'mlp': {'up_proj': {'kernel': f(6, 8)}}}},
          'decoder': {'embedder': {'embedding': f(10, 4)}, 'layer_0': layer}}


def _loss(params):
  return sum(jnp.sum(jnp.sin(x) * x) for x in jax.tree_util.tree_leaves(params))


def _run(tx, params, steps):
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(_loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  history = []
  for _ in range(steps):
    params, state = step(params, state)
    history.append(params)
  return history


def _split(tree):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  cross = {freezing.path_keys(p): np.asarray(v) for p, v in flat if freezing.is_cross_attention(freezing.path_keys(p))}
  other = {freezing.path_keys(p): np.asarray(v) for p, v in flat if not freezing.is_cross_attention(freezing.path_keys(p))}
  return cross, other


def test_is_cross_attention_selects_block_and_its_norms():
  mask = freezing.trainable_mask(_params(), freezing.is_cross_attention)
  flat = {freezing.path_keys(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert flat[('decoder', 'layer_0', 'cross_attn', 'k_proj', 'kernel')] is True
  assert flat[('decoder', 'layer_0', 'pre_cross_attn_norm', 'scale')] is True
  assert flat[('decoder', 'layer_0', 'post_cross_attn_norm', 'scale')] is True
  assert flat[('decoder', 'layer_0', 'self_attn', 'q_proj', 'kernel')] is False
  assert flat[('encoder', 'embedder', 'embedding')] is False
  assert sum(flat.values()) == 4


@pytest.mark.parametrize('inner', [
    optax.adamw(1e-2, weight_decay=0.5),  # decoupled weight decay moves params with zero grads
    optax.chain(optax.clip_by_global_norm(1.0), optax.adafactor(1e-2, weight_decay_rate=0.1)),
], ids=['adamw_wd', 'adafactor_wd'])
def test_warmup_keeps_non_cross_attention_bit_identical_then_trains_all(inner):
  params = _params()
  k = 3
  history = _run(freezing.freeze_until(inner, num_steps=k), params, steps=k + 2)
  init_cross, init_other = _split(params)
  for step_params in history[:k]:
    cross, other = _split(step_params)
    for key, value in other.items():
      np.testing.assert_array_equal(value, init_other[key], err_msg=str(key))
      assert value.tobytes() == init_other[key].tobytes(), key
  cross, _ = _split(history[k - 1])
  for key, value in cross.items():
    assert not np.array_equal(value, init_cross[key]), f'{key} did not train during warm-up'
  # After the warm-up every parameter moves.
  _, other_after = _split(history[k])
  for key, value in other_after.items():
    assert not np.array_equal(value, init_other[key]), f'{key} still frozen after warm-up'


def test_zero_steps_is_the_inner_optimizer():
  params = _params()
  inner = optax.adamw(1e-2, weight_decay=0.1)
  wrapped = _run(freezing.freeze_until(inner, num_steps=0), params, steps=2)[-1]
  plain = _run(inner, params, steps=2)[-1]
  for a, b in zip(jax.tree_util.tree_leaves(wrapped), jax.tree_util.tree_leaves(plain)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_no_trainable_param_is_a_clear_error():
  params = {'decoder': {'layer_0': {'mlp': {'gate_proj': {'kernel': jnp.ones((2, 2))}}}}}
  with pytest.raises(ValueError, match='no parameter matches the trainable predicate'):
    freezing.freeze_until(optax.sgd(0.1), num_steps=5).init(params)


def test_cross_attention_warmup_wraps_factories_and_checks_steps():
  factory = freezing.cross_attention_warmup(lambda learning_rate: optax.sgd(learning_rate), warmup_steps=2)
  tx = factory(learning_rate=0.5)
  state = tx.init(_params())
  assert isinstance(state, freezing.FreezeState)
  assert isinstance(freezing.cross_attention_warmup(optax.sgd(0.1), warmup_steps=1), optax.GradientTransformation)
  with pytest.raises(ValueError, match='CROSS_ATTN_WARMUP_STEPS'):
    freezing.cross_attention_warmup(optax.sgd(0.1), warmup_steps=-1)
  with pytest.raises(ValueError, match='not an optax.GradientTransformation'):
    freezing.cross_attention_warmup(lambda: 3, warmup_steps=1)()
