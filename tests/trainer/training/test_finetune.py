"""Gemma Encoder wrapper: params from a decoder-only tree, bidirectionality, padding/packing
invariance end to end, the classification feature converter, and fine-tuning steps."""
import os
import pathlib

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from trainer.model import encoder
from trainer.training import encoder_models
from trainer.training import feature_converters
from trainer.model import heads
from trainer.model import poolers
from trainer.model import transformer
from trainer.model.config import TransformerConfig

CFG = TransformerConfig(vocab_size=64, embed_dim=16, num_layers=2, num_heads=2, num_kv_heads=1,
                        head_dim=8, mlp_dim=32, query_pre_attn_scalar=8, sliding_window=4)


@pytest.fixture(scope='module')
def decoder_params():
  tokens = jnp.array([[5, 6, 7, 1]])
  return meta.unbox(transformer.Decoder(CFG).init(jax.random.PRNGKey(0), tokens)['params'])


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(meta.unbox(tree))}


def test_encoder_params_from_decoder_is_a_copy_with_the_same_names(decoder_params):
  enc = encoder.encoder_params_from_decoder(decoder_params)
  want, got = _leaves(decoder_params), _leaves(enc)
  assert set(got) == set(want)
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=path)
  # And the Encoder module accepts that tree as is.
  hidden = transformer.Encoder(CFG).apply({'params': enc}, jnp.array([[5, 6, 7, 1]]))
  assert hidden.shape == (1, 4, CFG.embed_dim)


def test_classifier_starts_from_decoder_params(decoder_params):
  model = encoder_models.EncoderClassifierModel(config=CFG, pooler='attention',
                                                pretrained_params=decoder_params)
  params = model.init(jax.random.PRNGKey(3), {'encoder_input_tokens': jnp.ones((1, 4), jnp.int32)})
  # Boxes (logical axis names) survive the swap, values are the decoder's.
  assert meta.get_partition_spec(params)['encoder']['embedder']['embedding'] is not None
  got, want = _leaves(params['encoder']), _leaves(decoder_params)
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=path)
  assert set(params) == {'encoder', 'pooler', 'head'}


def test_encoder_decoder_tree_gives_its_encoder_and_bad_trees_are_named(decoder_params):
  enc = encoder.encoder_params_from_decoder({'encoder': decoder_params, 'decoder': {}})
  assert set(_leaves(enc)) == set(_leaves(decoder_params))
  with pytest.raises(ValueError, match="'embedder'"):
    encoder.encoder_params_from_decoder({'foo': 1})
  bigger = TransformerConfig(vocab_size=64, embed_dim=32, num_layers=2, num_heads=2,
                             num_kv_heads=1, head_dim=8, mlp_dim=32, query_pre_attn_scalar=8)
  model = encoder_models.EncoderClassifierModel(config=bigger, pretrained_params=decoder_params)
  with pytest.raises(ValueError, match='embedder.*does not match'):
    model.init(jax.random.PRNGKey(0), {'encoder_input_tokens': jnp.ones((1, 4), jnp.int32)})


def test_encoder_attention_is_bidirectional(decoder_params):
  model = encoder_models.EncoderClassifierModel(config=CFG, pooler='first',
                                                pretrained_params=decoder_params)
  params = meta.unbox(model.init(jax.random.PRNGKey(0),
                                 {'encoder_input_tokens': jnp.ones((1, 4), jnp.int32)}))
  a = model.compute_outputs(params, {'encoder_input_tokens': jnp.array([[5, 6, 7, 1]])})[0]
  b = model.compute_outputs(params, {'encoder_input_tokens': jnp.array([[5, 6, 9, 1]])})[0]
  # The first token's vector sees a later token: a causal decoder's would not change.
  assert not np.allclose(a, b)
  dec = transformer.Decoder(CFG)
  la = dec.apply({'params': decoder_params}, jnp.array([[5, 6, 7, 1]]))
  lb = dec.apply({'params': decoder_params}, jnp.array([[5, 6, 9, 1]]))
  np.testing.assert_allclose(la[:, 0], lb[:, 0], rtol=1e-6)


