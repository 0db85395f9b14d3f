"""Gemma 3 -> T5Gemma 2 adaptation (merged attention, tied embedding) and its gin / export chain."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from trainer.adaptation import adapt
from trainer.checkpoint import hf_gemma3
from trainer.model import config_io
from trainer.model import scan_layout
from trainer.model import transformer
from trainer.model.config import EncoderDecoderConfig, TransformerConfig
from trainer.model.reference_attention import AttentionMask
from trainer.model.tied_encoder_decoder import TiedEncoderDecoder

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

VOCAB = 89
# = gin/models/gemma3_tiny.gin / t5gemma2_tiny.gin with VOCAB_SIZE = 89.
TINY = TransformerConfig(vocab_size=VOCAB, embed_dim=64, num_layers=4, num_heads=4, num_kv_heads=2,
                         head_dim=16, mlp_dim=128, query_pre_attn_scalar=16,
                         attn_logits_soft_cap=None, final_logit_soft_cap=None, sliding_window=8,
                         layer_types=('sliding', 'sliding', 'sliding', 'global'),
                         use_qk_norm=True, rope_theta=1e6, local_rope_theta=1e4)
# A smaller source for the maths checks: window 3 < sequence 9, head_dim 12 != 48 / 4, two bases.
SRC = dataclasses.replace(TINY, embed_dim=48, num_layers=3, head_dim=12, mlp_dim=64,
                          query_pre_attn_scalar=10.0, sliding_window=3,
                          layer_types=('sliding', 'sliding', 'global'), rope_theta=500.0,
                          local_rope_theta=20.0)


def _random_params(config, seed):
  params = transformer.Decoder(config).init(jax.random.PRNGKey(seed),
                                            jnp.ones((1, 4), jnp.int32))['params']
  params = jax.tree_util.tree_map(np.asarray, meta.unbox(params))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: (rng.normal(size=x.shape) * 0.3).astype(np.float32) if 'scale' in str(p)
      else x, params)


def _tokens(shape=(2, 9), seed=3):
  return np.random.default_rng(seed).integers(1, VOCAB, size=shape).astype(np.int32)


@pytest.fixture(scope='module')
def hf_source(tmp_path_factory):
  """A random Gemma 3 source exported to an HF folder, and transformers' model of it."""
  path = str(tmp_path_factory.mktemp('gemma3_src'))
  hf_gemma3.export_decoder(_random_params(SRC, 0), SRC, path)
  model = transformers.Gemma3ForCausalLM.from_pretrained(path, attn_implementation='eager').eval()
  return path, model


def test_adapted_encoder_run_causally_reproduces_the_source(hf_source, tmp_path):
  path, hf_model = hf_source
  config = adapt.adapt(decoder_only=path, output=str(tmp_path / 'out'), log=lambda *a: None)
  assert config.merged_attention and config.encoder.bidirectional_window == 'split'
  assert config_io.load_encoder_decoder_config(str(tmp_path / 'out')) == config
  from trainer.checkpoint import checkpoints  # pylint: disable=g-import-not-at-top
  params = checkpoints.read_params(str(tmp_path / 'out' / 'params'))
  assert 'embedder' not in params['decoder'] and 'cross_attn' not in params['decoder']['layer_0']
  tokens = _tokens()
  with torch.no_grad():
    hf_hidden = hf_model.model(torch.as_tensor(tokens)).last_hidden_state.numpy()
    hf_logits = hf_model(torch.as_tensor(tokens)).logits.numpy()
  module = TiedEncoderDecoder(config)
  causal = AttentionMask(causal=True)
  enc_hidden = np.asarray(module.apply({'params': params}, method=lambda m: m.encoder.hidden(
      jnp.asarray(tokens), None, causal, None, None, True)))
  np.testing.assert_allclose(enc_hidden, hf_hidden, atol=1e-4, rtol=0)
  # The encoder proper is bidirectional (and windowed the T5Gemma 2 way): it differs.
  bidi = np.asarray(module.apply({'params': params}, jnp.asarray(tokens),
                                 method=lambda m, t: m.encode(t)))
  assert np.abs(bidi - hf_hidden).max() > 1e-2
  # With every encoder position masked out, the merged attention is exactly the source's
  # self-attention: the decoder reproduces the source's logits.
  encoded = jnp.zeros((2, 5, SRC.embed_dim))
  logits = np.asarray(module.apply(
      {'params': params}, encoded, jnp.asarray(tokens),
      encoder_segment_ids=jnp.zeros((2, 5), jnp.int32),
      method=lambda m, e, t, encoder_segment_ids: m.decode(
          e, t, encoder_segment_ids=encoder_segment_ids)))
  np.testing.assert_allclose(logits, hf_logits, atol=1e-4, rtol=0)


