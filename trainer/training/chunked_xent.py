"""Cross-entropy + z-loss + accuracy from hidden states, in token chunks (no `[B, L, V]` logits).

`trainer.training.losses.cross_entropy_with_z_loss` takes the model's fp32 logits: for Gemma's 256k
vocabulary at B x L = 16k tokens that is a 16 GiB fp32 tensor (plus its gradient). Here the
output projection (tied embedding), the final-logit soft-cap and the loss run together over
`chunk_size` tokens at a time inside `lax.scan`, each chunk under `jax.checkpoint`: the forward
keeps only per-chunk sums, the backward recomputes one chunk's `[chunk, V]` logits at a time, so
peak memory is `O(chunk_size x V)` instead of `O(B x L x V)`.

Same maths and same return value as `cross_entropy_with_z_loss(soft_cap(hidden @ embedding.T))`:
logits are `einsum(hidden, embedding)` in the compute dtype with fp32 accumulation (as
`trainer.model.layers.Embedder.attend`), soft-capped in fp32, then fp32 log-softmax; z-loss =
`z_loss * logsumexp**2`; accuracy = argmax (of the capped logits) == target.

  hidden [B, L, D], embedding [V, D], targets [B, L], weights [B, L]
    -> {'loss': (sum, count), 'cross_entropy': (sum, count), 'z_loss': (sum, count),
        'accuracy': (sum, count)}     (count = sum(weights))
"""
from typing import Dict, Optional

import jax
import jax.numpy as jnp

from trainer.model import layers
from trainer.training.losses import SumCount


def chunked_cross_entropy_with_z_loss(hidden: jax.Array, embedding: jax.Array,
                                      targets: jax.Array, weights: jax.Array, *,
                                      z_loss: float = 0.0,
                                      final_logit_soft_cap: Optional[float] = None,
                                      dtype=None, chunk_size: int = 2048
                                      ) -> Dict[str, SumCount]:
  """Loss metrics of `soft_cap(hidden @ embedding.T)` without materialising all the logits.

  Args:
    hidden: `[..., D]` final hidden states (after the final norm).
    embedding: `[V, D]` output embedding (Gemma: the tied input embedding).
    targets: `[...]` int target ids.
    weights: `[...]` loss weights (0 on padding).
    z_loss: z-loss coefficient.
    final_logit_soft_cap: the model's `final_logit_soft_cap` (None: none).
    dtype: matmul input dtype (the model's compute dtype); None: `hidden.dtype`.
    chunk_size: tokens per chunk (the last chunk is padded with weight-0 tokens).
  """
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
    raise ValueError(f'chunk_size must be a positive int, got {chunk_size!r}')
  if hidden.shape[:-1] != targets.shape or targets.shape != weights.shape:
    raise ValueError(f'hidden {hidden.shape[:-1]}+[D], targets {targets.shape} and weights '
                     f'{weights.shape} must share their leading shape')
  if embedding.ndim != 2 or embedding.shape[1] != hidden.shape[-1]:
    raise ValueError(f'embedding must be [V, {hidden.shape[-1]}], got {embedding.shape}')
  dtype = hidden.dtype if dtype is None else jnp.dtype(dtype)
  width = hidden.shape[-1]
  h = hidden.reshape(-1, width)
  t = targets.reshape(-1).astype(jnp.int32)
  w = weights.reshape(-1).astype(jnp.float32)
  n = h.shape[0]
  chunk = min(chunk_size, max(n, 1))
  num_chunks = -(-n // chunk)
  pad = num_chunks * chunk - n
  if pad:
    h = jnp.pad(h, ((0, pad), (0, 0)))
    t = jnp.pad(t, (0, pad))
    w = jnp.pad(w, (0, pad))
  h = h.reshape(num_chunks, chunk, width)
  t = t.reshape(num_chunks, chunk)
  w = w.reshape(num_chunks, chunk)
  # The embedding enters the scan in its own dtype (fp32 master) and is cast per chunk, so its
  # gradient is accumulated over chunks in that dtype, not in the bf16 compute dtype.
  emb = embedding

  @jax.checkpoint
  def chunk_sums(h_c, t_c, w_c, emb):
    logits = jnp.einsum('nd,vd->nv', h_c.astype(dtype), emb.astype(dtype),
                        preferred_element_type=jnp.float32)
    logits = layers.soft_cap(logits, final_logit_soft_cap)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, t_c[:, None], axis=-1)[:, 0]
    ce = jnp.sum((log_z - target_logit) * w_c)
    zl = jnp.sum(z_loss * jnp.square(log_z) * w_c)
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == t_c).astype(jnp.float32) * w_c)
    return ce, zl, jax.lax.stop_gradient(correct)

  def body(carry, xs):
    ce, zl, acc = chunk_sums(*xs, emb)
    return (carry[0] + ce, carry[1] + zl, carry[2] + acc), None

  zero = jnp.zeros((), jnp.float32)
  (ce_sum, zl_sum, acc_sum), _ = jax.lax.scan(body, (zero, zero, zero), (h, t, w))
  count = jnp.sum(w)
  return {
      'loss': (ce_sum + zl_sum, count),
      'cross_entropy': (ce_sum, count),
      'z_loss': (zl_sum, count),
      'accuracy': (acc_sum, count),
  }