@pytest.mark.parametrize('kind', poolers.POOLER_KINDS)
def test_classifier_output_unchanged_by_padding_and_packing(kind, decoder_params):
  model = encoder_models.EncoderClassifierModel(
      config=CFG, pooler=kind, max_segments=3, pretrained_params=decoder_params,
      head=heads.HeadConfig(kind='classification', num_classes=3))
  params = meta.unbox(model.init(jax.random.PRNGKey(0),
                                 {'encoder_input_tokens': jnp.ones((1, 4), jnp.int32)}))
  if kind == 'attention':  # a non-trivial query, so attention pooling differs from mean
    params['pooler']['query'] = jnp.linspace(-1.0, 1.0, CFG.embed_dim)
  a, b = [11, 12, 13, 1], [21, 22, 1]

  def run(tokens, segs, positions):
    batch = {'encoder_input_tokens': jnp.array([tokens]), 'encoder_segment_ids': jnp.array([segs]),
             'encoder_positions': jnp.array([positions])}
    return model.compute_outputs(params, batch)

  alone_a, _ = run(a, [1] * 4, [0, 1, 2, 3])
  padded_a, _ = run(a + [0] * 6, [1] * 4 + [0] * 6, [0, 1, 2, 3] + [0] * 6)
  alone_b, _ = run(b, [1] * 3, [0, 1, 2])
  packed, mask = run(a + b + [0, 0], [1] * 4 + [2] * 3 + [0, 0], [0, 1, 2, 3, 0, 1, 2, 0, 0])
  np.testing.assert_array_equal(mask, [[True, True, False]])
  np.testing.assert_allclose(padded_a[0, 0], alone_a[0, 0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(packed[0, 0], alone_a[0, 0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(packed[0, 1], alone_b[0, 0], rtol=1e-5, atol=1e-5)


def test_feature_converter_pads_and_packs_targets_including_zeros():
  import tensorflow as tf
  ds = tf.data.Dataset.from_tensor_slices({
      'inputs': tf.ragged.constant([[7, 8, 1], [4, 1], [9, 9, 9, 1]], dtype=tf.int32),
      'label': tf.constant([1, 0, 2], tf.int64), 'score': tf.constant([0.5, 0.0, -2.5])})
  ds = ds.map(lambda ex: {**ex, 'inputs': ex['inputs']})
  conv = feature_converters.EncoderClassificationFeatureConverter(target_features=('label', 'score'), pack=False)
  rows = list(conv(ds, {'inputs': 5}).as_numpy_iterator())
  np.testing.assert_array_equal(rows[1]['encoder_input_tokens'], [4, 1, 0, 0, 0])
  np.testing.assert_array_equal(rows[1]['encoder_segment_ids'], [1, 1, 0, 0, 0])
  np.testing.assert_array_equal([r['label'][0] for r in rows], [1, 0, 2])
  np.testing.assert_array_equal([r['score'][0] for r in rows], np.float32([0.5, 0.0, -2.5]))
  conv = feature_converters.EncoderClassificationFeatureConverter(target_features=('label', 'score'), pack=True,
                                               max_segments=2)
  rows = list(conv(ds, {'inputs': 8}).as_numpy_iterator())
  assert len(rows) == 2  # at most 2 examples per row
  np.testing.assert_array_equal(rows[0]['encoder_input_tokens'], [7, 8, 1, 4, 1, 0, 0, 0])
  np.testing.assert_array_equal(rows[0]['encoder_segment_ids'], [1, 1, 1, 2, 2, 0, 0, 0])
  np.testing.assert_array_equal(rows[0]['encoder_positions'], [0, 1, 2, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(rows[0]['label'], [1, 0])  # the 0 label survives packing
  np.testing.assert_array_equal(rows[0]['score'], np.float32([0.5, 0.0]))
  np.testing.assert_array_equal(rows[1]['label'], [2, 0])  # slot 2 absent (segment id 2 unused)
  with pytest.raises(ValueError, match="'rating'"):
    feature_converters.EncoderClassificationFeatureConverter(target_features=('rating',))


# ---------------------------------------------------------------------------------------------
# Fine-tuning through the trainer (trainer.train / trainer.training.loop.train) on real SST-2 rows.

TINY = dict(embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128,
            query_pre_attn_scalar=16, sliding_window=8)  # = gin/models/gemma2_tiny.gin


@pytest.fixture(scope='module')
def sst2_env(tmp_path_factory, shared_data):
  """A SentencePiece vocab trained on SST-2 sentences + env vars for `--module_import=tasks`."""
  from tasks import vocab as vocab_lib
  root = tmp_path_factory.mktemp('ft')
  lines = (shared_data / 'glue' / 'SST-2' / 'train.tsv').read_text().splitlines()[1:1500]
  (root / 'text.txt').write_text('\n'.join(l.split('\t')[0] for l in lines) + '\n')
  model_path, _ = vocab_lib.train_vocabulary(
      input_files=[str(root / 'text.txt')], vocab_size=400, output_prefix=str(root / 'spm'),
      num_sentinels=4, byte_fallback=False)
  vocab = vocab_lib.get_vocabulary(model_path)
  env = dict(os.environ, GEMMA_ADAPT_VOCAB=model_path,
             GEMMA_ADAPT_GLUE_DIR=str(shared_data / 'glue'), JAX_PLATFORMS='cpu')
  return {'root': root, 'vocab': vocab, 'env': env,
          'rows': [l.split('\t') for l in lines[:64]]}


def test_finetune_encoder_command_starts_from_a_decoder_only_checkpoint(sst2_env, tmp_path):
  import subprocess
  import sys
  from trainer.checkpoint import checkpoints
  from trainer.checkpoint import loader
  repo = str(pathlib.Path(__file__).resolve().parents[3])
  cfg = TransformerConfig(vocab_size=sst2_env['vocab'].vocab_size, **TINY)
  dec_params = meta.unbox(transformer.Decoder(cfg).init(jax.random.PRNGKey(7),
                                                        jnp.ones((1, 8), jnp.int32))['params'])
  checkpoints.save_params(str(tmp_path / 'pretrained'), dec_params)
  cmd = [sys.executable, '-m', 'trainer.train', '--module_import=tasks',
         '--gin_file=gin/models/gemma_encoder_tiny.gin',
         '--gin_file=gin/runs/finetune_sst2_encoder.gin',
         f'--gin.VOCAB_SIZE={cfg.vocab_size}', f'--gin.MODEL_DIR="{tmp_path / "ft"}"',
         f'--gin.INIT_CHECKPOINT="{tmp_path / "pretrained"}"', '--gin.TRAIN_STEPS=2',
         '--gin.BATCH_SIZE=4', '--gin.TASK_FEATURE_LENGTHS={"inputs": 32}',
         '--gin.LEARNING_RATE=1e-6', '--gin.WARMUP_STEPS=0', '--gin.POOLER="attention"']
  proc = subprocess.run(cmd, capture_output=True, text=True, env=sst2_env['env'], cwd=repo,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'train: done at step 2' in proc.stdout
  model = encoder_models.EncoderClassifierModel(config=cfg, pooler='attention')
  abstract = meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                       {'encoder_input_tokens': jnp.ones((1, 32), jnp.int32)}))
  abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract)
  tuned = loader.restore_params(str(tmp_path / 'ft'), abstract)
  assert set(tuned) == {'encoder', 'pooler', 'head'}
  # Two steps at lr 1e-6 from the decoder-only weights: still within 1e-4 of them everywhere.
  start = _leaves(dec_params)
  for path, value in _leaves(tuned['encoder']).items():
    np.testing.assert_allclose(value, start[path], atol=1e-4, err_msg=path)
  assert not np.allclose(_leaves(tuned['encoder'])["['embedder']['embedding']"],
                         _leaves(dec_params)["['embedder']['embedding']"], atol=0, rtol=0)


@pytest.mark.parametrize('pooler', ['first', 'attention'])
def test_encoder_classifier_learns_sst2_rows(pooler, sst2_env):
  """Through trainer.train(): 24 steps on 16 real SST-2 rows drive the loss down."""
  from trainer.training import loop as trainer
  import optax
  vocab = sst2_env['vocab']
  rows = sst2_env['rows'][:16]
  length = 40
  tokens = np.zeros((16, length), np.int32)
  for i, (sentence, _) in enumerate(rows):
    ids = (list(vocab.encode(sentence)) + [1])[:length]
    tokens[i, :len(ids)] = ids
  batch = {'encoder_input_tokens': tokens,
           'encoder_segment_ids': (tokens > 0).astype(np.int32),
           'encoder_positions': np.where(tokens > 0, np.arange(length)[None, :], 0).astype(np.int32),
           'label': np.array([[int(l)] for _, l in rows], np.int32)}
  cfg = TransformerConfig(vocab_size=vocab.vocab_size, **TINY)
  model = encoder_models.EncoderClassifierModel(config=cfg, pooler=pooler)

  def data_fn(start_batch=0):
    del start_batch
    while True:
      yield batch

  import tempfile
  from trainer.checkpoint import checkpoints
  with tempfile.TemporaryDirectory() as model_dir:
    result = trainer.train(model=model, model_dir=model_dir, optimizer=optax.adam(3e-3),
                           total_steps=24, train_dataset_fn=data_fn, log_period=4,
                           checkpoint_cfg=checkpoints.CheckpointConfig(
                               period=0, async_save=False, save_on_signal=False),
                           stream=open(os.devnull, 'w'))
  losses = [result.losses[s] for s in sorted(result.losses)]
  assert losses[0] > 0.5  # about log(2) at the start
  assert losses[-1] < 0.5 * losses[0], losses


def test_finetune_gin_files_compose_for_all_three_model_kinds():
  import gin
  from trainer import gin_flags
  from trainer.training import models
  cases = [('gin/models/gemma2_tiny.gin', 'gin/runs/finetune_sst2.gin', 'DecoderOnlyModel',
            'PrefixLMFeatureConverter', 'glue_sst2_text_to_text'),
           ('gin/models/t5gemma_tiny.gin', 'gin/runs/finetune_sst2.gin', 'EncoderDecoderModel',
            'EncDecFeatureConverter', 'glue_sst2_text_to_text'),
           ('gin/models/gemma_encoder_tiny.gin', 'gin/runs/finetune_sst2_encoder.gin',
            'EncoderClassifierModel', 'EncoderClassificationFeatureConverter',
            'glue_sst2_classification')]
  for model_file, run_file, model_cls, converter_cls, task in cases:
    gin.clear_config()
    gin_flags.setup_gin(gin_files=[model_file, run_file], gin_bindings=[
        'VOCAB_SIZE=400', 'MODEL_DIR="/tmp/unused"', 'TRAIN_STEPS=10',
        # (encoder: nothing to read here; the CLI test above reads one)
        'INIT_CHECKPOINT=' + ('None' if model_cls == 'EncoderClassifierModel' else '"/ckpt"')])
    if model_cls == 'EncoderClassifierModel':
      # The checkpoint goes to the encoder (read when the model is built), not to train().
      assert gin.query_parameter('trainer.train.init_checkpoint') is None
      assert str(gin.query_parameter('%ENCODER_INIT_CHECKPOINT')) == '%INIT_CHECKPOINT'
    model = gin.query_parameter('%MODEL').scoped_configurable_fn()
    assert type(model).__name__ == model_cls
    assert type(feature_converters.for_model(model, pack=False)).__name__ == converter_cls
    assert gin.query_parameter('%MIXTURE_OR_TASK_NAME') == task
    if model_cls != 'EncoderClassifierModel':
      assert gin.query_parameter('%INIT_CHECKPOINT') == '/ckpt'
      assert gin.query_parameter('trainer.train.init_checkpoint') is not None
    if model_cls == 'DecoderOnlyModel':
      assert model.prefix_lm
  gin.clear_config()


def test_encoder_starts_from_an_hf_gemma2_directory(decoder_params, tmp_path):
  """INIT_CHECKPOINT may be an HF Gemma 2 directory (config.json + safetensors)."""
  from trainer.checkpoint import hf_gemma2
  hf_gemma2.export_decoder(decoder_params, CFG, str(tmp_path / 'hf'))
  model = encoder_models.EncoderClassifierModel(config=CFG,
                                                pretrained_checkpoint=str(tmp_path / 'hf'))
  params = model.init(jax.random.PRNGKey(0), {'encoder_input_tokens': jnp.ones((1, 4), jnp.int32)})
  got, want = _leaves(params['encoder']), _leaves(decoder_params)
  assert set(got) == set(want)
  for path in want:
    np.testing.assert_allclose(got[path], want[path], rtol=1e-6, err_msg=path)
  with pytest.raises(ValueError, match='no such directory'):
    encoder_models.EncoderClassifierModel(config=CFG, pretrained_checkpoint=str(tmp_path / 'no'))
