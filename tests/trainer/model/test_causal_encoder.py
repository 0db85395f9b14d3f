"""`EncoderDecoderConfig.causal_encoder` (T5Gemma's causal-encoder ablation): what the encoder sees,
cached decoding, config files, gin, FLOPs and export."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer import gin_flags
from trainer.checkpoint import hf_t5gemma
from trainer.model import config_io
from trainer.model import kv_cache
from trainer.model.config import EncoderDecoderConfig, TransformerConfig
from trainer.model.tied_encoder_decoder import TiedEncoderDecoder
from trainer.model.transformer import EncoderDecoder
from trainer.training import flops

CFG = TransformerConfig(vocab_size=64, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=64, query_pre_attn_scalar=8, sliding_window=4)


def _model(causal, merged=False):
  cfg = EncoderDecoderConfig(encoder=CFG, decoder=CFG, causal_encoder=causal,
                             merged_attention=merged)
  module = (TiedEncoderDecoder if merged else EncoderDecoder)(cfg)
  tokens = jnp.ones((2, 7), jnp.int32)
  params = jax.jit(module.init)(jax.random.PRNGKey(0), tokens, tokens[:, :3])['params']
  return cfg, module, params


def _encode(module, params, tokens):
  return np.asarray(module.apply({'params': params}, jnp.asarray(tokens), method='encode'))


@pytest.mark.parametrize('merged', [False, True], ids=['t5gemma', 't5gemma2'])
@pytest.mark.parametrize('causal', [False, True])
def test_encoder_position_sees_later_tokens_only_when_bidirectional(causal, merged):
  _, module, params = _model(causal, merged)
  rs = np.random.RandomState(0)
  tokens = rs.randint(1, 64, size=(2, 7)).astype(np.int32)
  tokens[1, 5:] = 0  # row 1 is 5 tokens long (padding after)
  changed = tokens.copy()
  changed[0, 4] = (tokens[0, 4] % 63) + 1  # a different real token at position 4
  changed[1, 3] = (tokens[1, 3] % 63) + 1
  a, b = _encode(module, params, tokens), _encode(module, params, changed)
  # Positions before the change: unchanged iff causal.
  before = np.abs(a[0, :4] - b[0, :4]).max(), np.abs(a[1, :3] - b[1, :3]).max()
  if causal:
    assert max(before) == 0.0
  else:
    assert min(before) > 1e-4
  # The changed position and those after it change either way.
  assert np.abs(a[0, 4:] - b[0, 4:]).max() > 1e-4
  assert np.abs(a[1, 3:5] - b[1, 3:5]).max() > 1e-4


def test_causal_encoder_cached_decoding_equals_forward():
  cfg, module, params = _model(True)
  rs = np.random.RandomState(1)
  enc = rs.randint(1, 64, size=(3, 6)).astype(np.int32)
  enc[2, 4:] = 0
  forced = rs.randint(1, 64, size=(3, 3)).astype(np.int32)
  start = np.zeros((3, 1), np.int32)
  logits, cache = kv_cache.prefill(cfg, params, tokens=start, lengths=np.ones(3, np.int32),
                                   max_length=4, encoder_tokens=enc)
  want = np.asarray(module.apply({'params': params}, jnp.asarray(enc),
                                 jnp.asarray(np.concatenate([start, forced], axis=1))))
  np.testing.assert_allclose(np.asarray(logits), want[:, 0], atol=2e-5)
  for t in range(3):
    logits, cache = kv_cache.step(cfg, params, cache, tokens=forced[:, t],
                                  positions=np.full(3, 1 + t, np.int32))
    np.testing.assert_allclose(np.asarray(logits), want[:, t + 1], atol=2e-5)
  # ... and differs from what the same params give with a bidirectional encoder.
  bidir = EncoderDecoder(dataclasses.replace(cfg, causal_encoder=False))
  other = np.asarray(bidir.apply({'params': params}, jnp.asarray(enc), jnp.asarray(start)))
  assert np.abs(other[:, 0] - want[:, 0]).max() > 1e-4


def test_config_file_round_trip(tmp_path):
  causal = EncoderDecoderConfig(encoder=CFG, decoder=CFG, causal_encoder=True)
  path = config_io.write_model_config(causal, str(tmp_path / 'causal.json'))
  assert config_io.load_model_config(path) == causal
  plain = EncoderDecoderConfig(encoder=CFG, decoder=CFG)
  path = config_io.write_model_config(plain, str(tmp_path / 'plain.json'))
  assert 'causal_encoder' not in open(path).read()  # files of the usual model stay as they were
  assert config_io.load_model_config(path) == plain
  with pytest.raises(ValueError, match='causal_encoder must be a bool'):
    EncoderDecoderConfig(encoder=CFG, decoder=CFG, causal_encoder='yes')


def test_gin_binding_sets_it():
  files = ['gin/models/t5gemma_tiny.gin']
  assert not gin_flags.config_from_gin(files, ['VOCAB_SIZE = 100']).causal_encoder
  cfg = gin_flags.config_from_gin(
      files, ['VOCAB_SIZE = 100', 'config.EncoderDecoderConfig.causal_encoder = True'])
  assert cfg.causal_encoder


def test_flops_count_half_the_encoder_scores():
  bidir = EncoderDecoderConfig(encoder=CFG, decoder=CFG)
  causal = dataclasses.replace(bidir, causal_encoder=True)
  got = (flops.encoder_decoder_training_flops(bidir, 64, 8)
         - flops.encoder_decoder_training_flops(causal, 64, 8))
  scores = 12.0 * 64 * 64 * CFG.num_heads * CFG.head_dim * CFG.num_layers
  # Local layers see at most the window, so only part of the score FLOPs halve; they do halve.
  assert 0 < got <= scores / 2


def test_export_refuses_a_causal_encoder():
  cfg = EncoderDecoderConfig(encoder=CFG, decoder=CFG, causal_encoder=True)
  with pytest.raises(hf_t5gemma.HFConversionError, match='causal_encoder=True'):
    hf_t5gemma.config_to_hf(cfg)
