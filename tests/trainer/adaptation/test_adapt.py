"""Decoder-only -> encoder-decoder adaptation (trainer/adaptation/adapt.py, trainer/adapt.py) and its cross-attention warm-up."""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax.core import meta

from trainer import adapt as adapt_entry
from trainer.adaptation import adapt
from trainer.checkpoint import checkpoints
from trainer.checkpoint import loader
from trainer.training import freezing
from trainer.checkpoint import hf_gemma2
from trainer.model import config_io
from trainer.model import transformer
from trainer.model.reference_attention import AttentionMask
from trainer.model.config import EncoderDecoderConfig, TransformerConfig

DEC = TransformerConfig(vocab_size=89, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=64, query_pre_attn_scalar=8.0, sliding_window=3,
                        attn_logits_soft_cap=5.0, final_logit_soft_cap=4.0)
ENC = dataclasses.replace(DEC, embed_dim=48, num_layers=3, mlp_dim=96)  # wider encoder source


def _decoder_params(config, seed):
  params = transformer.Decoder(config).init(jax.random.PRNGKey(seed), jnp.ones((1, 4), jnp.int32))['params']
  params = jax.tree_util.tree_map(np.asarray, meta.unbox(params))
  rng = np.random.default_rng(seed)
  # Randomise the zero-initialised norm scales so a dropped or swapped norm would show.
  return jax.tree_util.tree_map_with_path(
      lambda p, x: (rng.normal(size=x.shape) * 0.2).astype(np.float32) if 'scale' in str(p) else x, params)


def _flat(tree):
  return {'/'.join(freezing.path_keys(p)): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _tokens():
  return jnp.asarray(np.random.default_rng(3).integers(1, 89, size=(2, 9)), jnp.int32)


def _stack_logits(config, params, tokens, mask, *, hidden_only=False):
  """Runs the shared block stack (what Encoder and Decoder are built from) with a given mask."""
  stack = transformer._Stack(config)  # pylint: disable=protected-access
  def fn(module):
    hidden = module.hidden(tokens, None, mask, None, None, True)
    return hidden if hidden_only else module.logits(hidden)
  return np.asarray(stack.apply({'params': params}, method=fn))


def test_balanced_encoder_with_causal_mask_reproduces_the_source():
  src = _decoder_params(DEC, seed=0)
  config, params = adapt.adapt_params(DEC, src)
  assert config == EncoderDecoderConfig(encoder=DEC, decoder=DEC)
  tokens = _tokens()
  source_logits = np.asarray(transformer.Decoder(DEC).apply({'params': src}, tokens))
  causal = AttentionMask(q_segment_ids=None, kv_segment_ids=None, causal=True)
  enc_causal = _stack_logits(config.encoder, params['encoder'], tokens, causal)
  np.testing.assert_allclose(enc_causal, source_logits, atol=1e-5, rtol=0)
  # Hidden states too: the source Decoder's own stack vs the adapted encoder's, both causal.
  source_hidden = np.asarray(transformer.Decoder(DEC).apply(
      {'params': src}, method=lambda m: m.hidden(tokens, None, causal, None, None, True)))
  np.testing.assert_allclose(_stack_logits(config.encoder, params['encoder'], tokens, causal, hidden_only=True),
                             source_hidden, atol=1e-5, rtol=0)
  # The adapted encoder is bidirectional: run as an Encoder it sees the future, so it differs.
  bidi = AttentionMask(q_segment_ids=None, kv_segment_ids=None, causal=False)
  assert np.abs(_stack_logits(config.encoder, params['encoder'], tokens, bidi) - source_logits).max() > 1e-2
  # The decoder's self-attention path is the source's, and cross-attention is a copy of it.
  flat, flat_src = _flat(params), _flat(src)
  for name, value in flat_src.items():
    np.testing.assert_array_equal(flat['encoder/' + name], value)
    np.testing.assert_array_equal(flat['decoder/' + name], value)
  for i in range(DEC.num_layers):
    for proj in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):
      np.testing.assert_array_equal(flat[f'decoder/layer_{i}/cross_attn/{proj}/kernel'],
                                    flat_src[f'layer_{i}/self_attn/{proj}/kernel'])
    np.testing.assert_array_equal(flat[f'decoder/layer_{i}/pre_cross_attn_norm/scale'],
                                  flat_src[f'layer_{i}/pre_attention_norm/scale'])
  # Copies, not aliases: training one side cannot change the other.
  assert params['encoder']['embedder']['embedding'] is not params['decoder']['embedder']['embedding']


