"""Cross-entropy with z-loss and token accuracy against hand computations."""
import math

import numpy as np
import pytest

from trainer.training import losses


def test_cross_entropy_matches_hand_computation():
  logits = np.array([[[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]], np.float32)  # [1, 2, 3]
  targets = np.array([[0, 1]], np.int32)
  weights = np.array([[1.0, 1.0]], np.float32)
  out = losses.cross_entropy_with_z_loss(logits, targets, weights, z_loss=0.0)
  lse0 = math.log(math.exp(2) + 1 + math.exp(-1))
  lse1 = math.log(2 * math.exp(0.5) + math.exp(3))
  expected = (lse0 - 2.0) + (lse1 - 0.5)
  total, count = out['cross_entropy']
  assert float(count) == 2.0
  assert float(total) == pytest.approx(expected, rel=1e-6)
  # Position 0 predicts class 0 (correct); position 1 predicts class 2 (wrong).
  assert float(out['accuracy'][0]) == 1.0
  assert float(losses.mean_loss(out)) == pytest.approx(expected / 2, rel=1e-6)


def test_z_loss_adds_squared_log_partition_and_weights_mask_padding():
  rng = np.random.RandomState(0)
  logits = rng.randn(2, 5, 7).astype(np.float32)
  targets = rng.randint(0, 7, size=(2, 5)).astype(np.int32)
  weights = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
  out = losses.cross_entropy_with_z_loss(logits, targets, weights, z_loss=1e-2)
  lse = np.log(np.exp(logits).sum(-1))
  ce = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  assert float(out['cross_entropy'][0]) == pytest.approx(float((ce * weights).sum()), rel=1e-5)
  assert float(out['z_loss'][0]) == pytest.approx(float((1e-2 * lse**2 * weights).sum()), rel=1e-5)
  assert float(out['loss'][0]) == pytest.approx(
      float(out['cross_entropy'][0] + out['z_loss'][0]), rel=1e-6)
  assert float(out['loss'][1]) == 8.0
  # Changing logits at padded positions changes nothing.
  logits2 = logits.copy()
  logits2[0, 3:] += 100.0
  out2 = losses.cross_entropy_with_z_loss(logits2, targets, weights, z_loss=1e-2)
  assert float(out2['loss'][0]) == pytest.approx(float(out['loss'][0]), rel=1e-6)


def test_bf16_logits_are_upcast():
  import jax.numpy as jnp
  logits = jnp.asarray(np.random.RandomState(1).randn(1, 3, 11), jnp.bfloat16)
  targets = np.array([[1, 2, 3]], np.int32)
  out = losses.cross_entropy_with_z_loss(logits, targets, np.ones((1, 3), np.float32))
  assert out['loss'][0].dtype == jnp.float32


def test_empty_batch_gives_zero_not_nan():
  out = losses.cross_entropy_with_z_loss(np.zeros((1, 2, 3), np.float32),
                                         np.zeros((1, 2), np.int32),
                                         np.zeros((1, 2), np.float32))
  assert float(losses.mean_loss(out)) == 0.0


def test_select_reductions_equal_gather_and_argmax_with_ties_and_gradients():
  """The target logit / accuracy as compare-select reductions (no gather, no variadic argmax)
  give exactly what take_along_axis and argmax (first index on ties) give, gradients included."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(1)
  logits = rng.randint(-2, 3, size=(3, 6, 5)).astype(np.float32)  # small ints: many ties
  targets = rng.randint(0, 5, size=(3, 6)).astype(np.int32)
  weights = rng.randint(0, 2, size=(3, 6)).astype(np.float32)

  def reference(lg):
    lse = jax.nn.logsumexp(lg, axis=-1)
    ce = lse - jnp.take_along_axis(lg, targets[..., None], axis=-1)[..., 0]
    loss = jnp.sum((ce + 1e-2 * lse**2) * weights)
    acc = jnp.sum((jnp.argmax(lg, axis=-1) == targets) * weights)
    return loss, acc

  ref_loss, ref_acc = reference(logits)
  out = losses.cross_entropy_with_z_loss(logits, targets, weights, z_loss=1e-2)
  assert float(out['accuracy'][0]) == float(ref_acc)
  assert float(out['loss'][0]) == pytest.approx(float(ref_loss), rel=1e-6)
  grad = jax.grad(lambda lg: losses.cross_entropy_with_z_loss(lg, targets, weights,
                                                              z_loss=1e-2)['loss'][0])(logits)
  ref_grad = jax.grad(lambda lg: reference(lg)[0])(logits)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-6, atol=1e-7)
