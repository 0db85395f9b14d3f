"""scripts/gpu_perf.py --part=all: the budgeted plan, its results file and its tables.

The GPU figures themselves need a GPU; here the whole plan runs at toy size on CPU (every size is a
flag) and the budget logic runs with stand-in rows, so both the schema and the stopping are real.
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO_ROOT, 'scripts', 'gpu_perf.py')
TOY = ['--attention_batch=1', '--attention_length=64', '--attention_window=16', '--iters=1',
       '--t5_model=gin/models/t5gemma_tiny.gin', '--t5_lengths=16,16',
       '--dec_model=gin/models/gemma2_tiny.gin', '--dec_length=32',
       '--lever_model=gin/models/gemma2_tiny.gin', '--lever_layers=2', '--lever_lengths=32',
       '--steps=1', '--lever_steps=1', '--lever_cap_s=60', '--loss_chunk=8', '--binding=VOCAB_SIZE=128',
       '--peak_flops=1e7']
NUMBERS = ('step_time_s', 'tokens_per_s', 'mfu', 'tflops')


@pytest.fixture(scope='module')
def gpu_perf():
  spec = importlib.util.spec_from_file_location('gpu_perf', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_plan_best_settings_first_then_one_lever_at_a_time(gpu_perf):
  rows = gpu_perf.plan(gpu_perf.parse_args([]))
  assert [r['id'] for r in rows[:3]] == ['attention', 'train:t5gemma', 'train:gemma2']
  t5, dec = rows[1], rows[2]
  assert (t5['gin_file'], t5['length'], t5['encoder_length']) == (
      'gin/models/t5gemma_2b_2b.gin', 2048, 2048)
  assert (dec['gin_file'], dec['length'], dec['encoder_length']) == ('gin/models/gemma2_2b.gin',
                                                                     4096, None)
  assert t5['overrides'] == {'SCAN_LAYERS': 'True', 'REMAT': "'dots'",
                             'config.TransformerConfig.attention_impl': "'fused'",
                             'models.EncoderDecoderModel.loss_chunk_size': '2048',
                             'ACTIVATION_DTYPE': "'bfloat16'"}
  assert dec['overrides']['models.DecoderOnlyModel.loss_chunk_size'] == '2048'
  levers = [r for r in rows if r['part'] == 'lever']
  base = levers[0]
  assert base['overrides'] == t5['overrides']
  assert 'encoder/config.TransformerConfig.num_layers=8' in base['extra']
  for lever in levers[1:]:
    changed = {k for k in base['overrides'] if base['overrides'][k] != lever['overrides'][k]}
    changed |= set(lever['overrides']) - set(base['overrides'])
    extra = set(lever['extra']) - set(base['extra'])
    # One lever per row: one setting (the master copy is bf16 params plus its optimizer switch).
    assert len(changed) + len(extra) + len(lever['env']) in (1, 2), lever['label']
    assert len(changed) + len(lever['env']) == 1, lever['label']


def test_unknown_row_id_is_a_one_line_error(gpu_perf, capsys):
  with pytest.raises(SystemExit) as exit_info:
    gpu_perf.main(['--rows=attention,lever:99'])
  assert exit_info.value.code == 2
  assert "unknown row ids ['lever:99']" in capsys.readouterr().err


def test_rows_stop_before_the_budget(gpu_perf, monkeypatch, tmp_path):
  timeouts = []

  def fake_bench(gin_file, bindings, env, *, steps, timeout):
    timeouts.append((time.time(), timeout))
    time.sleep(min(0.6, timeout))
    return {'step_time_s': 0.1, 'tokens_per_s': 10.0, 'mfu': 50.0, 'tflops': 1.0,
            'device': '1 x fake'}

  def fake_attention(args, env, *, timeout, results):
    timeouts.append((time.time(), timeout))
    return [gpu_perf.new_row(id='attention', part='attention', label='x', tflops=1.0)]

  monkeypatch.setattr(gpu_perf, 'bench_run', fake_bench)
  monkeypatch.setattr(gpu_perf, '_attention_subprocess', fake_attention)
  args = gpu_perf.parse_args(['--budget_s=2.5', '--reserve_s=0.2', '--min_row_s=0.5',
                              f'--out_dir={tmp_path}', '--cache_dir='])
  t0 = time.time()
  results = gpu_perf.run_all(args)
  assert time.time() - t0 < 2.5
  rows = results['rows']
  assert len(rows) == 2 + 1 + len(gpu_perf.LEVERS)  # every planned row is reported
  ran = [r for r in rows if not r['error']]
  skipped = [r for r in rows if r['error']]
  assert 2 <= len(ran) < len(rows) and skipped
  assert rows.index(skipped[0]) == len(ran)  # in order: the rest is skipped, nothing after runs
  assert all(e.startswith('skipped: ') for e in (r['error'] for r in skipped))
  # A row is never given time past the budget (less the reserve for writing the results).
  assert all(start + timeout <= t0 + 2.5 - 0.2 + 0.05 for start, timeout in timeouts)
  assert len(timeouts) == len(ran)
  assert results['device'] == '1 x fake'
  with open(tmp_path / 'gpu_perf.json') as f:
    assert json.load(f)['rows'] == rows


def test_all_runs_end_to_end_at_toy_size(tmp_path):
  cache = os.path.join(tempfile.gettempdir(), 'gemma_adapt_test_jax_cache')
  budget = 150
  env = dict(os.environ, PYTHONPATH=REPO_ROOT, JAX_PLATFORMS='cpu')
  t0 = time.time()
  out = subprocess.run([sys.executable, SCRIPT, '--part=all', f'--budget_s={budget}',
                        '--min_row_s=5', '--rows=attention,train:gemma2,lever:0',
                        f'--out_dir={tmp_path}', f'--cache_dir={cache}'] + TOY,
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=budget + 60)
  assert out.returncode == 0, out.stderr[-2000:]
  assert time.time() - t0 < budget + 15
  with open(tmp_path / 'gpu_perf.json') as f:
    results = json.load(f)
  assert results['device'] == '1 x cpu' and results['jax_version']
  rows = results['rows']
  assert all(set(r) == set(rows[0]) for r in rows)
  assert {'part', 'model', 'length', 'batch', 'check', 'error'} | set(NUMBERS) <= set(rows[0])
  assert [r['part'] for r in rows] == ['attention'] * 6 + ['train_step', 'lever']
  reference = [r for r in rows if r['label'].endswith('reference')]
  assert len(reference) == 3
  for r in reference:
    assert r['error'] is None and r['check'] == 'reference' and r['model'] == 'gemma2_2b'
    assert all(r[k] > 0 for k in NUMBERS), r
  for r in rows[1:6:2]:  # no GPU: the fused kernel's fallback is reported, not timed as fused
    assert r['label'].endswith('fused') and r['error'].startswith('FELL BACK')
  train = rows[6]
  assert (train['model'], train['length'], train['batch']) == ('gemma2_tiny', 32, 2)
  assert train['error'] is None, train
  # trainer.bench prints 2 decimals of GFLOP/s: a toy step on a loaded CPU may show 0.00.
  assert all(train[k] > 0 for k in ('step_time_s', 'tokens_per_s', 'mfu', 'compile_s'))
  assert train['tflops'] >= 0
  assert train['check'].startswith('fused attention FELL BACK')
  assert "--gin.SCAN_LAYERS=True" in train['command']
  lever = rows[7]  # decoder-only here (the encoder-decoder's bindings: the plan test above)
  assert (lever['model'], lever['length']) == ('gemma2_tiny', 32)
  assert 'config.TransformerConfig.num_layers=2' in lever['settings']
  assert lever['error'] is None or 'skipped' in lever['error'] or 'timed out' in lever['error']
  text = (tmp_path / 'gpu_perf.md').read_text()
  assert '## Attention fwd+bwd' in text and '## Train step' in text and '| lever:0 |' in text


def test_gpu_wheels_are_the_versions_tested_here():
  """The wheel set that travels to the GPU pins the versions this checkout is tested with."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  pins = {}
  with open(os.path.join(REPO_ROOT, 'scripts', 'gpu_wheels.txt')) as f:
    for line in f:
      line = line.split('#')[0].strip()
      if line:
        name, _, version = line.partition('==')
        pins[name] = version
  assert {'tokamax', 'gin-config'} <= set(pins)
  assert not {'tensorflow', 'seqio', 'apache-beam', 'grain', 'jax', 'jaxlib'} & set(pins)
  for name, version in pins.items():
    assert metadata.version(name) == version, name
  for name in ('tokamax', 'pydantic', 'jaxtyping', 'qwix'):  # their needs travel with them
    for req in metadata.requires(name) or []:
      dep = req.split(';')[0].split('[')[0]
      dep = dep.split('>')[0].split('=')[0].split('<')[0].split('!')[0].strip().lower()
      if 'extra ==' in req or dep in ('jax', 'jaxlib', 'flax', 'numpy', 'absl-py', 'opt-einsum',
                                      'opt_einsum'):
        continue  # in the GPU image
      assert dep.replace('_', '-') in pins, (name, req)


def test_documented_commands_use_existing_flags(gpu_perf):
  """Every `gpu_perf.py` command in docs/performance.md and the README names flags that exist."""
  known = {o for a in gpu_perf.build_parser()._actions for o in a.option_strings}  # pylint: disable=protected-access
  seen = 0
  for doc in ('docs/performance.md', 'README.md'):
    with open(os.path.join(REPO_ROOT, doc)) as f:
      text = f.read().replace('\\\n', ' ')
    for line in text.splitlines():
      if 'scripts/gpu_perf.py --' not in line:
        continue
      seen += 1
      words = line[line.index('scripts/gpu_perf.py'):].replace('`', ' ').split()
      for word in words[1:]:
        if word.startswith('--'):
          assert word.split('=')[0] in known, (doc, word)
        elif word in ('2>&1', '|', '&&', ';', ':'):
          break
  assert seen >= 4