def _expected_shapes(config):
  abstract = jax.eval_shape(lambda: transformer.EncoderDecoder(config).init(
      jax.random.PRNGKey(0), jnp.ones((1, 3), jnp.int32), jnp.ones((1, 2), jnp.int32))['params'])
  return {'/'.join(freezing.path_keys(p)): tuple(x.shape)
          for p, x in jax.tree_util.tree_flatten_with_path(meta.unbox(abstract))[0]}


def test_unbalanced_adaptation_random_cross_attention_and_model_runs():
  dec_src, enc_src = _decoder_params(DEC, seed=0), _decoder_params(ENC, seed=1)
  config, params = adapt.adapt_params(DEC, dec_src, encoder_config=ENC, encoder_params=enc_src, seed=7)
  assert config.encoder == ENC and config.decoder == DEC
  flat = _flat(params)
  assert {k: v.shape for k, v in flat.items()} == _expected_shapes(config)
  assert flat['decoder/layer_0/cross_attn/k_proj/kernel'].shape == (48, 2, 8)
  for name, value in _flat(enc_src).items():
    np.testing.assert_array_equal(flat['encoder/' + name], value)
  np.testing.assert_array_equal(flat['decoder/layer_1/pre_cross_attn_norm/scale'], 0.0)
  # Random init: differs between layers, deterministic for a seed, changes with the seed.
  assert not np.array_equal(flat['decoder/layer_0/cross_attn/q_proj/kernel'],
                            flat['decoder/layer_1/cross_attn/q_proj/kernel'])
  _, again = adapt.adapt_params(DEC, dec_src, encoder_config=ENC, encoder_params=enc_src, seed=7)
  _, other = adapt.adapt_params(DEC, dec_src, encoder_config=ENC, encoder_params=enc_src, seed=8)
  for k, v in _flat(again).items():
    assert v.tobytes() == flat[k].tobytes(), k
  assert not np.array_equal(_flat(other)['decoder/layer_0/cross_attn/q_proj/kernel'],
                            flat['decoder/layer_0/cross_attn/q_proj/kernel'])
  logits = transformer.EncoderDecoder(config).apply({'params': params}, _tokens(), _tokens()[:, :5])
  assert logits.shape == (2, 5, 89) and np.isfinite(np.asarray(logits)).all()


def test_adaptation_errors_name_the_problem():
  src = _decoder_params(DEC, seed=0)
  with pytest.raises(adapt.AdaptError, match='cross_attn_init=self_attn needs equal widths'):
    adapt.adapt_params(DEC, src, encoder_config=ENC, encoder_params=_decoder_params(ENC, 1),
                       cross_attn_init='self_attn')
  other_vocab = dataclasses.replace(DEC, vocab_size=90)
  with pytest.raises(adapt.AdaptError, match='vocab_size=90'):
    adapt.adapt_params(DEC, src, encoder_config=other_vocab, encoder_params=_decoder_params(other_vocab, 1))
  with pytest.raises(adapt.AdaptError, match=r'decoder source: parameter layer_0/mlp/down_proj/kernel has shape \(64, 32\), its config implies \(65, 32\)'):
    adapt.adapt_params(dataclasses.replace(DEC, mlp_dim=65), src)
  del src['layer_1']['post_feedforward_norm']
  with pytest.raises(adapt.AdaptError, match='parameter layer_1/post_feedforward_norm/scale is missing'):
    adapt.adapt_params(DEC, src)


