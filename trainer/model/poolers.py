"""Poolers: one vector per (packed) segment from an encoder's final hidden states.

Gemma Encoder (arXiv 2503.02656) turns a decoder-only checkpoint into a bidirectional encoder and
pools its final hidden states into one vector per example before a task head. The poolers here
respect padding and packing: an example's pooled vector depends only on its own tokens, whatever
pads or other packed examples sit beside it in the row.

Shapes (the "Encoder heads" section of docs/DESIGN.md):
  hidden       [B, L, D]  encoder output after the final norm.
  segment_ids  [B, L]     int; 0 = padding, 1..S = the packed segment (seqio packing numbers the
                          examples of a row 1, 2, ...; an unpacked row is all 1 then 0).
  ->
  pooled       [B, S, D]  row b, slot s = the vector of segment s + 1 (S = `max_segments`).
  mask         [B, S]     True where segment s + 1 exists in row b; pooled is 0 elsewhere.

Every pooler is written as per-segment weights over the length axis, `pooled = weights @ hidden`,
so pads and other segments get weight exactly 0 (no NaNs from empty segments either).

Kinds:
  'first'     - the segment's first token (position 0 of the segment).
  'last'      - the segment's last non-pad token (with seqio's EOS appended, that is the EOS).
  'mean'      - mean over the segment's tokens.
  'attention' - softmax attention of a learned query vector over the segment's hidden states
                (param `query` [D], initialised to zeros, so at init it equals 'mean').
"""
from __future__ import annotations

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

POOLER_KINDS = ('first', 'last', 'mean', 'attention')


def validate_pooler_kind(kind: str) -> str:
  if kind not in POOLER_KINDS:
    raise ValueError(f'pooler kind={kind!r} is not one of {POOLER_KINDS}')
  return kind


def segment_membership(segment_ids: jax.Array, max_segments: int) -> jax.Array:
  """[B, L] segment ids -> bool [B, S, L]: token l belongs to segment s + 1."""
  if max_segments < 1:
    raise ValueError(f'max_segments={max_segments} must be >= 1')
  slots = jnp.arange(1, max_segments + 1, dtype=segment_ids.dtype)
  return segment_ids[:, None, :] == slots[None, :, None]


def pooling_weights(kind: str, membership: jax.Array,
                    attention_logits: jax.Array | None = None) -> jax.Array:
  """Per-segment weights over the length axis, float32 [B, S, L]; rows of empty segments are 0.

  Args:
    kind: one of POOLER_KINDS.
    membership: bool [B, S, L] from `segment_membership`.
    attention_logits: float [B, L], required for kind 'attention' (query . hidden / sqrt(D)).
  """
  validate_pooler_kind(kind)
  member = membership.astype(jnp.int32)
  if kind == 'first':
    # The first member token: a member whose running count (from the left) is 1.
    return ((jnp.cumsum(member, axis=-1) == 1) & membership).astype(jnp.float32)
  if kind == 'last':
    from_right = jnp.cumsum(member[..., ::-1], axis=-1)[..., ::-1]
    return ((from_right == 1) & membership).astype(jnp.float32)
  if kind == 'mean':
    count = jnp.maximum(member.sum(axis=-1, keepdims=True), 1)
    return member.astype(jnp.float32) / count.astype(jnp.float32)
  # attention
  if attention_logits is None:
    raise ValueError("pooler kind='attention' needs attention_logits")
  logits = jnp.where(membership, attention_logits[:, None, :].astype(jnp.float32), -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  unnorm = jnp.where(membership, jnp.exp(logits - row_max), 0.0)
  total = unnorm.sum(axis=-1, keepdims=True)
  return unnorm / jnp.where(total > 0, total, 1.0)


class Pooler(nn.Module):
  """Pools `hidden` [B, L, D] into (pooled [B, S, D], mask [B, S]); see the module docstring.

  Attributes:
    kind: 'first' | 'last' | 'mean' | 'attention'.
    max_segments: S, the most packed examples per row (1 when not packing).
    dtype: dtype of the pooled output (weights are computed in float32).
  """
  kind: str = 'mean'
  max_segments: int = 1
  dtype: str = 'float32'

  def setup(self):
    validate_pooler_kind(self.kind)
    if self.max_segments < 1:
      raise ValueError(f'Pooler.max_segments={self.max_segments} must be >= 1')

  @nn.compact
  def __call__(self, hidden: jax.Array, segment_ids: jax.Array) -> Tuple[jax.Array, jax.Array]:
    if hidden.ndim != 3 or segment_ids.shape != hidden.shape[:2]:
      raise ValueError(f'Pooler expects hidden [B, L, D] and segment_ids [B, L]; got '
                       f'{hidden.shape} and {segment_ids.shape}')
    membership = segment_membership(segment_ids, self.max_segments)
    logits = None
    if self.kind == 'attention':
      query = self.param('query', nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                         (hidden.shape[-1],), jnp.float32)
      logits = jnp.einsum('bld,d->bl', hidden.astype(jnp.float32), query)
      logits = logits / jnp.sqrt(jnp.float32(hidden.shape[-1]))
    weights = pooling_weights(self.kind, membership, logits)
    pooled = jnp.einsum('bsl,bld->bsd', weights, hidden.astype(jnp.float32))
    return pooled.astype(self.dtype), membership.any(axis=-1)
