"""Fixtures of the fault-injection suite: a tiny task module, tiny corpora, and the real commands.

Every test here runs a real entry point (`python -m pipelines.cache_tasks`, `python -m
trainer.train`, ...) as a user would, on a few kB of generated text with a byte vocabulary and the
tiny model, and asserts the exit status and what the user sees.
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

import pytest

REPO = str(pathlib.Path(__file__).resolve().parents[2])

# Registers tasks over the corpora named by env vars (imported by the commands via --module_import,
# the way a user's own module is). Byte vocabulary: no SentencePiece training in the suite.
TASK_MODULE = textwrap.dedent('''
    import functools, os
    import seqio
    from tasks import sources

    VOCAB = seqio.ByteVocabulary()
    _REKEY = functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"})
    for name, fmt, var in (("reltext", "text", "REL_TEXT"), ("reljsonl", "jsonl", "REL_JSONL")):
      if os.environ.get(var) and f"{name}_lm" not in seqio.TaskRegistry.names():
        spec = sources.CorpusSpec(name=name, format=fmt, max_document_chars=2000,
                                  splits={"train": os.environ[var],
                                          "validation": os.environ[var]})
        seqio.TaskRegistry.add(
            f"{name}_lm", source=spec.data_source(),
            output_features={"targets": seqio.Feature(VOCAB, add_eos=True)},
            preprocessors=[_REKEY, seqio.preprocessors.tokenize_and_append_eos])
''')

WORDS = ('the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing '
         'matches near old stone bridges').split()


def good_docs(n: int = 24) -> list:
  """`n` distinct valid documents (deterministic)."""
  return [f'doc {i}: ' + ' '.join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(20 + i % 5))
          for i in range(n)]


@pytest.fixture
def task_env(tmp_path):
  """Writes the task module; returns a function (text_file=..., jsonl_file=...) -> env dict."""
  (tmp_path / 'rel_tasks.py').write_text(TASK_MODULE)

  def make(text_file=None, jsonl_file=None):
    env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
               PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), REPO,
                                                        os.environ.get('PYTHONPATH')])),
               JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(),
                                                      'gemma_adapt_test_jax_cache'))
    env.pop('REL_TEXT', None)
    env.pop('REL_JSONL', None)
    if text_file:
      env['REL_TEXT'] = str(text_file)
    if jsonl_file:
      env['REL_JSONL'] = str(jsonl_file)
    return env

  return make


def run_cmd(args, env, timeout=300):
  """Runs `python -m ARGS...` in the repository root; a hang fails the test (timeout)."""
  return subprocess.run([sys.executable, '-m'] + list(args), env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def one_line_error(proc, program: str) -> str:
  """Asserts exit status 2 and exactly one stderr line `PROGRAM: ...`; returns it."""
  err = proc.stderr.strip()
  assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], err[-3000:])
  assert len(err.splitlines()) == 1, err[-3000:]
  assert err.startswith(f'{program}: ') and 'Traceback' not in err, err
  return err


def cache_job(out_dir, env, task='reljsonl_lm', lengths='targets:64', extra=()):
  return run_cmd(['pipelines.cache_tasks', '--module_import=rel_tasks', f'--tasks={task}',
                  f'--output_cache_dir={out_dir}', f'--feature_lengths={lengths}',
                  '--splits=train', '--min_shards=2', '--min_range_bytes=256',
                  '--direct_num_workers=1', '--direct_running_mode=in_memory',
                  '--progress_interval_s=60'] + list(extra), env)


def read_cache_targets(out_dir, task='reljsonl_lm', lengths_name='tg64'):
  """All `targets` id lists of a cached split (order-free: a sorted list of tuples)."""
  from tasks import record_formats
  import glob
  out = []
  for path in sorted(glob.glob(os.path.join(out_dir, f'{task}.{lengths_name}', 'train.tfrecord-*'))):
    for _, raw in record_formats.read_tfrecord_range(path, 0, None):
      out.append(raw)
  return out


def dead_letters(out_dir, task='reljsonl_lm', lengths_name='tg64'):
  path = os.path.join(out_dir, f'{task}.{lengths_name}', 'deadletter.train.jsonl')
  if not os.path.exists(path):
    return []
  return [json.loads(l) for l in open(path, encoding='utf-8') if l.strip()]


def train_args(model_dir, *, task='reltext_lm', steps=4, vocab_size=259, extra=()):
  """`python -m trainer.train` arguments: tiny Gemma 2, byte vocabulary, batch 2 x 32 tokens."""
  return ['trainer.train', '--module_import=rel_tasks', '--gin_file=gin/models/gemma2_tiny.gin',
          '--gin_file=gin/runs/pretrain.gin', f"--gin.MODEL_DIR='{model_dir}'",
          f"--gin.MIXTURE_OR_TASK_NAME='{task}'", "--gin.TASK_FEATURE_LENGTHS={'targets': 32}",
          f'--gin.TRAIN_STEPS={steps}', '--gin.BATCH_SIZE=2', f'--gin.VOCAB_SIZE={vocab_size}',
          '--gin.LOG_PERIOD=1', '--gin.WARMUP_STEPS=1'] + list(extra)


@pytest.fixture
def text_corpus(tmp_path):
  path = tmp_path / 'corpus.txt'
  path.write_text('\n'.join(good_docs(40)) + '\n')
  return path


def metrics_steps(model_dir, split='train'):
  return [json.loads(l)['step'] for l in open(os.path.join(model_dir, 'metrics.jsonl'))
          if json.loads(l)['split'] == split]
