"""Gin configs compose (model file + run file + overrides) and bad configuration is one clear line."""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

import gin
import pytest

from trainer.training import flops
from trainer import gin_flags
from trainer import train as train_entry

REPO = str(pathlib.Path(__file__).resolve().parents[2])
REQUIRED = ["--gin.MODEL_DIR='/tmp/unused'", "--gin.MIXTURE_OR_TASK_NAME='some_task'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}", '--gin.TRAIN_STEPS=10']


@pytest.fixture(autouse=True)
def _clean_gin():
  yield
  gin.clear_config()  # leave no bindings behind for other test modules


def load(model_file, extra=()):
  gin.clear_config()
  bindings = [a[len('--gin.'):] for a in REQUIRED + list(extra)]
  gin_flags.setup_gin(gin_files=[f'gin/models/{model_file}.gin', 'gin/runs/pretrain.gin'],
                      gin_bindings=bindings)
  return gin.query_parameter('%MODEL').scoped_configurable_fn()


@pytest.mark.parametrize('name,layers,dim,heads,kv,mlp', [
    ('gemma2_2b', 26, 2304, 8, 4, 9216), ('gemma2_9b', 42, 3584, 16, 8, 14336)])
def test_gemma2_files_have_the_released_shapes(name, layers, dim, heads, kv, mlp):
  model = load(name)
  cfg = model.config
  assert (cfg.num_layers, cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.mlp_dim) == (
      layers, dim, heads, kv, mlp)
  assert (cfg.head_dim, cfg.vocab_size, cfg.query_pre_attn_scalar, cfg.sliding_window) == (
      256, 256000, 256, 4096)
  assert cfg.dtype == 'bfloat16' and cfg.param_dtype == 'float32'
  assert model.z_loss == pytest.approx(1e-4)
  if name == 'gemma2_2b':  # 2.61B parameters in the release: matmuls + one embedding table.
    total = cfg.num_layers * flops.layer_matmul_params(cfg) + cfg.vocab_size * cfg.embed_dim
    assert total == pytest.approx(2.61e9, rel=0.01)


@pytest.mark.parametrize('name,enc_dim,dec_dim', [
    ('t5gemma_2b_2b', 2304, 2304), ('t5gemma_9b_2b', 3584, 2304), ('t5gemma_9b_9b', 3584, 3584)])
def test_t5gemma_files_pair_the_stacks(name, enc_dim, dec_dim):
  model = load(name)
  assert type(model).__name__ == 'EncoderDecoderModel'
  assert model.config.encoder.embed_dim == enc_dim
  assert model.config.decoder.embed_dim == dec_dim
  assert model.FEATURE_CONVERTER_NAME == 'EncDecFeatureConverter'


@pytest.mark.parametrize('name', ['gemma2_tiny', 'gemma2_small', 't5gemma_tiny', 't5gemma_small'])
def test_small_files_compose_with_overrides(name):
  model = load(name, ['--gin.VOCAB_SIZE=300', '--gin.DROPOUT_RATE=0.1',
                      '--gin.BATCH_SIZE=4', '--gin.partitioning.MeshConfig.data=1'])
  cfgs = [model.config.encoder, model.config.decoder] if 'encoder' in dir(model.config) else [
      model.config]
  for cfg in cfgs:
    assert cfg.vocab_size == 300 and cfg.dropout_rate == pytest.approx(0.1)
  assert gin.query_parameter('train/data.DatasetConfig.batch_size') == 4 or (
      gin.query_parameter('%BATCH_SIZE') == 4)


def run_cli(argv, capsys):
  gin.clear_config()
  rc = train_entry.run(argv)
  err = capsys.readouterr().err.strip()
  return rc, err


BASE = ['--gin_file=gin/models/gemma2_tiny.gin', '--gin_file=gin/runs/pretrain.gin',
        '--gin.VOCAB_SIZE=259'] + REQUIRED


