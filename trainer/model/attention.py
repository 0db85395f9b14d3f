"""Attention: the kernel dispatch and the Gemma 2 attention layer.

Kernels (same contract, `trainer.model.reference_attention`'s docstring): 'reference' (einsum,
any backend) and 'fused' (`trainer.model.fused_attention`: tokamax flash attention on GPU; on TPU
it hands over to `trainer.model.tpu_attention`, splash attention).
"""
from typing import Optional

import flax.linen as nn
import jax

from trainer.model import fused_attention
from trainer.model import layers
from trainer.model.config import ATTENTION_IMPLS, TransformerConfig
from trainer.model.reference_attention import AttentionMask, reference_attention


KERNELS = {'reference': reference_attention, 'fused': fused_attention.fused_attention}
assert tuple(KERNELS) == ATTENTION_IMPLS, 'keep trainer.model.config.ATTENTION_IMPLS in sync'


def dot_product_attention(query, key, value, *, mask: Optional[AttentionMask], scale: float,
                          soft_cap: Optional[float], impl: str = 'reference') -> jax.Array:
  """Dispatches to the kernel named `impl` (one of `trainer.model.config.ATTENTION_IMPLS`)."""
  if impl not in KERNELS:
    raise ValueError(f'attention_impl must be one of {tuple(KERNELS)}, got {impl!r}')
  return KERNELS[impl](query, key, value, mask=mask, scale=scale, soft_cap=soft_cap)


def qk_norm(config: TransformerConfig, name: str) -> nn.Module:
  """Gemma 3's RMSNorm over head_dim for queries ('q_norm') or keys ('k_norm')."""
  return layers.RMSNorm(eps=config.rms_norm_eps, param_dtype=config.parameter_dtype,
                        axis_name='head_dim', name=name)


class Attention(nn.Module):
  """Gemma 2 multi-head attention (GQA, RoPE, logit soft-cap, `query_pre_attn_scalar**-0.5`);
  with `config.use_qk_norm`, Gemma 3's (RMSNorm on q and k before RoPE, params q_norm / k_norm).

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
    if cfg.use_qk_norm:  # Gemma 3: before RoPE
      q, k = qk_norm(cfg, 'q_norm')(q), qk_norm(cfg, 'k_norm')(k)
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
