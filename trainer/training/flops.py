"""Training FLOPs per example / token and model FLOPs utilisation (MFU), MaxText convention.

Counting (forward = 2 FLOPs per multiply-add, training = 3 x forward, i.e. forward + backward):

* Weights: `6 x (matmul parameters)` per token, where the matmul parameters of a layer are
  `q, k, v, o` projections (`D*H*Dh + 2*D*K*Dh + H*Dh*D`) and the gated MLP (`3*D*F`). Norm scales
  are not matmuls and are not counted. The embedding table is counted ONCE, for the output-logits
  matmul (`D*V`) of a model that produces logits; the input lookup is a gather (free). An encoder
  without logits (Encoder / the encoder half of an encoder-decoder) has no embedding term.
* Attention scores and weighted values: `12 x L_q x L_k x H x Dh` per layer for training
  (4 per multiply-add pair: QK^T and AV, x3 for training), where `L_k` is the number of keys a query
  sees:
    - decoder self-attention (causal): `L_k = min(L, window)` on sliding layers, `L` on global ones,
      and the total is halved (only the lower triangle is computed usefully: MaxText's convention);
    - encoder self-attention (bidirectional, full): `L_k = L` on global layers and
      `min(L, 2*window - 1)` on sliding layers (the window extends both ways, |i-j| < window);
    - cross-attention (full): `L_q = L_dec`, `L_k = L_enc`; its K/V projections run over the
      `L_enc` encoder positions (`6 x 2*D_enc*K*Dh` per encoder token per decoder layer) and its Q/O
      projections over the `L_dec` decoder positions.
    - merged attention (T5Gemma 2, `EncoderDecoderConfig.merged_attention`): one attention per
      decoder layer over [decoder keys; encoder keys]. Its q/k/v/o projections over the decoder
      positions are the layer's (counted with the layer's weights), plus the K/V projections of
      the `L_enc` encoder positions (`6 x 2*D*K*Dh` per encoder token per decoder layer); scores
      and values: the causal self part as above, plus `12 x L_dec x L_enc x H x Dh` for the
      encoder part (full). So: cross-attention's count without its Q/O projections. The tied
      embedding is counted once, for the output logits, as always.
    - bidirectional sliding layers with `bidirectional_window='split'` (T5Gemma 2) see
      `min(L, window)` keys.
* Per-token figures divide the per-example total by the tokens per example (decoder-only: `L`;
  encoder-decoder: `L_enc + L_dec`).

MFU = achieved FLOP/s / (peak FLOP/s per device x number of devices). Peaks are dense bf16 figures
from the vendors' data sheets; `peak_flops_per_device` is overridable (gin: `train.peak_flops=`),
and an unknown device (e.g. CPU) gives None, so MFU is not reported rather than made up.
"""
from typing import Any, Optional

import jax

# Dense bf16 peak FLOP/s per device (vendor data sheets). Longest key matched first.
PEAK_FLOPS = {
    'h100': 989e12,
    'h200': 989e12,
    'gh200': 989e12,
    'a100': 312e12,
    'l4': 121e12,
    'tpu v4': 275e12,
    'tpu v5 lite': 197e12,
    'tpu v5e': 197e12,
    'tpu v5p': 459e12,
    'tpu v5': 459e12,
    'tpu v6 lite': 918e12,
    'tpu v6e': 918e12,
}


def peak_flops_per_device(device: Optional[Any] = None) -> Optional[float]:
  """Peak bf16 FLOP/s of `device` (default: first local device) from the table, or None."""
  device = device or jax.local_devices()[0]
  kind = getattr(device, 'device_kind', '').lower()
  for key in sorted(PEAK_FLOPS, key=len, reverse=True):
    if key in kind:
      return PEAK_FLOPS[key]
  return None


def _layer_types(config) -> tuple:
  if getattr(config, 'layer_types', None):
    return tuple(config.layer_types)
  return tuple('sliding' if i % 2 == 0 else 'global' for i in range(config.num_layers))


def attention_matmul_params(config, *, kv_input_dim: Optional[int] = None) -> int:
  d = config.embed_dim
  kv_d = kv_input_dim or d
  h, k, dh = config.num_heads, config.num_kv_heads, config.head_dim
  return d * h * dh + 2 * kv_d * k * dh + h * dh * d


def layer_matmul_params(config) -> int:
  return attention_matmul_params(config) + 3 * config.embed_dim * config.mlp_dim


def _self_attention_flops(config, length: int, *, causal: bool) -> float:
  total = 0.0
  h, dh, window = config.num_heads, config.head_dim, getattr(config, 'sliding_window', None)
  for kind in _layer_types(config):
    if kind == 'sliding' and window:
      if causal or getattr(config, 'bidirectional_window', 'symmetric') == 'split':
        keys = min(length, window)
      else:
        keys = min(length, 2 * window - 1)
    else:
      keys = length
    flops = 12.0 * length * keys * h * dh
    total += flops / 2 if causal else flops
  return total


def decoder_only_training_flops(config, length: int) -> float:
  """Training FLOPs of one decoder-only example of `length` tokens (causal LM / PrefixLM)."""
  weights = config.num_layers * layer_matmul_params(config) + config.embed_dim * config.vocab_size
  return 6.0 * weights * length + _self_attention_flops(config, length, causal=True)


def encoder_training_flops(config, length: int, *, causal: bool = False) -> float:
  """Training FLOPs of one encoder pass (no logits) over `length` tokens; bidirectional unless
  `causal` (`EncoderDecoderConfig.causal_encoder`: half the attention-score FLOPs)."""
  weights = config.num_layers * layer_matmul_params(config)
  return 6.0 * weights * length + _self_attention_flops(config, length, causal=causal)


def encoder_decoder_training_flops(config, encoder_length: int, decoder_length: int) -> float:
  """Training FLOPs of one encoder-decoder example (`config`: an EncoderDecoderConfig)."""
  enc, dec = config.encoder, config.decoder
  flops = encoder_training_flops(enc, encoder_length,
                                 causal=getattr(config, 'causal_encoder', False))
  dec_weights = (dec.num_layers * layer_matmul_params(dec) + dec.embed_dim * dec.vocab_size)
  flops += 6.0 * dec_weights * decoder_length + _self_attention_flops(dec, decoder_length,
                                                                      causal=True)
  h, k, dh = dec.num_heads, dec.num_kv_heads, dec.head_dim
  cross_q_o = dec.embed_dim * h * dh * 2
  cross_k_v = enc.embed_dim * k * dh * 2
  if getattr(config, 'merged_attention', False):  # T5Gemma 2: no cross Q/O projections
    cross_q_o = 0
  flops += dec.num_layers * (6.0 * cross_q_o * decoder_length + 6.0 * cross_k_v * encoder_length
                             + 12.0 * decoder_length * encoder_length * h * dh)
  return flops


def mfu(*, flops_per_step: float, step_time_s: float, num_devices: int,
        peak_flops: Optional[float]) -> Optional[float]:
  """Model FLOPs utilisation in [0, 1] (None when the peak is unknown)."""
  if not peak_flops or step_time_s <= 0:
    return None
  return flops_per_step / step_time_s / (peak_flops * num_devices)
