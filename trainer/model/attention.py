"""Attention: mask description, the attention kernel interface, and the attention layer.

The mask is described, not materialised: `AttentionMask` holds segment ids, an optional
bidirectional-prefix marker, causality and the sliding window. The reference kernel builds a
`[B, L, S]` boolean from it by broadcasting (never `[B, H, L, S]`); the fused kernel
(`trainer.model.fused_attention`, `attention_impl='fused'`) turns the same description into per-query
key ranges.

Kernel interface (`dot_product_attention`):
  query [B, L, H, Dh], key/value [B, S, K, Dh] (H a multiple of K: grouped-query attention),
  mask: AttentionMask | None, scale, soft_cap -> [B, L, H, Dh] in the query dtype.
Logits are `soft_cap(q . k * scale)`; masked entries get the fp32 minimum (finite, so rows that
see nothing, e.g. padding queries, give a uniform average instead of NaN); softmax in fp32.
"""
from typing import Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from trainer.model import layers
from trainer.model.config import ATTENTION_IMPLS, TransformerConfig


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
      HF T5Gemma's bidirectional sliding window (inclusive).
  """
  q_segment_ids: Optional[jax.Array] = None
  kv_segment_ids: Optional[jax.Array] = None
  bidirectional: Optional[jax.Array] = None
  causal: bool = flax.struct.field(pytree_node=False, default=False)
  sliding_window: Optional[int] = flax.struct.field(pytree_node=False, default=None)

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
      else:
        mask = both(mask, jnp.abs(q_idx - kv_idx) <= self.sliding_window)
    return mask


def reference_attention(query, key, value, *, mask: Optional[AttentionMask], scale: float,
                        soft_cap: Optional[float]) -> jax.Array:
  """Einsum attention; any backend, every feature. See the module docstring for the contract."""
  batch, q_len, num_heads, head_dim = query.shape
  kv_len, num_kv_heads = key.shape[1], key.shape[2]
  groups = num_heads // num_kv_heads
  q = query.reshape(batch, q_len, num_kv_heads, groups, head_dim)
  logits = jnp.einsum('blkgd,bskd->bkgls', q, key, preferred_element_type=jnp.float32)
  logits = layers.soft_cap(logits * scale, soft_cap)
  if mask is not None:
    bool_mask = mask.materialize(q_len, kv_len)
    if bool_mask is not None:
      logits = jnp.where(bool_mask[:, None, None, :, :], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
  out = jnp.einsum('bkgls,bskd->blkgd', probs, value)
  return out.reshape(batch, q_len, num_heads, head_dim)


def _fused_attention(query, key, value, *, mask: Optional[AttentionMask], scale: float,
                     soft_cap: Optional[float]) -> jax.Array:
  """tokamax flash attention on GPU (`trainer.model.fused_attention`); the reference elsewhere."""
  # Imported on use: trainer.model.fused_attention imports this module.
  from trainer.model import fused_attention  # pylint: disable=g-import-not-at-top
  return fused_attention.fused_attention(query, key, value, mask=mask, scale=scale,
                                         soft_cap=soft_cap)


_IMPLS = {'reference': reference_attention, 'fused': _fused_attention}
assert tuple(_IMPLS) == ATTENTION_IMPLS, 'keep trainer.model.config.ATTENTION_IMPLS in sync'


def dot_product_attention(query, key, value, *, mask: Optional[AttentionMask], scale: float,
                          soft_cap: Optional[float], impl: str = 'reference') -> jax.Array:
  """Dispatches to the kernel named `impl` (one of `trainer.model.config.ATTENTION_IMPLS`)."""
  if impl not in _IMPLS:
    raise ValueError(f'attention_impl must be one of {tuple(_IMPLS)}, got {impl!r}')
  return _IMPLS[impl](query, key, value, mask=mask, scale=scale, soft_cap=soft_cap)


class Attention(nn.Module):
  """Gemma 2 multi-head attention (GQA, RoPE, logit soft-cap, `query_pre_attn_scalar**-0.5`).

  Self-attention when `kv_inputs` is None (RoPE on q and k); cross-attention otherwise (no RoPE;
  the K/V kernels take the width of `kv_inputs`, e.g. the encoder's embed_dim).
  Params: q_proj [D, H, Dh], k_proj / v_proj [D_kv, K, Dh], o_proj [H, Dh, D].
  """
  config: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, mask: Optional[AttentionMask],
               kv_inputs: Optional[jax.Array] = None,
               rope: Optional[tuple] = None) -> jax.Array:
    cfg = self.config
    dtype = cfg.compute_dtype

    def proj(features, axes, name, num_input_axes=1):
      return layers.Projection(features=features, axes=axes, num_input_axes=num_input_axes,
                               dtype=dtype, param_dtype=cfg.parameter_dtype, name=name)

    is_self = kv_inputs is None
    kv_x = x if is_self else kv_inputs
    q = proj((cfg.num_heads, cfg.head_dim), ('embed', 'heads', 'head_dim'), 'q_proj')(x)
    k = proj((cfg.num_kv_heads, cfg.head_dim), ('embed', 'kv_heads', 'head_dim'), 'k_proj')(kv_x)
    v = proj((cfg.num_kv_heads, cfg.head_dim), ('embed', 'kv_heads', 'head_dim'), 'v_proj')(kv_x)
    if is_self:
      if rope is None:
        raise ValueError('self-attention needs rope=(cos, sin)')
      cos, sin = rope
      q = layers.apply_rope(q, cos, sin)
      k = layers.apply_rope(k, cos, sin)
    q = nn.with_logical_constraint(q, ('batch', 'length', 'heads', 'head_dim'))
    k = nn.with_logical_constraint(k, ('batch', 'length', 'kv_heads', 'head_dim'))
    v = nn.with_logical_constraint(v, ('batch', 'length', 'kv_heads', 'head_dim'))
    out = dot_product_attention(q, k, v, mask=mask, scale=cfg.query_pre_attn_scalar**-0.5,
                                soft_cap=cfg.attn_logits_soft_cap, impl=cfg.attention_impl)
    out = nn.with_logical_constraint(out, ('batch', 'length', 'heads', 'head_dim'))
    return proj((cfg.embed_dim,), ('heads', 'head_dim', 'embed'), 'o_proj', num_input_axes=2)(out)