def _run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, '-m', 'trainer.adapt', *args], capture_output=True, text=True,
                        env=env, cwd=str(pathlib.Path(__file__).resolve().parents[3]), timeout=300)


def test_command_line_from_hf_and_orbax_sources(tmp_path, capsys):
  dec_src, enc_src = _decoder_params(DEC, seed=0), _decoder_params(ENC, seed=1)
  hf_dec, hf_enc = str(tmp_path / 'hf_dec'), str(tmp_path / 'hf_enc')
  hf_gemma2.export_decoder(dec_src, DEC, hf_dec)
  hf_gemma2.export_decoder(enc_src, ENC, hf_enc)
  # Unbalanced from two HF Gemma 2 checkpoints.
  out = str(tmp_path / 'adapted')
  proc = _run_cli(f'--decoder_only={hf_dec}', f'--encoder_from={hf_enc}', f'--output={out}', '--seed=7')
  assert proc.returncode == 0, proc.stderr
  assert 'cross-attention from random' in proc.stdout
  config = config_io.load_encoder_decoder_config(out)
  assert config.encoder.embed_dim == 48 and config.decoder.embed_dim == 32
  assert config.decoder.resolved_layer_types == DEC.resolved_layer_types
  with open(os.path.join(out, 'model_config.json')) as f:
    assert json.load(f)['adapted_from']['cross_attn_init'] == 'random'
  abstract = jax.eval_shape(lambda: meta.unbox(transformer.EncoderDecoder(config).init(
      jax.random.PRNGKey(0), jnp.ones((1, 3), jnp.int32), jnp.ones((1, 2), jnp.int32))['params']))
  restored = loader.restore_params(out, abstract)  # what train(init_checkpoint=...) does
  _, expected = adapt.adapt_params(DEC, dec_src, encoder_config=ENC, encoder_params=enc_src, seed=7)
  for k, v in _flat(expected).items():
    np.testing.assert_array_equal(_flat(restored)[k], v, err_msg=k)
  # The rest in-process (the same main() as the command line, without a new interpreter each time).
  def run(*args):
    code = adapt_entry.run(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err

  # Refuses to overwrite; bad sources are one-line errors.
  code, _, err = run(f'--decoder_only={hf_dec}', f'--output={out}')
  assert code == 2 and 'already holds an adapted checkpoint' in err
  code, _, err = run(f'--decoder_only={tmp_path / "missing"}', f'--output={tmp_path / "x"}')
  assert code == 2 and 'no such directory' in err
  # Balanced from a trainer orbax checkpoint (params-only dir + model_config.json beside it).
  orbax_src = tmp_path / 'orbax_dec'
  checkpoints.save_params(str(orbax_src / 'params'), dec_src)
  code, _, err = run(f'--decoder_only={orbax_src}', f'--output={tmp_path / "no_config"}')
  assert code == 2 and '--decoder_only_config' in err
  (orbax_src / 'model_config.json').write_text(json.dumps(config_io.config_to_dict(DEC)))
  code, out_text, err = run(f'--decoder_only={orbax_src}', f'--output={tmp_path / "balanced"}')
  assert code == 0, err
  assert 'cross-attention from self_attn' in out_text
  balanced = config_io.load_encoder_decoder_config(str(tmp_path / 'balanced'))
  assert balanced == EncoderDecoderConfig(encoder=DEC, decoder=DEC)
  # An orbax source whose config is a gin model file (in-process: the same main() as the command).
  tiny_src = tmp_path / 'orbax_tiny'
  checkpoints.save_params(str(tiny_src / 'params'), _decoder_params(TINY, seed=2))
  assert adapt_entry.run([f'--decoder_only={tiny_src}', '--decoder_only_config=gin/models/gemma2_tiny.gin',
                     '--gin.VOCAB_SIZE=89', f'--output={tmp_path / "from_gin"}']) == 0
  assert config_io.load_encoder_decoder_config(str(tmp_path / 'from_gin')).decoder == TINY
  code, _, err = run(f'--decoder_only={tiny_src}', '--decoder_only_config=gin/models/gemma2_tiny.gin',
                     '--gin.VOCAB_SIZE=90', f'--output={tmp_path / "bad_vocab"}')
  assert code == 2 and 'parameter embedder/embedding has shape (89, 64), its config implies (90, 64)' in err, err


def test_cross_attention_warmup_through_the_trainer(tmp_path):
  """K warm-up steps of the real train loop from an adapted checkpoint: every non-cross-attention
  parameter is bit-identical to the adapted one, every cross-attention parameter changed."""
  from trainer.training import models
  from trainer.training import optimizers
  from trainer.training import loop as trainer_lib
  dec_src, enc_src = _decoder_params(DEC, seed=0), _decoder_params(ENC, seed=1)
  config, params = adapt.adapt_params(DEC, dec_src, encoder_config=ENC, encoder_params=enc_src, seed=7)
  init_dir = str(tmp_path / 'adapted' / 'params')
  checkpoints.save_params(init_dir, params)
  rng = np.random.default_rng(0)

  def dataset_fn(start_batch=0):
    del start_batch
    while True:
      enc = rng.integers(1, 89, size=(4, 8)).astype(np.int32)
      tgt = rng.integers(1, 89, size=(4, 6)).astype(np.int32)
      yield {'encoder_input_tokens': enc, 'decoder_target_tokens': tgt,
             'decoder_input_tokens': np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
             'decoder_loss_weights': np.ones_like(tgt, np.float32)}

  k = 3
  tx = freezing.cross_attention_warmup(
      optimizers.create_optimizer(name='adamw', learning_rate=1e-2, weight_decay=0.1), warmup_steps=k)
  model = models.EncoderDecoderModel(config=config)
  result = trainer_lib.train(model=model, model_dir=str(tmp_path / 'run'), optimizer=tx, total_steps=k,
                             train_dataset_fn=dataset_fn, init_checkpoint=str(tmp_path / 'adapted'),
                             checkpoint_cfg=checkpoints.CheckpointConfig(period=0, async_save=False),
                             log_period=1, stream=open(os.devnull, 'w'))
  assert result.step == k
  abstract = jax.eval_shape(lambda: params)
  trained = _flat(loader.restore_params(str(tmp_path / 'run' / 'checkpoints'), abstract))
  initial = _flat(params)
  n_cross = 0
  for name, value in initial.items():
    if freezing.is_cross_attention(name.split('/')):
      n_cross += 1
      if name.endswith('kernel'):  # norms start at 0 and get updates too, but check kernels strictly
        assert not np.array_equal(trained[name], value), f'{name} did not train during the warm-up'
    else:
      assert trained[name].tobytes() == value.tobytes(), f'{name} changed during the warm-up'
  assert n_cross == DEC.num_layers * 6


# --------------------------------------------------------------------------------------------------
# Gin: gin/runs/adapt.gin and gin/runs/distill.gin composed with a T5Gemma model file, run through
# the trainer's own entry-point plumbing (gin_flags) on synthetic batches.

def _synthetic_enc_dec_batches(start_batch=0):
  rng = np.random.default_rng(start_batch)
  while True:
    enc = rng.integers(1, 89, size=(2, 8)).astype(np.int32)
    enc[:, 6:] = 0
    tgt = rng.integers(1, 89, size=(2, 6)).astype(np.int32)
    yield {'encoder_input_tokens': enc, 'decoder_target_tokens': tgt,
           'decoder_input_tokens': np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
           'decoder_loss_weights': np.ones_like(tgt, np.float32)}


TINY = TransformerConfig(vocab_size=89, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                         mlp_dim=128, query_pre_attn_scalar=16, sliding_window=8)  # = gin/models/t5gemma_tiny.gin


def _gin_train(run_file, bindings):
  import gin
  from trainer import gin_flags
  from trainer.training import loop as trainer_lib
  gin.clear_config()
  try:
    gin.external_configurable(_synthetic_enc_dec_batches, 'test_adapt_synthetic_batches')
    gin_flags.setup_gin(gin_files=['gin/models/t5gemma_tiny.gin', run_file], gin_bindings=[
        'VOCAB_SIZE = 89', 'MIXTURE_OR_TASK_NAME = "unused"', "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 6}",
        'TRAIN_STEPS = 2', 'LOG_PERIOD = 1', 'OPTIMIZER = "adamw"', 'WEIGHT_DECAY = 0.1',
        'LEARNING_RATE = 0.01', 'WARMUP_STEPS = 0', 'LR_DECAY = "constant"',
        'trainer.train.train_dataset_cfg = None',
        'trainer.train.train_dataset_fn = @test_adapt_synthetic_batches',
        'checkpoints.CheckpointConfig.async_save = False'] + bindings)
    return gin.get_configurable(trainer_lib.train)(stream=open(os.devnull, 'w'))
  finally:
    gin.clear_config()


def test_adapt_and_distill_gin_runs(tmp_path):
  from trainer.checkpoint import hf_export
  src = _decoder_params(TINY, seed=5)
  hf_src = str(tmp_path / 'gemma2_tiny_hf')
  hf_gemma2.export_decoder(src, TINY, hf_src)
  run_dir = str(tmp_path / 'adapt_run')
  result = _gin_train('gin/runs/adapt.gin', [f'MODEL_DIR = "{run_dir}"', f'DECODER_ONLY_CHECKPOINT = "{hf_src}"'])
  assert result.step == 2 and all(np.isfinite(v) for v in result.losses.values())
  assert os.path.isdir(os.path.join(run_dir, 'adapted', 'params'))
  assert config_io.load_encoder_decoder_config(run_dir) == EncoderDecoderConfig(encoder=TINY, decoder=TINY)
  # The trained run exports to HF T5Gemma (shapes from MODEL_DIR/model_config.json).
  config, kind = hf_export.export(checkpoint=run_dir, output=str(tmp_path / 'hf_out'), log=lambda *a: None)
  assert kind == 'T5GemmaForConditionalGeneration'

  # Distillation: the teacher (= the source) is stored in the init checkpoint and stays bit-identical.
  distill_dir = str(tmp_path / 'distill_run')
  result = _gin_train('gin/runs/distill.gin', [f'MODEL_DIR = "{distill_dir}"', f'DECODER_ONLY_CHECKPOINT = "{hf_src}"',
                                               'DISTILL_WEIGHT = 0.5', 'DISTILL_TEMPERATURE = 2.0'])
  assert result.step == 2 and 'kl' in result.last_metrics and result.last_metrics['kl'] >= 0
  # Reported params are the student's only (the teacher is not trained).
  assert result.num_params == sum(x.size for x in jax.tree_util.tree_leaves(adapt.adapt_params(TINY, src)[1]))
  from trainer.adaptation import distillation
  abstract = jax.eval_shape(lambda: {**adapt.adapt_params(TINY, src)[1], 'teacher': src})
  trained = loader.restore_params(os.path.join(distill_dir, 'checkpoints'), abstract)
  for name, value in _flat(src).items():
    assert _flat(trained['teacher'])[name].tobytes() == value.tobytes(), name
  assert distillation.TEACHER_KEY == 'teacher'
  # Bad configuration is one clear message: the adapted checkpoint does not match the model file.
  with pytest.raises(adapt.AdaptError, match='embed_dim=32 but the gin model file sets'):
    small = str(tmp_path / 'small_hf')
    hf_gemma2.export_decoder(_decoder_params(DEC, seed=0), DEC, small)
    _gin_train('gin/runs/adapt.gin', [f'MODEL_DIR = "{tmp_path / "bad"}"', f'DECODER_ONLY_CHECKPOINT = "{small}"'])
