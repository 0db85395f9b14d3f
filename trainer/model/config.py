"""Model configuration: `TransformerConfig` (one Gemma 2 stack) and `EncoderDecoderConfig`.

Plain frozen dataclasses, validated in `__post_init__` (errors name the field and the value). No gin
and no JAX arrays here: gin binds these at the edges, the model maths reads them as plain values.

Example (Gemma 2 2B shapes):

  TransformerConfig(vocab_size=256000, embed_dim=2304, num_layers=26, num_heads=8, num_kv_heads=4,
                    head_dim=256, mlp_dim=9216, query_pre_attn_scalar=256)
"""
import dataclasses
from typing import Optional, Tuple

import jax.numpy as jnp

LAYER_TYPES = ('sliding', 'global')
# Names accepted by `trainer.model.attention.dot_product_attention` (kept here so a config can be
# validated without importing the model).
ATTENTION_IMPLS = ('reference', 'fused')
REMAT_POLICIES = ('none', 'full', 'dots')
# Where a bidirectional (non-causal) sliding window reaches, per `TransformerConfig.bidirectional_window`
# (see `trainer.model.reference_attention.AttentionMask.window_bounds`).
BIDIRECTIONAL_WINDOWS = ('symmetric', 'split', 'exclusive')
DTYPES = ('float32', 'bfloat16', 'float16')


def _check_positive_int(name, value):
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f'TransformerConfig.{name} must be a positive int, got {value!r}')