@pytest.mark.parametrize('argv,message', [
    (BASE + ['--gin.trainer.train.bogus=1'],
     "--gin.trainer.train.bogus=1: Configurable 'trainer.train' doesn't have a parameter named "
     "'bogus'"),
    (BASE + ['--gin.TRAN_STEPS=5'], "--gin.TRAN_STEPS=5: unknown gin macro 'TRAN_STEPS'"),
    ([a for a in BASE if 'MODEL_DIR' not in a],
     'required gin macro MODEL_DIR is not set: pass --gin.MODEL_DIR=VALUE'),
    (BASE + ["--gin.TRAIN_STEPS='ten'"], "train.total_steps must be a positive int, got 'ten'"),
    (BASE + ["--gin.BATCH_SIZE='8'"], "DatasetConfig.batch_size must be a positive int, got '8'"),
    (BASE + ['--gin.models.DecoderOnlyModel.z_loss=-1.0'], 'z_loss must be >= 0, got -1.0'),
    (BASE + ['--gin_fle=x.gin'], "Unknown command line flag 'gin_fle'"),
    (['--gin_file=gin/models/nope.gin'], '--gin_file=gin/models/nope.gin: file not found'),
])
def test_bad_configuration_is_one_clear_line(argv, message, capsys):
  rc, err = run_cli(argv, capsys)
  assert rc == 2
  assert len(err.splitlines()) == 1, err
  assert err.startswith('train: ') and message in err, err
  assert 'Traceback' not in err


TASK_MODULE = textwrap.dedent('''
    import os
    import seqio
    VOCAB = seqio.ByteVocabulary()
    if 'gintest_bytes_lm' not in seqio.TaskRegistry.names():
      seqio.TaskRegistry.add(
          'gintest_bytes_lm',
          source=seqio.TextLineDataSource({'train': os.environ['GINTEST_TEXT'],
                                           'validation': os.environ['GINTEST_TEXT']}),
          preprocessors=[seqio.map_over_dataset(lambda line: {'targets': line}),
                         seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
          output_features={'targets': seqio.Feature(VOCAB)})
''')


def test_cli_trains_on_a_seqio_task_end_to_end(tmp_path, shared_data):
  text = tmp_path / 'lines.txt'
  lines = (shared_data / 'tinyshakespeare' / 'input.txt').read_text().splitlines()[:400]
  text.write_text('\n'.join(l for l in lines if l.strip()) + '\n')
  (tmp_path / 'gintest_tasks.py').write_text(TASK_MODULE)
  env = dict(os.environ, JAX_PLATFORMS='cpu', GINTEST_TEXT=str(text),
             PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), REPO,
                                                      os.environ.get('PYTHONPATH')])),
             JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(),
                                                    'gemma_adapt_test_jax_cache'))
  model_dir = tmp_path / 'run'
  cmd = [sys.executable, '-m', 'trainer.train', '--module_import=gintest_tasks',
         '--gin_file=gin/models/gemma2_tiny.gin', '--gin_file=gin/runs/pretrain.gin',
         f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='gintest_bytes_lm'",
         "--gin.TASK_FEATURE_LENGTHS={'targets': 32}", '--gin.TRAIN_STEPS=3', '--gin.BATCH_SIZE=4',
         '--gin.VOCAB_SIZE=259', '--gin.LOG_PERIOD=1', '--gin.EVAL_PERIOD=3', '--gin.EVAL_STEPS=1',
         '--gin.models.DecoderOnlyModel.config=@config.TransformerConfig()']
  proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert 'train: done at step 3' in proc.stdout
  assert 'Traceback' not in proc.stderr
  records = [json.loads(l) for l in open(model_dir / 'metrics.jsonl')]
  assert [r['step'] for r in records if r['split'] == 'train'] == [1, 2, 3]  # step 1 logged
  assert [r['step'] for r in records if r['split'] == 'eval'] == [3]
  assert os.path.isdir(model_dir / 'checkpoints' / '3')
  assert 'num_layers = 2' in (model_dir / 'config.gin').read_text()
  # Packed batches (PACK=True): segment ids and positions reached the model.
  assert "'decoder_segment_ids': (4, 32)" in proc.stdout
