"""The attention mask description and the reference attention kernel.

The mask is described, not materialised: `AttentionMask` holds segment ids, an optional
bidirectional-prefix marker, causality and the sliding window. The reference kernel builds a
`[B, L, S]` boolean from it by broadcasting (never `[B, H, L, S]`); the fused kernel
(`trainer.model.fused_attention`) turns the same description into per-query key ranges.

Kernel interface (every kernel, dispatched by `trainer.model.attention.dot_product_attention`):
  query [B, L, H, Dh], key/value [B, S, K, Dh] (H a multiple of K: grouped-query attention),
  mask: AttentionMask | None, scale, soft_cap -> [B, L, H, Dh] in the query dtype.
Logits are `soft_cap(q . k * scale)`; masked entries get the fp32 minimum (finite, so rows that
see nothing, e.g. padding queries, give a uniform average instead of NaN); softmax in fp32.
"""
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from trainer.model import layers
from trainer.model import matmul


@flax.struct.dataclass
class AttentionMask:
  """Which keys each query may attend to. All index arithmetic uses array indices (within a packed
  segment they differ exactly as seqio's per-segment positions do).

  Attributes:
    q_segment_ids: `[B, L]` int or None. With kv_segment_ids: query i sees key j only if
      `q_segment_ids[i] == kv_segment_ids[j]`. None: no segment matching (only kv padding).
    kv_segment_ids: `[B, S]` int or None; 0 marks padding keys (never attended). None: all valid.
    bidirectional: `[B, L]` bool or None (self-attention only): positions of a PrefixLM prefix;
      query i sees key j > i when both are in the prefix (seqio `decoder_causal_attention`).
    causal: key j visible to query i only if j <= i (or both in the bidirectional prefix).
    sliding_window: None (global) or w. Causal masks: |i - j| < w (HF Gemma 2's `q - kv < w`; the
      `j > i` side only matters inside a bidirectional prefix). Non-causal masks: |i - j| <= w, as
      HF T5Gemma's bidirectional sliding window (inclusive); other non-causal reaches with
      `bidirectional_window` (`window_bounds`).
    bidirectional_window: 'symmetric' (default, above), 'split' (HF T5Gemma 2's encoder:
      -(w // 2) <= i - j < (w + 1) // 2) or 'exclusive' (|i - j| < w, HF Gemma 3 bidirectional).
  """
  q_segment_ids: Optional[jax.Array] = None
  kv_segment_ids: Optional[jax.Array] = None
  bidirectional: Optional[jax.Array] = None
  causal: bool = flax.struct.field(pytree_node=False, default=False)
  sliding_window: Optional[int] = flax.struct.field(pytree_node=False, default=None)
  bidirectional_window: str = flax.struct.field(pytree_node=False, default='symmetric')

  def window_bounds(self):
    """Non-causal sliding window as (left, right): query i sees keys i - left <= j <= i + right."""
    w = int(self.sliding_window)
    if self.bidirectional_window == 'split':
      return (w + 1) // 2 - 1, w // 2
    if self.bidirectional_window == 'exclusive':
      return w - 1, w - 1
    if self.bidirectional_window != 'symmetric':
      raise ValueError(f'AttentionMask.bidirectional_window={self.bidirectional_window!r}: expected '
                       "'symmetric', 'split' or 'exclusive'")
    return w, w

  def with_window(self, window: Optional[int]) -> 'AttentionMask':
    return self.replace(sliding_window=window)

  def materialize(self, q_len: int, kv_len: int) -> Optional[jax.Array]:
    """Boolean `[B or 1, L or 1, S]`, broadcastable to `[B, L, S]` (True = attend), or None when
    nothing is masked."""
    mask = None

    def both(a, b):
      return b if a is None else jnp.logical_and(a, b)

    if self.kv_segment_ids is not None:
      kv_seg = self.kv_segment_ids[:, None, :]
      mask = both(mask, kv_seg != 0)
      if self.q_segment_ids is not None:
        mask = both(mask, self.q_segment_ids[:, :, None] == kv_seg)
    if self.causal or self.sliding_window is not None:
      q_idx = jnp.arange(q_len, dtype=jnp.int32)[None, :, None]
      kv_idx = jnp.arange(kv_len, dtype=jnp.int32)[None, None, :]
      if self.causal:
        causal = kv_idx <= q_idx
        if self.bidirectional is not None:
          prefix = jnp.asarray(self.bidirectional).astype(bool)
          causal = jnp.logical_or(causal, jnp.logical_and(prefix[:, :, None], prefix[:, None, :]))
        mask = both(mask, causal)
        if self.sliding_window is not None:
          mask = both(mask, jnp.abs(q_idx - kv_idx) < self.sliding_window)
      elif self.bidirectional_window == 'symmetric':
        mask = both(mask, jnp.abs(q_idx - kv_idx) <= self.sliding_window)
      else:
        left, right = self.window_bounds()
        dist = q_idx - kv_idx
        mask = both(mask, jnp.logical_and(dist <= left, -dist <= right))
    return mask


