"""Learning-rate schedules and optimiser construction."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainer.training import optimizers


def test_rsqrt_schedule_warms_up_then_decays_as_t5x():
  sched = optimizers.create_schedule(base_learning_rate=1.0, warmup_steps=100, decay='rsqrt')
  assert float(sched(0)) == pytest.approx(0.01)
  assert float(sched(49)) == pytest.approx(0.5)
  assert float(sched(100)) == pytest.approx(1.0)
  assert float(sched(400)) == pytest.approx(0.5)  # sqrt(100 / 400)


def test_cosine_and_linear_reach_end_fraction():
  cos = optimizers.create_schedule(base_learning_rate=2.0, warmup_steps=10, decay='cosine',
                                   total_steps=110, end_fraction=0.1)
  assert float(cos(10)) == pytest.approx(2.0)
  assert float(cos(60)) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))
  assert float(cos(110)) == pytest.approx(0.2)
  lin = optimizers.create_schedule(base_learning_rate=1.0, warmup_steps=0, decay='linear',
                                   total_steps=100)
  assert float(lin(25)) == pytest.approx(0.75)
  assert float(lin(1000)) == pytest.approx(0.0)


@pytest.mark.parametrize('kwargs,match', [
    ({'decay': 'exp'}, r"create_schedule.decay must be one of .*'exp'"),
    ({'decay': 'cosine', 'total_steps': None}, 'create_schedule.total_steps must be > warmup'),
    ({'base_learning_rate': -1.0}, 'create_schedule.base_learning_rate must be > 0'),
])
def test_schedule_errors_name_the_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optimizers.create_schedule(**kwargs)


def test_optimizer_errors_name_the_field():
  with pytest.raises(ValueError, match="create_optimizer.name must be one of .*'sgd'"):
    optimizers.create_optimizer(name='sgd')


def _params():
  return {'kernel': jnp.ones((4, 3)), 'scale': jnp.ones((3,))}


def test_adamw_weight_decay_skips_vectors_and_clipping_bounds_update():
  tx = optimizers.create_optimizer(name='adamw', learning_rate=0.1, weight_decay=0.5,
                                   clip_grad_norm=None)
  params = _params()
  zero_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], -0.1 * 0.5 * np.ones((4, 3)), rtol=1e-6)
  np.testing.assert_allclose(updates['scale'], 0.0)
  # Global-norm clipping: a huge gradient is clipped to norm 1 before the (SGD-like) first step.
  clipped = optax.chain(optax.clip_by_global_norm(1.0))
  g = {'kernel': 1e6 * jnp.ones((4, 3)), 'scale': jnp.zeros((3,))}
  out, _ = clipped.update(g, clipped.init(params))
  assert float(optax.global_norm(out)) == pytest.approx(1.0, rel=1e-5)


def test_adafactor_factors_matrices_and_updates_params():
  tx = optimizers.create_optimizer(name='adafactor', learning_rate=0.01)
  params = {'kernel': jnp.ones((256, 300)), 'scale': jnp.ones((300,))}
  state = tx.init(params)
  leaves = jax.tree_util.tree_leaves(state)
  # Factored second moments: no leaf of the full matrix size for the (256, 300) kernel.
  assert not any(getattr(l, 'shape', None) == (256, 300) for l in leaves)
  grads = jax.tree_util.tree_map(lambda p: 0.1 * jnp.ones_like(p), params)
  updates, _ = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  assert float(jnp.max(new['kernel'])) < 1.0
