"""Token cross-entropy with z-loss, and token accuracy (no TF, no gin).

All per-token quantities are computed in fp32 from the model's logits (DESIGN.md: models return fp32
logits); the vocab-sized fp32 tensors live only inside these functions, so XLA can fuse the
log-softmax with the target gather instead of keeping a second `[B, L, V]` buffer.

Sums and counts are returned separately so that metrics and gradient accumulation average over the
real number of target tokens (not over micro-batches).
"""
from typing import Dict, Tuple

import jax
import jax.numpy as jnp

SumCount = Tuple[jax.Array, jax.Array]


def cross_entropy_with_z_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array, *,
                              z_loss: float = 0.0) -> Dict[str, SumCount]:
  """Weighted token cross-entropy plus `z_loss * logsumexp(logits)**2` (PaLM / T5X z-loss).

  Args:
    logits: `[..., V]` (any float dtype; upcast to fp32 here).
    targets: `[...]` int target ids.
    weights: `[...]` loss weights (0 on padding; seqio's `decoder_loss_weights`).
    z_loss: coefficient of the log-partition penalty (T5X default 1e-4; 0 disables).

  Returns:
    `{'loss': (sum, count), 'cross_entropy': (sum, count), 'z_loss': (sum, count),
      'accuracy': (sum, count)}` with `count = sum(weights)`; `loss = cross_entropy + z_loss`.
  """
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  ce = log_z - target_logit
  zl = z_loss * jnp.square(log_z)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  count = jnp.sum(weights)
  ce_sum = jnp.sum(ce * weights)
  zl_sum = jnp.sum(zl * weights)
  return {
      'loss': (ce_sum + zl_sum, count),
      'cross_entropy': (ce_sum, count),
      'z_loss': (zl_sum, count),
      'accuracy': (jnp.sum(correct * weights), count),
  }


def mean_loss(metrics: Dict[str, SumCount]) -> jax.Array:
  """The scalar to differentiate: `loss` sum over count (0 when the batch has no targets)."""
  total, count = metrics['loss']
  return total / jnp.maximum(count, 1.0)
