"""T5Gemma 2's merged attention: one decoder attention over its own states and the encoder outputs.

Each decoder layer of T5Gemma 2 (arXiv 2512.14856) replaces self-attention + cross-attention by
one attention whose keys/values are the decoder's own (causal, windowed on sliding layers)
followed by the encoder's outputs (global, no RoPE), all from the same q/k/v/o projections and
QK-norms, with one softmax over both. What HF `T5Gemma2MergedAttention` computes:

  q       = rope(q_norm(x W_q))                         x: decoder states [B, L, D]
  k_self  = rope(k_norm(x W_k)),  v_self  = x W_v
  k_cross = k_norm(e W_k),        v_cross = e W_v       e: encoder outputs [B, Le, D]
  out     = softmax(q [k_self; k_cross]^T * scale + mask) [v_self; v_cross] W_o

Parameter names equal `trainer.model.attention.Attention`'s ('q_proj', 'k_proj', 'v_proj',
'o_proj', 'q_norm', 'k_norm'), so a Gemma 3 self-attention is a merged attention's initial value
(what `trainer.adapt` does).

The mask is `MergedMask` (a self `AttentionMask` and a cross `AttentionMask`, concatenated along
keys). The 'reference' kernel takes it as is; the 'fused' kernel's key ranges cannot describe two
disjoint runs of keys, so merged attention always runs the reference kernel (one warning when
`attention_impl='fused'`).

FLOPs (`trainer.training.flops`): per decoder layer, the projections are those of a self-
attention layer plus the K/V projections of the Le encoder positions (2 * 2 * Le * D * K * Dh
forward), and the attention matmuls cover L x (L + Le) scores instead of L x L + L x Le in two
modules: the same count as separate self- and cross-attention without the cross Q/O projections.
"""
import logging
from typing import Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from trainer.model import layers
from trainer.model.attention import qk_norm
from trainer.model.config import TransformerConfig
from trainer.model.reference_attention import AttentionMask, reference_attention

_WARNED = []


@flax.struct.dataclass
class MergedMask:
  """Keys = [decoder keys (L); encoder keys (Le)]: `self_mask` over the first L, `cross_mask` over
  the last Le. Same `materialize(q_len, kv_len)` contract as `AttentionMask` (kv_len = L + Le)."""
  self_mask: AttentionMask
  cross_mask: AttentionMask
  encoder_length: int = flax.struct.field(pytree_node=False, default=0)

  def with_window(self, window: Optional[int]) -> 'MergedMask':
    """The window applies to the decoder's own keys only (HF: the cross part is always global)."""
    return self.replace(self_mask=self.self_mask.with_window(window))

  def materialize(self, q_len: int, kv_len: int) -> jax.Array:
    self_len = kv_len - self.encoder_length
    parts = []
    for mask, length in ((self.self_mask, self_len), (self.cross_mask, self.encoder_length)):
      m = mask.materialize(q_len, length)
      if m is None:
        m = jnp.ones((1, q_len, length), bool)
      parts.append(m)
    batch = max(p.shape[0] for p in parts)
    parts = [jnp.broadcast_to(p, (batch, q_len, p.shape[-1])) for p in parts]
    return jnp.concatenate(parts, axis=-1)


class MergedAttention(nn.Module):
  """See the module docstring. __call__(x [B, L, D], *, mask: MergedMask, encoded [B, Le, D],
  rope=(cos, sin)) -> [B, L, D]."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, mask: MergedMask, encoded: jax.Array,
               rope: tuple) -> jax.Array:
    cfg = self.config
    dtype = cfg.compute_dtype
    if cfg.attention_impl != 'reference' and not _WARNED:
      _WARNED.append(True)
      logging.warning('attention_impl=%s: merged attention (T5Gemma 2 decoder) has no fused '
                      'kernel; using the reference attention for it.', cfg.attention_impl)

    def proj(features, axes, name, num_input_axes=1):
      return layers.Projection(features=features, axes=axes, num_input_axes=num_input_axes,
                               dtype=dtype, param_dtype=cfg.parameter_dtype, name=name)

    q_proj = proj((cfg.num_heads, cfg.head_dim), ('embed', 'heads', 'head_dim'), 'q_proj')
    k_proj = proj((cfg.num_kv_heads, cfg.head_dim), ('embed', 'kv_heads', 'head_dim'), 'k_proj')
    v_proj = proj((cfg.num_kv_heads, cfg.head_dim), ('embed', 'kv_heads', 'head_dim'), 'v_proj')
    q_norm = qk_norm(cfg, 'q_norm') if cfg.use_qk_norm else (lambda t: t)
    k_norm = qk_norm(cfg, 'k_norm') if cfg.use_qk_norm else (lambda t: t)
    cos, sin = rope
    q = layers.apply_rope(q_norm(q_proj(x)), cos, sin)
    k_self = layers.apply_rope(k_norm(k_proj(x)), cos, sin)
    k_cross = k_norm(k_proj(encoded))
    k = jnp.concatenate([k_self, k_cross.astype(k_self.dtype)], axis=1)
    v = jnp.concatenate([v_proj(x), v_proj(encoded)], axis=1)
    q = nn.with_logical_constraint(q, ('batch', 'length', 'heads', 'head_dim'))
    k = nn.with_logical_constraint(k, ('batch', 'length', 'kv_heads', 'head_dim'))
    v = nn.with_logical_constraint(v, ('batch', 'length', 'kv_heads', 'head_dim'))
    out = reference_attention(q, k, v, mask=mask, scale=cfg.query_pre_attn_scalar**-0.5,
                              soft_cap=cfg.attn_logits_soft_cap)
    out = nn.with_logical_constraint(out, ('batch', 'length', 'heads', 'head_dim'))
    return proj((cfg.embed_dim,), ('heads', 'head_dim', 'embed'), 'o_proj', num_input_axes=2)(out)
