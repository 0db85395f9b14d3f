"""`make demo`'s chain (`python -m pipelines.demo`) end to end at tiny settings, and its rerun."""
import importlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run_demo(work: pathlib.Path, *extra: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu')
  env.pop('GEMMA_ADAPT_VOCAB', None)
  env.pop('GEMMA_ADAPT_DATA', None)
  return subprocess.run([sys.executable, '-m', 'pipelines.demo', '--quick', f'--work_dir={work}',
                         *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=2400)


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
  work = tmp_path_factory.mktemp('demo') / 'out'
  proc = _run_demo(work)
  assert proc.returncode == 0, f'demo failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}'
  return work, proc


def test_demo_produces_every_artefact(demo_run):
  work, proc = demo_run
  out = proc.stdout
  # Each stage is announced with its command, and the chain ends with a summary.
  for command in ('pipelines.prepare_corpus', 'pipelines.train_vocab', 'pipelines.cache_tasks',
                  'trainer.train', 'trainer.adapt', 'trainer.eval', 'trainer.export_hf'):
    assert f'$ python -m {command}' in out
  assert 'gemma-adapt demo: summary' in out
  assert (work / 'vocab' / 'spm.model').is_file()
  completed = sorted(p.parent.name for p in (work / 'cache').rglob('COMPLETED'))
  assert any(n.startswith('pydoc_causal_lm.') for n in completed), completed
  assert any(n.startswith('pydoc_ul2.') for n in completed), completed
  assert any(n.startswith('pydoc_prefix_lm.') for n in completed), completed
  for run in ('teacher', 't5gemma'):
    rows = [json.loads(l) for l in (work / run / 'metrics.jsonl').read_text().splitlines() if l]
    losses = [r['loss'] for r in rows if r.get('split') == 'train']
    assert losses and all(l == l and l < 20 for l in losses), (run, losses)
  for sub in ('teacher', 't5gemma'):
    files = list((work / 'eval' / sub).glob('*.json'))
    assert files, sub
    metrics = json.loads(files[0].read_text())['metrics']
    assert 1.0 < metrics['perplexity'] < 10_000, metrics
  png = work / 'loss_curves.png'
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert str(png) in out
  config = json.loads((work / 'hf_t5gemma' / 'config.json').read_text())
  assert config['model_type'] == 't5gemma'


def test_exported_checkpoint_loads_in_transformers(demo_run):
  transformers = pytest.importorskip('transformers')
  work, _ = demo_run
  model = transformers.T5GemmaForConditionalGeneration.from_pretrained(str(work / 'hf_t5gemma'))
  assert sum(p.numel() for p in model.parameters()) > 0


def test_rerun_reuses_completed_stages(demo_run):
  work, first = demo_run
  proc = _run_demo(work)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  stages = first.stdout.count('$ python -m ')
  assert proc.stdout.count('done before, reused') == stages
  assert '$ python -m ' not in proc.stdout


def test_demo_tasks_register_a_users_corpus(monkeypatch, shared_data):
  import seqio  # pylint: disable=g-import-not-at-top
  text = str(shared_data / 'tinyshakespeare' / 'input.txt')
  monkeypatch.setenv('GEMMA_ADAPT_DEMO_TRAIN', text)
  monkeypatch.setenv('GEMMA_ADAPT_DEMO_VALIDATION', text)
  monkeypatch.setenv('GEMMA_ADAPT_DEMO_FORMAT', 'text')
  from pipelines import demo_tasks  # pylint: disable=g-import-not-at-top
  importlib.reload(demo_tasks)
  for name in ('demo_prefix_lm', 'demo_ul2', 'demo_span_corruption', 'demo_causal_lm'):
    assert name in seqio.TaskRegistry.names()
  assert 'demo_ul2_prefix_lm' in seqio.MixtureRegistry.names()
  assert list(demo_tasks.demo_corpus().files('train')) == [text]


def test_demo_tasks_name_missing_settings(monkeypatch):
  monkeypatch.setenv('GEMMA_ADAPT_DEMO_TRAIN', 'a.txt')
  monkeypatch.setenv('GEMMA_ADAPT_DEMO_VALIDATION', 'b.txt')
  from pipelines import demo_tasks  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv('GEMMA_ADAPT_DEMO_TRAIN')
  with pytest.raises(ValueError, match='GEMMA_ADAPT_DEMO_TRAIN'):
    demo_tasks.demo_corpus()
  monkeypatch.setenv('GEMMA_ADAPT_DEMO_TRAIN', 'a.txt')
  monkeypatch.setenv('GEMMA_ADAPT_DEMO_VALIDATION', 'b.txt')
  monkeypatch.setenv('GEMMA_ADAPT_DEMO_FORMAT', 'csv')
  with pytest.raises(ValueError, match='GEMMA_ADAPT_DEMO_FORMAT'):
    demo_tasks.demo_corpus()


def test_demo_rejects_half_a_corpus(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'pipelines.demo', '--corpus_train=x.txt',
                         f'--work_dir={tmp_path}'], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 2
  assert '--corpus_validation' in proc.stderr
  assert 'Traceback' not in proc.stderr
