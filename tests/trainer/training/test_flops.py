"""MFU counting (MaxText convention) against hand-computed figures, and the peak table."""
import types

import pytest

from trainer.training import flops
from trainer.model.config import EncoderDecoderConfig, TransformerConfig


def cfg(**kw):
  base = dict(vocab_size=100, embed_dim=8, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=4,
              mlp_dim=16, query_pre_attn_scalar=4, sliding_window=3)
  base.update(kw)
  return TransformerConfig(**base)


def test_decoder_only_flops_by_hand():
  c = cfg()  # layer 0 sliding (window 3), layer 1 global
  L = 10
  attn_params = 8 * 2 * 4 + 2 * 8 * 1 * 4 + 2 * 4 * 8  # q + k,v + o = 64 + 64 + 64
  mlp_params = 3 * 8 * 16
  weights = 2 * (attn_params + mlp_params) + 8 * 100  # embedding once (logits)
  attention = 12 * L * 3 * 2 * 4 / 2 + 12 * L * L * 2 * 4 / 2  # causal: halved
  assert flops.decoder_only_training_flops(c, L) == pytest.approx(6 * weights * L + attention)


def test_encoder_decoder_flops_by_hand():
  enc, dec = cfg(embed_dim=12, sliding_window=None), cfg()
  c = EncoderDecoderConfig(encoder=enc, decoder=dec)
  le, ld = 7, 5
  enc_layer = (12 * 2 * 4 + 2 * 12 * 1 * 4 + 2 * 4 * 12) + 3 * 12 * 16
  encoder = 6 * 2 * enc_layer * le + 2 * 12 * le * le * 2 * 4  # bidirectional, full, no logits
  dec_layer = (8 * 2 * 4 + 2 * 8 * 4 + 2 * 4 * 8) + 3 * 8 * 16
  decoder = 6 * (2 * dec_layer + 8 * 100) * ld + (12 * ld * 3 * 8 / 2 + 12 * ld * ld * 8 / 2)
  cross = 2 * (6 * (8 * 2 * 4 * 2) * ld + 6 * (12 * 1 * 4 * 2) * le + 12 * ld * le * 2 * 4)
  assert flops.encoder_decoder_training_flops(c, le, ld) == pytest.approx(encoder + decoder + cross)


def test_bidirectional_sliding_window_counts_both_sides():
  c = cfg(layer_types=('sliding', 'sliding'), sliding_window=3)
  full = flops.encoder_training_flops(cfg(sliding_window=None), 20)
  windowed = flops.encoder_training_flops(c, 20)
  weights_part = 6 * 2 * flops.layer_matmul_params(c) * 20
  assert windowed - weights_part == pytest.approx(2 * 12 * 20 * 5 * 2 * 4)  # 2*3-1 = 5 keys
  assert windowed < full


def test_peak_table_and_mfu():
  assert flops.peak_flops_per_device(types.SimpleNamespace(device_kind='NVIDIA H100 80GB HBM3')) \
      == 989e12
  assert flops.peak_flops_per_device(types.SimpleNamespace(device_kind='TPU v5 lite')) == 197e12
  assert flops.peak_flops_per_device(types.SimpleNamespace(device_kind='TPU v5p')) == 459e12
  assert flops.peak_flops_per_device(types.SimpleNamespace(device_kind='cpu')) is None
  assert flops.mfu(flops_per_step=4e12, step_time_s=2.0, num_devices=2, peak_flops=1e12) == 1.0
  assert flops.mfu(flops_per_step=4e12, step_time_s=2.0, num_devices=2, peak_flops=None) is None