def _check_optional_positive_number(name, value):
  if value is None:
    return
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
    raise ValueError(f'TransformerConfig.{name} must be a positive number or None, got {value!r}')


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyper-parameters of one Gemma 2 stack (decoder-only, encoder, or one side of an enc-dec).

  Attributes:
    vocab_size: number of embedding rows (input and tied output embedding).
    embed_dim: model width D.
    num_layers: number of blocks.
    num_heads: query heads H.
    num_kv_heads: key/value heads K (grouped-query attention; H must be a multiple of K).
    head_dim: per-head width Dh (need not be D / H).
    mlp_dim: GeGLU hidden width F.
    query_pre_attn_scalar: queries are scaled by `query_pre_attn_scalar ** -0.5`.
    attn_logits_soft_cap: attention logits become `tanh(x / cap) * cap`; None disables.
    final_logit_soft_cap: same on the output logits; None disables.
    sliding_window: window of the 'sliding' layers. Causal: a query at i sees keys j with
      i - j < window (HF Gemma 2). Bidirectional (encoder): |i - j| <= window (HF T5Gemma).
      None makes every layer global.
    layer_types: per-layer 'sliding' or 'global'; None = sliding, global, sliding, ... (Gemma 2).
    rope_theta: RoPE base frequency.
    rms_norm_eps: RMSNorm epsilon.
    dropout_rate: dropout on the embedding, inside the MLP, on each residual branch and after the
      final norm (where T5Gemma puts it); off when `deterministic=True`.
    dtype: compute dtype name ('float32' | 'bfloat16' | 'float16').
    param_dtype: parameter storage dtype name.
    attention_impl: attention kernel name (see `trainer.model.attention`).
    remat: per-block rematerialisation: 'none' | 'full' (save nothing) | 'dots' (save matmuls
      without batch dimensions, i.e. the projections; recompute attention).
    scan_layers: run the blocks under `nn.scan` (one compiled body, looped) instead of unrolling
      them. The body is one period of the per-layer windows (`scan_period`: Gemma 2's sliding,
      global = 2 layers; Gemma 3's 5 local : 1 global = 6). Parameters are then stacked with a
      leading 'layers' axis (`trainer.model.scan_layout` converts between the two layouts;
      checkpoints, HF interop and adaptation accept either). When the period does not divide
      `num_layers` (Gemma 3 1B: 26 layers), the whole periods are scanned and the last
      `num_layers % scan_period` layers run unrolled after them (`num_scanned_layers`). Same
      maths as unrolled.
    use_qk_norm: Gemma 3: RMSNorm (zero-init scale, applied as 1 + w, over head_dim) on the
      queries and keys before RoPE (params 'q_norm' / 'k_norm' in each attention). Gemma 3 models
      set `attn_logits_soft_cap=None` with it.
    local_rope_theta: RoPE base of the 'sliding' layers (Gemma 3: 10k, with `rope_theta` = 1M for
      the global ones); None = `rope_theta` for every layer (Gemma 2).
    rope_scaling_factor: linear RoPE scaling of the global layers (positions divided by it, HF
      `rope_type='linear'`; Gemma 3 4B: 8); None = no scaling.
    bidirectional_window: where a non-causal sliding window reaches (encoders only):
      'symmetric' |i - j| <= w (HF T5Gemma), 'split' -(w // 2) <= i - j < (w + 1) // 2 (HF
      T5Gemma 2's encoder: w keys in all), 'exclusive' |i - j| < w (HF Gemma 3 bidirectional).
    eoi_token_id: T5Gemma 2's end-of-image token: its input embedding is the separate (unscaled)
      parameter 'embedder/eoi_embedding' instead of the table row; None = no such parameter.
  """
  vocab_size: int
  embed_dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  query_pre_attn_scalar: float
  attn_logits_soft_cap: Optional[float] = 50.0
  final_logit_soft_cap: Optional[float] = 30.0
  sliding_window: Optional[int] = 4096
  layer_types: Optional[Tuple[str, ...]] = None
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6
  dropout_rate: float = 0.0
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  attention_impl: str = 'reference'
  remat: str = 'none'
  scan_layers: bool = False
  use_qk_norm: bool = False
  local_rope_theta: Optional[float] = None
  rope_scaling_factor: Optional[float] = None
  bidirectional_window: str = 'symmetric'
  eoi_token_id: Optional[int] = None

  def __post_init__(self):
    for name in ('vocab_size', 'embed_dim', 'num_layers', 'num_heads', 'num_kv_heads', 'head_dim',
                 'mlp_dim'):
      _check_positive_int(name, getattr(self, name))
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f'TransformerConfig.num_heads={self.num_heads} must be a multiple of '
          f'num_kv_heads={self.num_kv_heads}')
    if self.head_dim % 2:
      raise ValueError(f'TransformerConfig.head_dim must be even for RoPE, got {self.head_dim}')
    _check_optional_positive_number('query_pre_attn_scalar', self.query_pre_attn_scalar)
    if self.query_pre_attn_scalar is None:
      raise ValueError('TransformerConfig.query_pre_attn_scalar must be set, got None')
    _check_optional_positive_number('attn_logits_soft_cap', self.attn_logits_soft_cap)
    _check_optional_positive_number('final_logit_soft_cap', self.final_logit_soft_cap)
    if self.sliding_window is not None:
      _check_positive_int('sliding_window', self.sliding_window)
    if self.layer_types is not None:
      if isinstance(self.layer_types, str) or not isinstance(self.layer_types, (tuple, list)):
        raise ValueError(
            f'TransformerConfig.layer_types must be a tuple of {LAYER_TYPES}, got '
            f'{self.layer_types!r}')
      # Lists (e.g. from gin or JSON) are accepted and frozen into a tuple.
      object.__setattr__(self, 'layer_types', tuple(self.layer_types))
      if len(self.layer_types) != self.num_layers:
        raise ValueError(
            f'TransformerConfig.layer_types has {len(self.layer_types)} entries, expected '
            f'num_layers={self.num_layers}')
      bad = [t for t in self.layer_types if t not in LAYER_TYPES]
      if bad:
        raise ValueError(
            f'TransformerConfig.layer_types: {bad[0]!r} is not one of {LAYER_TYPES}')
    _check_optional_positive_number('rope_theta', self.rope_theta)
    _check_optional_positive_number('rms_norm_eps', self.rms_norm_eps)
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(
          f'TransformerConfig.dropout_rate must be in [0, 1), got {self.dropout_rate!r}')
    for name in ('dtype', 'param_dtype'):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f'TransformerConfig.{name} must be one of {DTYPES}, got '
                         f'{getattr(self, name)!r}')
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f'TransformerConfig.attention_impl must be one of {ATTENTION_IMPLS}, got '
                       f'{self.attention_impl!r}')
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f'TransformerConfig.remat must be one of {REMAT_POLICIES}, got '
                       f'{self.remat!r}')
    for name in ('use_qk_norm',):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f'TransformerConfig.{name} must be a bool, got {getattr(self, name)!r}')
    _check_optional_positive_number('local_rope_theta', self.local_rope_theta)
    _check_optional_positive_number('rope_scaling_factor', self.rope_scaling_factor)
    if self.bidirectional_window not in BIDIRECTIONAL_WINDOWS:
      raise ValueError(f'TransformerConfig.bidirectional_window must be one of '
                       f'{BIDIRECTIONAL_WINDOWS}, got {self.bidirectional_window!r}')
    if self.eoi_token_id is not None:
      if (isinstance(self.eoi_token_id, bool) or not isinstance(self.eoi_token_id, int)
          or not 0 <= self.eoi_token_id):
        raise ValueError(f'TransformerConfig.eoi_token_id must be a non-negative int or None, '
                         f'got {self.eoi_token_id!r}')
    if not isinstance(self.scan_layers, bool):
      raise ValueError(f'TransformerConfig.scan_layers must be a bool, got {self.scan_layers!r}')

  @property
  def resolved_layer_types(self) -> Tuple[str, ...]:
    """Per-layer types with the Gemma 2 default (sliding first) filled in."""
    if self.layer_types is not None:
      return self.layer_types
    return tuple('sliding' if i % 2 == 0 else 'global' for i in range(self.num_layers))

  def layer_window(self, layer_index: int) -> Optional[int]:
    """Sliding window of layer `layer_index`, or None for a global layer."""
    if self.sliding_window is None:
      return None
    return self.sliding_window if self.resolved_layer_types[layer_index] == 'sliding' else None

  @property
  def layer_windows(self) -> Tuple[Optional[int], ...]:
    """`layer_window(i)` for every layer."""
    return tuple(self.layer_window(i) for i in range(self.num_layers))

  @property
  def has_local_rope(self) -> bool:
    """True when the sliding layers use other RoPE frequencies than the global ones."""
    return ((self.local_rope_theta is not None and self.local_rope_theta != self.rope_theta)
            or self.rope_scaling_factor is not None)

  def layer_rope_index(self, layer_index: int) -> int:
    """Which RoPE table layer `layer_index` uses: 0 = global (`rope_theta`, scaled), 1 = local
    (`local_rope_theta`); always 0 when `has_local_rope` is False (Gemma 2)."""
    if not self.has_local_rope:
      return 0
    return 1 if self.resolved_layer_types[layer_index] == 'sliding' else 0

  @property
  def scan_period(self) -> int:
    """Smallest p with `layer_window(i) == layer_window(i % p)` (and the same RoPE table) for
    every layer: the number of layers one `nn.scan` step runs (Gemma 2: 2; every layer global: 1;
    Gemma 3's 5 local : 1 global: 6)."""
    windows = tuple(zip(self.layer_windows,
                        (self.layer_rope_index(i) for i in range(self.num_layers))))
    for p in range(1, len(windows) + 1):
      if all(windows[i] == windows[i % p] for i in range(len(windows))):
        return p
    return len(windows)

  @property
  def num_scanned_layers(self) -> int:
    """Layers inside the `nn.scan` when `scan_layers` (whole periods: the rest run unrolled)."""
    return self.num_layers // self.scan_period * self.scan_period

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def parameter_dtype(self):
    return jnp.dtype(self.param_dtype)


@dataclasses.dataclass(frozen=True)
class EncoderDecoderConfig:
  """An encoder stack and a decoder stack (T5Gemma). The decoder's cross-attention K/V projections
  read `encoder.embed_dim`-wide encoder outputs, so unbalanced pairs (e.g. 9B encoder, 2B decoder)
  work.

  `merged_attention=True` is the T5Gemma 2 architecture (`trainer.model.tied_encoder_decoder`):
  each decoder layer has one attention whose keys/values are its own states followed by the
  encoder outputs (no separate cross-attention), and one embedding (the encoder's) is tied across
  encoder input, decoder input and output. It needs equal widths and vocabularies (balanced).

  `causal_encoder=True` gives the encoder causal self-attention (position i sees positions <= i of
  its own segment) instead of bidirectional: T5Gemma's ablation (arXiv 2504.06225, section on
  encoder attention), not a released architecture. Hugging Face's T5Gemma has no such option, so
  such a model does not export.
  """
  encoder: TransformerConfig
  decoder: TransformerConfig
  merged_attention: bool = False
  causal_encoder: bool = False

  def __post_init__(self):
    for name in ('encoder', 'decoder'):
      if not isinstance(getattr(self, name), TransformerConfig):
        raise ValueError(f'EncoderDecoderConfig.{name} must be a TransformerConfig, got '
                         f'{type(getattr(self, name)).__name__}')
    for name in ('merged_attention', 'causal_encoder'):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f'EncoderDecoderConfig.{name} must be a bool, got '
                         f'{getattr(self, name)!r}')
    if self.merged_attention:
      for name in ('embed_dim', 'vocab_size', 'eoi_token_id'):
        enc, dec = getattr(self.encoder, name), getattr(self.decoder, name)
        if enc != dec:
          raise ValueError(
              f'EncoderDecoderConfig.merged_attention=True (T5Gemma 2) needs encoder.{name} == '
              f'decoder.{name} (one tied embedding, decoder keys/values over encoder outputs), '
              f'got {enc} and {dec}')
