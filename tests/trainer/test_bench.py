"""`python -m trainer.bench` runs with TensorFlow, seqio and Beam impossible to import."""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

REPO = str(pathlib.Path(__file__).resolve().parents[2])

BLOCKED_RUN = textwrap.dedent('''
    import sys
    BLOCKED = ('tensorflow', 'seqio', 'apache_beam', 'tensorflow_datasets', 't5')

    class Blocker:
      def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
          raise ImportError(f'{name} is blocked in this test')
        return None

    sys.meta_path.insert(0, Blocker())
    from trainer import bench
    rc = bench.run_cli(sys.argv[1:])
    leaked = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED)
    print('RESULT ' + __import__('json').dumps({'rc': rc, 'leaked': leaked}))
''')


def test_bench_runs_without_tensorflow_and_prints_figures():
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')])),
             JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(),
                                                    'gemma_adapt_test_jax_cache'))
  args = ['--gin_file=gin/models/t5gemma_tiny.gin', '--gin.VOCAB_SIZE=128',
          '--gin.benchmark.steps=2', '--gin.benchmark.batch_size=2', '--gin.benchmark.length=16',
          '--gin.benchmark.encoder_length=24', '--gin.benchmark.peak_flops=1e12']
  proc = subprocess.run([sys.executable, '-c', BLOCKED_RUN, *args], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  result = json.loads([l for l in proc.stdout.splitlines() if l.startswith('RESULT ')][-1][7:])
  assert result == {'rc': 0, 'leaked': []}, proc.stderr[-2000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith('bench: step time')][0]
  # e.g. "bench: step time 12.3 ms | 3,456 tokens/s | 0.01 TFLOP/s | MFU 1.2% | loss 4.852"
  assert ' ms | ' in line and 'tokens/s' in line and 'MFU ' in line and '%' in line, line
  tokens_per_s = float(line.split(' | ')[1].split()[0].replace(',', ''))
  assert tokens_per_s > 0


def test_bench_bad_option_is_one_line():
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')])))
  proc = subprocess.run([sys.executable, '-m', 'trainer.bench',
                         '--gin_file=gin/models/gemma2_tiny.gin', '--gin.VOCAB_SIZE=128',
                         '--gin.benchmark.steps=0'], env=env, cwd=REPO, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 2
  assert 'benchmark.steps must be a positive int, got 0' in proc.stderr
  assert 'Traceback' not in proc.stderr