_HEADS_MAJOR: list = [None]  # None: as `matmul.flat_dots_enabled()`; True / False: forced


def heads_major(enabled: Optional[bool]):
  """Within the block, `reference_attention` traced runs heads-major (True), in the einsum form
  (False), or as the contractions do (None: heads-major where `matmul.flat_dots_enabled()`, i.e.
  on CPU). Benchmarks and tests compare the two forms with it."""
  return matmul.forced(_HEADS_MAJOR, enabled)


def heads_major_enabled() -> bool:
  if _HEADS_MAJOR[0] is not None:
    return bool(_HEADS_MAJOR[0])
  return matmul.flat_dots_enabled()


def reference_attention(query, key, value, *, mask: Optional[AttentionMask], scale: float,
                        soft_cap: Optional[float]) -> jax.Array:
  """Einsum attention; any backend, every feature. See the module docstring for the contract.

  On CPU (`heads_major_enabled()`) q, k, v and the probabilities are laid out heads-major
  (`[B, K, G * L, Dh]`, `[B, K, S, Dh]`): both products are batched matmuls over (B, K) whose
  backward passes XLA CPU runs without transposed copies of the `[B, K, G, L, S]` arrays.
  """
  batch, q_len, num_heads, head_dim = query.shape
  kv_len, num_kv_heads = key.shape[1], key.shape[2]
  groups = num_heads // num_kv_heads
  heads_major = heads_major_enabled()
  if heads_major:
    q = query.reshape(batch, q_len, num_kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
    q = q.reshape(batch, num_kv_heads, groups * q_len, head_dim)
    key, value = key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)  # [B, K, S, Dh]
    logits = jnp.einsum('bkqd,bksd->bkqs', q, key, preferred_element_type=jnp.float32)
    logits = logits.reshape(batch, num_kv_heads, groups, q_len, kv_len)
  else:
    q = query.reshape(batch, q_len, num_kv_heads, groups, head_dim)
    logits = jnp.einsum('blkgd,bskd->bkgls', q, key, preferred_element_type=jnp.float32)
  logits = layers.soft_cap(logits * scale, soft_cap)
  if mask is not None:
    bool_mask = mask.materialize(q_len, kv_len)
    if bool_mask is not None:
      logits = jnp.where(bool_mask[:, None, None, :, :], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
  if heads_major:
    probs = probs.reshape(batch, num_kv_heads, groups * q_len, kv_len)
    out = jnp.einsum('bkqs,bksd->bkqd', probs, value)
    out = out.reshape(batch, num_kv_heads, groups, q_len, head_dim).transpose(0, 3, 1, 2, 4)
  else:
    out = jnp.einsum('bkgls,bskd->blkgd', probs, value)
  return out.reshape(batch, q_len, num_heads, head_dim)
