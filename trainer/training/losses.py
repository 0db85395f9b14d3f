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
  # The target's logit and the argmax as compare/select reductions over the vocab axis, not a
  # gather (whose gradient is a scatter) and a variadic argmax reduce: both were serial loops on
  # XLA CPU (docs/performance.md, "The train step on CPU"). Same values: exactly one term of the
  # sum is non-zero, and the first index of the maximum is argmax's tie rule.
  vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  is_target = vocab == targets[..., None].astype(jnp.int32)
  target_logit = jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1)
  ce = log_z - target_logit
  zl = z_loss * jnp.square(log_z)
  top = jnp.max(jax.lax.stop_gradient(logits), axis=-1, keepdims=True)
  first_top = jnp.min(jnp.where(jax.lax.stop_gradient(logits) == top, vocab, logits.shape[-1]),
                      axis=-1)
  correct = (first_top == targets).astype(jnp.float32)
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
