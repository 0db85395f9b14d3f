"""Tests for trainer/distillation.py: the CE + KL loss and the teacher's prefix+target sequence."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.adaptation import distillation
from trainer.training import losses


def _logits(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * 3.0, jnp.float32)


def _targets():
  targets = jnp.asarray([[3, 1, 4, 0], [2, 2, 0, 0]], jnp.int32)
  return targets, (targets != 0).astype(jnp.float32)


def test_weight_zero_equals_plain_cross_entropy():
  student, teacher = _logits(0, (2, 4, 7)), _logits(1, (2, 4, 7))
  targets, weights = _targets()
  mixed = distillation.distillation_loss(student, teacher, targets, weights, distill_weight=0.0,
                                         temperature=2.0, z_loss=1e-4)
  plain = losses.cross_entropy_with_z_loss(student, targets, weights, z_loss=1e-4)
  np.testing.assert_allclose(mixed['loss'][0], plain['loss'][0], rtol=1e-6)
  assert float(mixed['loss'][1]) == float(plain['loss'][1]) == 5.0
  assert float(mixed['kl'][0]) > 0.1  # the teacher differs, but weight 0 ignores it
  # And the gradients agree too.
  g_mixed = jax.grad(lambda s: losses.mean_loss(distillation.distillation_loss(
      s, teacher, targets, weights, distill_weight=0.0, temperature=2.0)))(student)
  g_plain = jax.grad(lambda s: losses.mean_loss(losses.cross_entropy_with_z_loss(s, targets, weights)))(student)
  np.testing.assert_allclose(g_mixed, g_plain, atol=1e-7)


@pytest.mark.parametrize('temperature', [0.5, 1.0, 3.0])
def test_kl_is_zero_when_student_equals_teacher(temperature):
  logits = _logits(2, (2, 4, 11))
  kl = distillation.kl_divergence(logits, logits, temperature=temperature)
  np.testing.assert_allclose(kl, 0.0, atol=1e-6)
  targets, weights = _targets()
  out = distillation.distillation_loss(logits, logits, targets, weights, distill_weight=1.0,
                                       temperature=temperature)
  assert abs(float(out['loss'][0])) < 1e-5
  # Gradient of the KL term at student == teacher is zero.
  g = jax.grad(lambda s: losses.mean_loss(distillation.distillation_loss(
      s, logits, targets, weights, distill_weight=1.0, temperature=temperature)))(logits)
  np.testing.assert_allclose(g, 0.0, atol=1e-6)


def test_hand_computed_small_case():
  # One token, vocab 2. Teacher logits (0, ln 3) -> p = (1/4, 3/4) at T=1.
  # Student logits (0, 0) at T=2 -> still (1/2, 1/2); teacher at T=2: (0, ln3/2) -> (1/(1+sqrt3), sqrt3/(1+sqrt3)).
  teacher = jnp.asarray([[[0.0, math.log(3.0)]]])
  student = jnp.asarray([[[0.0, 0.0]]])
  targets = jnp.asarray([[1]])
  weights = jnp.asarray([[1.0]])
  s3 = math.sqrt(3.0)
  p = (1 / (1 + s3), s3 / (1 + s3))
  kl_t2 = p[0] * math.log(p[0] / 0.5) + p[1] * math.log(p[1] / 0.5)
  ce = math.log(2.0)
  w, temp = 0.25, 2.0
  expected = (1 - w) * ce + w * temp**2 * kl_t2
  out = distillation.distillation_loss(student, teacher, targets, weights, distill_weight=w,
                                       temperature=temp)
  np.testing.assert_allclose(float(out['kl'][0]), kl_t2, rtol=1e-6)
  np.testing.assert_allclose(float(out['loss'][0]), expected, rtol=1e-6)
  # At T=1: KL((1/4, 3/4) || (1/2, 1/2)) = 1/4 ln(1/2) + 3/4 ln(3/2).
  kl_t1 = distillation.kl_divergence(teacher, student, temperature=1.0)
  np.testing.assert_allclose(float(kl_t1[0, 0]), 0.25 * math.log(0.5) + 0.75 * math.log(1.5), rtol=1e-6)


def test_bad_hyper_parameters_are_named():
  targets, weights = _targets()
  x = _logits(0, (2, 4, 5))
  with pytest.raises(ValueError, match='DISTILL_WEIGHT'):
    distillation.distillation_loss(x, x, targets, weights, distill_weight=1.5, temperature=1.0)
  with pytest.raises(ValueError, match='DISTILL_TEMPERATURE'):
    distillation.distillation_loss(x, x, targets, weights, distill_weight=0.5, temperature=0.0)


def test_teacher_features_unpacked_matches_docstring():
  batch = {'encoder_input_tokens': jnp.asarray([[7, 8, 1, 0], [9, 1, 0, 0]]),
           'decoder_target_tokens': jnp.asarray([[5, 6, 1, 0, 0], [4, 4, 4, 1, 0]])}
  out = {k: np.asarray(v) for k, v in distillation.teacher_features(batch).items()}
  np.testing.assert_array_equal(out['tokens'][0], [0, 7, 8, 1, 5, 6, 0, 0, 0])
  np.testing.assert_array_equal(out['targets'][0], [7, 8, 1, 5, 6, 1, 0, 0, 0])
  np.testing.assert_array_equal(out['segment_ids'][0], [1, 1, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(out['positions'][0], [0, 1, 2, 3, 4, 5, 0, 0, 0])
  np.testing.assert_array_equal(out['target_index'][0, :3], [3, 4, 5])
  np.testing.assert_array_equal(out['tokens'][1], [0, 9, 1, 4, 4, 4, 0, 0, 0])
  np.testing.assert_array_equal(out['target_index'][1, :4], [2, 3, 4, 5])
  # Each decoder target sits at its slot in the teacher's targets.
  for row in range(2):
    dec = np.asarray(batch['decoder_target_tokens'][row])
    real = dec != 0
    np.testing.assert_array_equal(out['targets'][row][out['target_index'][row][real]], dec[real])


def test_teacher_features_packed_interleaves_segments():
  batch = {
      'encoder_input_tokens': jnp.asarray([[7, 8, 1, 9, 1, 0]]),
      'encoder_segment_ids': jnp.asarray([[1, 1, 1, 2, 2, 0]]),
      'encoder_positions': jnp.asarray([[0, 1, 2, 0, 1, 0]]),
      'decoder_target_tokens': jnp.asarray([[5, 1, 4, 4, 1, 0]]),
      'decoder_segment_ids': jnp.asarray([[1, 1, 2, 2, 2, 0]]),
      'decoder_positions': jnp.asarray([[0, 1, 0, 1, 2, 0]]),
  }
  out = {k: np.asarray(v)[0] for k, v in distillation.teacher_features(batch, start_token=2).items()}
  np.testing.assert_array_equal(out['targets'], [7, 8, 1, 5, 1, 9, 1, 4, 4, 1, 0, 0])
  np.testing.assert_array_equal(out['tokens'], [2, 7, 8, 1, 5, 2, 9, 1, 4, 4, 0, 0])
  np.testing.assert_array_equal(out['segment_ids'], [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0, 0])
  np.testing.assert_array_equal(out['positions'], [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 0])
  np.testing.assert_array_equal(out['target_index'][:5], [3, 4, 7, 8, 9])


def test_teacher_features_packed_without_positions_is_a_clear_error():
  batch = {'encoder_input_tokens': jnp.ones((1, 3), jnp.int32), 'decoder_target_tokens': jnp.ones((1, 3), jnp.int32),
           'encoder_segment_ids': jnp.ones((1, 3), jnp.int32), 'decoder_segment_ids': jnp.ones((1, 3), jnp.int32)}
  with pytest.raises(ValueError, match="lacks 'encoder_positions'"):
    distillation.teacher_features(batch)
  with pytest.raises(ValueError, match="no 'encoder_input_tokens'"):
    distillation.teacher_features({'decoder_target_tokens': jnp.ones((1, 3), jnp.int32)})


# --------------------------------------------------------------------------------------------------
# DistillationModel: teacher run online, frozen, aligned to the student's targets.

from trainer.training import freezing  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer.training import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer.model import transformer  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer.model.config import EncoderDecoderConfig, TransformerConfig  # pylint: disable=g-import-not-at-top,wrong-import-position
import optax  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax.core import meta  # pylint: disable=g-import-not-at-top,wrong-import-position

_TINY = TransformerConfig(vocab_size=53, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                          mlp_dim=64, query_pre_attn_scalar=8.0, sliding_window=3)
_ED = EncoderDecoderConfig(encoder=_TINY, decoder=_TINY)


def _unpacked_batch():
  enc = np.array([[5, 6, 7, 1, 0, 0], [8, 9, 1, 0, 0, 0]], np.int32)
  tgt = np.array([[11, 12, 1, 0, 0], [13, 14, 15, 1, 0]], np.int32)
  return {'encoder_input_tokens': enc, 'decoder_target_tokens': tgt,
          'decoder_input_tokens': np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
          'decoder_loss_weights': (tgt != 0).astype(np.float32)}


def _packed_batch():
  """Both rows of `_unpacked_batch` packed into one row (as seqio's packing would)."""
  return {
      'encoder_input_tokens': np.array([[5, 6, 7, 1, 8, 9, 1, 0]], np.int32),
      'encoder_segment_ids': np.array([[1, 1, 1, 1, 2, 2, 2, 0]], np.int32),
      'encoder_positions': np.array([[0, 1, 2, 3, 0, 1, 2, 0]], np.int32),
      'decoder_target_tokens': np.array([[11, 12, 1, 13, 14, 15, 1, 0]], np.int32),
      'decoder_input_tokens': np.array([[0, 11, 12, 0, 13, 14, 15, 0]], np.int32),
      'decoder_segment_ids': np.array([[1, 1, 1, 2, 2, 2, 2, 0]], np.int32),
      'decoder_positions': np.array([[0, 1, 2, 0, 1, 2, 3, 0]], np.int32),
      'decoder_loss_weights': np.array([[1, 1, 1, 1, 1, 1, 1, 0]], np.float32),
  }


def _model_and_params(**kw):
  model = distillation.DistillationModel(config=_ED, **kw)
  params = jax.tree_util.tree_map(np.asarray, meta.unbox(model.init(jax.random.PRNGKey(0), _unpacked_batch())))
  return model, params


def test_teacher_logits_are_the_decoder_over_prefix_plus_target():
  model, params = _model_and_params()
  assert set(params) == {'encoder', 'decoder', 'teacher'}
  batch = _unpacked_batch()
  got = np.asarray(model.teacher_logits(params['teacher'], batch))
  # Row 0 by hand: teacher inputs [0, 5, 6, 7, 1, 11, 12], targets 11, 12, 1 at slots 4, 5, 6.
  tokens = jnp.asarray([[0, 5, 6, 7, 1, 11, 12]])
  direct = np.asarray(transformer.Decoder(_TINY).apply({'params': params['teacher']}, tokens))
  np.testing.assert_allclose(got[0, :3], direct[0, 4:7], atol=1e-5)
  # Packing gives the same teacher logits per segment as the unpacked rows.
  packed = np.asarray(model.teacher_logits(params['teacher'], _packed_batch()))
  np.testing.assert_allclose(packed[0, :3], got[0, :3], atol=1e-5)
  np.testing.assert_allclose(packed[0, 3:7], got[1, :4], atol=1e-5)


def test_model_loss_weight_zero_is_the_encoder_decoder_loss_and_teacher_stays_frozen():
  model, params = _model_and_params(distill_weight=0.0, temperature=2.0, z_loss=1e-4)
  student = models.EncoderDecoderModel(config=_ED, z_loss=1e-4)
  batch = {k: jnp.asarray(v) for k, v in _unpacked_batch().items()}
  loss, metrics = model.loss_fn(params, batch, None)
  plain, _ = student.loss_fn({k: params[k] for k in ('encoder', 'decoder')}, batch, None)
  np.testing.assert_allclose(float(loss), float(plain), rtol=1e-6)
  assert float(metrics['kl'][0]) > 0  # random student vs random teacher
  assert model.num_params(params) == student.num_params({k: params[k] for k in ('encoder', 'decoder')})

  # Train a few steps with the distillation loss: the teacher stays bit-identical (no gradient, zero
  # updates even with weight decay, and no optimizer state), the student moves.
  model = distillation.DistillationModel(config=_ED, distill_weight=0.7, temperature=2.0)
  tx = freezing.freeze_teacher(optax.adamw(1e-2, weight_decay=0.1))
  state = tx.init(params)
  state_leaves = sum(x.size for x in jax.tree_util.tree_leaves(state))
  student_leaves = sum(x.size for k in ('encoder', 'decoder') for x in jax.tree_util.tree_leaves(params[k]))
  assert state_leaves < 2 * student_leaves + 10  # Adam's two moments for the student only

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: model.loss_fn(p, batch, jax.random.PRNGKey(1))[0])(params)
    assert set(grads) == {'encoder', 'decoder', 'teacher'}
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, grads

  new = params
  for _ in range(3):
    new, state, grads = step(new, state)
  for a, b in zip(jax.tree_util.tree_leaves(new['teacher']), jax.tree_util.tree_leaves(params['teacher'])):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  for g in jax.tree_util.tree_leaves(grads['teacher']):
    np.testing.assert_array_equal(g, 0.0)
  assert not np.array_equal(new['decoder']['layer_0']['mlp']['up_proj']['kernel'],
                            params['decoder']['layer_0']['mlp']['up_proj']['kernel'])