def test_scanned_config_and_errors():
  src = _random_params(TINY, 1)
  scanned = dataclasses.replace(TINY, scan_layers=True)
  config, params = adapt.adapt_params(scanned, scan_layout.for_config(src, scanned))
  assert scan_layout.is_scanned(params['encoder']) and scan_layout.is_scanned(params['decoder'])
  wide = dataclasses.replace(TINY, embed_dim=96)
  with pytest.raises(adapt.AdaptError, match='balanced only.*embed_dim=96'):
    adapt.adapt_params(TINY, src, encoder_config=wide, encoder_params=_random_params(wide, 2))
  other_vocab = dataclasses.replace(TINY, vocab_size=100)
  with pytest.raises(adapt.AdaptError, match='vocab_size=100'):
    adapt.adapt_params(TINY, src, encoder_config=other_vocab,
                       encoder_params=_random_params(other_vocab, 2))
  with pytest.raises(adapt.AdaptError, match='cross_attn_init'):
    adapt.adapt_params(TINY, src, cross_attn_init='random')
  with pytest.raises(ValueError, match='merged_attention=True .* encoder.embed_dim'):
    EncoderDecoderConfig(encoder=wide, decoder=TINY, merged_attention=True)


def _synthetic_batches(start_batch=0):
  rng = np.random.default_rng(start_batch)
  while True:
    enc = rng.integers(1, VOCAB, size=(2, 12)).astype(np.int32)
    enc[:, 10:] = 0
    tgt = rng.integers(1, VOCAB, size=(2, 10)).astype(np.int32)
    yield {'encoder_input_tokens': enc, 'decoder_target_tokens': tgt,
           'decoder_input_tokens': np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
           'decoder_loss_weights': np.ones_like(tgt, np.float32)}


def _gin_train(run_file, bindings):
  import gin  # pylint: disable=g-import-not-at-top
  from trainer import gin_flags  # pylint: disable=g-import-not-at-top
  from trainer.training import loop as trainer_lib  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    gin.external_configurable(_synthetic_batches, 'test_adapt_t5gemma2_batches')
    gin_flags.setup_gin(gin_files=['gin/models/t5gemma2_tiny.gin', run_file], gin_bindings=[
        f'VOCAB_SIZE = {VOCAB}', 'MIXTURE_OR_TASK_NAME = "unused"',
        "TASK_FEATURE_LENGTHS = {'inputs': 12, 'targets': 10}", 'TRAIN_STEPS = 2',
        'LOG_PERIOD = 1', 'OPTIMIZER = "adamw"', 'LEARNING_RATE = 0.01', 'WARMUP_STEPS = 0',
        'LR_DECAY = "constant"', 'trainer.train.train_dataset_cfg = None',
        'trainer.train.train_dataset_fn = @test_adapt_t5gemma2_batches',
        'checkpoints.CheckpointConfig.async_save = False'] + bindings)
    return gin.get_configurable(trainer_lib.train)(stream=open(os.devnull, 'w'))
  finally:
    gin.clear_config()


def test_adapt_train_distill_export_chain(tmp_path):
  """gin/runs/adapt.gin and distill.gin with gin/models/t5gemma2_tiny.gin from an HF Gemma 3
  folder, then export: transformers' T5Gemma2ForConditionalGeneration gives our logits."""
  from trainer.checkpoint import hf_export  # pylint: disable=g-import-not-at-top
  from trainer.checkpoint import loader  # pylint: disable=g-import-not-at-top
  src = _random_params(TINY, 5)
  hf_src = str(tmp_path / 'gemma3_tiny_hf')
  hf_gemma3.export_decoder(src, TINY, hf_src)
  run_dir = str(tmp_path / 'adapt_run')
  result = _gin_train('gin/runs/adapt.gin', [f'MODEL_DIR = "{run_dir}"',
                                             f'DECODER_ONLY_CHECKPOINT = "{hf_src}"'])
  assert result.step == 2 and all(np.isfinite(v) for v in result.losses.values())
  config = config_io.load_encoder_decoder_config(run_dir)
  assert config.merged_attention
  out = str(tmp_path / 'hf_out')
  _, kind = hf_export.export(checkpoint=run_dir, output=out, log=lambda *a: None)
  assert kind == 'T5Gemma2ForConditionalGeneration'
  _, trained = loader.load_checkpoint(run_dir, config=config)
  enc, dec = _tokens((2, 11), 8), _tokens((2, 7), 9)
  ours = np.asarray(TiedEncoderDecoder(config).apply({'params': trained}, jnp.asarray(enc),
                                                     jnp.asarray(dec)))
  hf = transformers.T5Gemma2ForConditionalGeneration.from_pretrained(
      out, attn_implementation='eager').eval()
  with torch.no_grad():
    theirs = hf(input_ids=torch.as_tensor(enc), decoder_input_ids=torch.as_tensor(dec)).logits
  np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-4, rtol=0)

  distill_dir = str(tmp_path / 'distill_run')
  result = _gin_train('gin/runs/distill.gin', [f'MODEL_DIR = "{distill_dir}"',
                                               f'DECODER_ONLY_CHECKPOINT = "{hf_src}"',
                                               'DISTILL_WEIGHT = 0.5'])
  assert result.step == 2 and result.last_metrics['kl'] >= 0