def test_model_arguments_are_checked():
  with pytest.raises(ValueError, match='DISTILL_TEMPERATURE'):
    distillation.DistillationModel(config=_ED, temperature=-1.0)
  with pytest.raises(ValueError, match="teacher_side must be 'decoder' or 'encoder'"):
    distillation.DistillationModel(config=_ED, teacher_side='both')
  model, params = _model_and_params()
  with pytest.raises(ValueError, match="no 'teacher' subtree"):
    model.loss_fn({k: params[k] for k in ('encoder', 'decoder')}, _unpacked_batch(), None)


def test_teacher_is_sharded_like_the_student():
  """The teacher's params carry the same logical axis names as the student's, so the partitioner's
  rules (trainer/partitioning.py) map them to the same mesh axes."""
  model = distillation.DistillationModel(config=_ED)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), _unpacked_batch())
  specs = meta.get_partition_spec(boxed)
  flat = {'/'.join(freezing.path_keys(p)): s for p, s in jax.tree_util.tree_flatten_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]}
  teacher = {k[len('teacher/'):]: v for k, v in flat.items() if k.startswith('teacher/')}
  assert len(teacher) == len([k for k in flat if k.startswith('decoder/') and 'cross' not in k]) > 10
  for name, spec in teacher.items():
    assert spec == flat['decoder/' + name], name
  assert teacher['layer_0/self_attn/q_proj/kernel'] == jax.sharding.PartitionSpec('embed', 'heads', 'head_dim')
