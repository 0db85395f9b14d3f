"""scripts/compare.py: the statistics helpers on known numbers, and the --quick chain end to end at
toy size (one seed, one fine-tuned system plus the stages it needs), then a rerun that reuses every
stage."""
import json
import math
import os
import shutil
import subprocess
import sys
import time

import pytest

from scripts.comparison import bow
from scripts.comparison import corpus
from scripts.comparison import stages
from scripts.comparison import stats

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY = ['--quick', '--seeds', '0', '--only', 'nodropout', '--set', 'corpus_chars=60000',
       'vocab_size=512', 'pretrain_steps=8', 'ft_round_steps=4', 'dev_examples=32',
       'ft_heldout_examples=32', 'ft_train_examples=500', 'bow_train_examples=2000']


def test_mean_ci_is_the_t_interval():
  mean, half = stats.mean_ci([1.0, 2.0, 3.0])
  # sd 1, n 3: t(0.975, df=2) = 4.302653 -> 4.302653 / sqrt(3)
  assert mean == 2.0 and math.isclose(half, 4.302653 / math.sqrt(3), rel_tol=1e-5)
  mean, half = stats.mean_ci([50.0, 52.0, 54.0, 56.0])  # sd 2.582, t(0.975, 3) = 3.182446
  assert math.isclose(half, 3.182446 * math.sqrt(20 / 3) / 2, rel_tol=1e-5)
  assert math.isnan(stats.mean_ci([7.0])[1])
  assert stats.format_ci([1.0, 2.0, 3.0]) == '2.00 +- 2.48'


def test_tokens_to_reach_interpolates():
  curve = [(100, 5.0), (200, 3.0), (300, 2.0)]
  assert stats.tokens_to_reach(curve, 4.0) == 150.0
  assert stats.tokens_to_reach(curve, 5.5) == 100.0
  assert stats.tokens_to_reach(curve, 1.0) is None


def test_paired_effects_verdicts_on_known_numbers():
  from scripts.comparison import report
  per_system = {'ad': {0: 3.0, 1: 3.1, 2: 2.9}, 'sc': {0: 3.5, 1: 3.6, 2: 3.5},
                'ca': {0: 2.5, 1: 2.6, 2: 2.4}, 'no': {0: 3.1, 1: 2.9, 2: 3.0}}
  effects = (('lower than scratch', 'ad', 'sc', -1), ('lower than causal', 'ad', 'ca', -1),
             ('noise', 'ad', 'no', -1), ('no prediction', 'sc', 'ad', 0),
             ('missing system', 'ad', 'absent', -1))
  got = {e['name']: e for e in report.paired_effects(per_system, effects)}
  assert 'missing system' not in got
  # a - b per seed: -0.5, -0.5, -0.6 -> mean -0.5333, interval excludes 0 below: reproduced.
  assert got['lower than scratch']['diffs'] == pytest.approx([-0.5, -0.5, -0.6])
  assert got['lower than scratch']['mean'] == pytest.approx(-1.6 / 3)
  assert got['lower than scratch']['verdict'] == 'reproduced'
  assert got['lower than causal']['verdict'] == 'opposite'
  assert got['noise']['verdict'] == 'not resolved'  # diffs -0.1, +0.2, -0.1
  assert got['no prediction']['verdict'] == 'a - b > 0'
  one_seed = report.paired_effects({'a': {0: 1.0}, 'b': {0: 2.0}}, (('x', 'a', 'b', -1),))
  assert one_seed[0]['verdict'] == 'not resolved'


def test_bow_learns_word_polarity():
  train = [('a good film', 1), ('good and fun', 1), ('a dull film', 0), ('dull and bad', 0)] * 5
  assert bow.bow_accuracy(train=train, dev=[('fun film', 1), ('bad film', 0)]) == 100.0


def test_stage_keys_are_relative_to_the_work_dir(tmp_path):
  calls = []

  def chain(workdir):
    store = stages.StageStore(str(workdir), log=lambda m: None)
    pre = store.run('pre', {'steps': 3}, lambda d: calls.append('pre') or {'loss': 1.5})
    ft = store.run('ft', {'init': pre['dir'], 'lengths': {'inputs': [pre['dir'], 8]}},
                   lambda d: calls.append('ft') or {'acc': 80.0})
    return store, pre, ft

  _, pre, ft = chain(tmp_path / 'a')
  assert calls == ['pre', 'ft'] and os.path.basename(pre['dir']).startswith('pre-')
  shutil.move(str(tmp_path / 'a'), str(tmp_path / 'b'))
  store, pre2, ft2 = chain(tmp_path / 'b')
  assert calls == ['pre', 'ft'] and pre2['reused'] and ft2['reused']  # nothing ran again
  assert os.path.basename(ft2['dir']) == os.path.basename(ft['dir'])
  assert ft2['dir'].startswith(str(tmp_path / 'b'))
  # A path outside the work dir stays in the key as it is; another setting gives another stage.
  assert not store.done('ft', {'init': '/elsewhere/' + os.path.basename(pre2['dir'])})
  assert not store.done('pre', {'steps': 4})


def _copy_data(src, dst):
  """The files the comparison reads from a --data_dir, copied to `dst` (returned)."""
  for rel in corpus.DATA_FILES.values():
    (dst / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(os.path.join(src, rel), dst / rel)
  return dst


def test_data_fingerprint_follows_the_bytes_not_the_path(tmp_path, shared_data):
  from tasks import cli
  copy = _copy_data(shared_data, tmp_path / 'copy')
  first = corpus.data_fingerprint(str(shared_data))
  assert corpus.data_fingerprint(str(copy)) == first
  dev = copy / corpus.DATA_FILES['sst2-dev']
  dev.write_text(dev.read_text() + 'an added sentence\t1\n')
  edited = corpus.data_fingerprint(str(copy))
  assert edited != first
  dev.unlink()
  assert corpus.data_fingerprint(str(copy)) not in (first, edited)
  with pytest.raises(cli.UserError, match=r'--data_dir=.*copy: missing \[.*dev.tsv'):
    corpus.sst2_splits(out_dir=str(tmp_path / 'out'), data_dir=str(copy), heldout_examples=5,
                       train_examples=0)


def _run(workdir, shared_data):
  md = os.path.join(workdir, 'page.md')
  start = time.time()
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'scripts', 'compare.py'), f'--workdir={workdir}',
       f'--data_dir={shared_data}', f'--markdown={md}', *TOY],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout, time.time() - start, md


def test_quick_chain_then_rerun_reuses_stages(tmp_path, shared_data):
  workdir = str(tmp_path / 'cmp')
  out, first, md = _run(workdir, shared_data)
  assert 'reused 0 stage(s)' in out
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  names = [s['name'] for s in summary['stages']]
  for stage in ('corpus', 'vocab', 'cache_causal_lm', 'cache_prefix_lm_ul2', 'cache_sst2',
                'pretrain', 'ft_encoder_mean_nodropout_s0', 'bow'):
    assert stage in names
  # The LM and SST-2 data came from the Beam caches (seqio layout, COMPLETED); SST-2 in both forms
  # (the classifier's scalar 'label' included) and all three splits.
  cached = os.listdir(os.path.join(workdir, 'cache'))
  for prefix in ('demo_causal_lm.', 'glue_sst2cmp_text_to_text.in48_tg8',
                 'glue_sst2cmp_classification.in48'):
    name = next((n for n in cached if n.startswith(prefix)), None)
    assert name and os.path.isfile(os.path.join(workdir, 'cache', name, 'COMPLETED')), cached
  sst2_cache = os.listdir(os.path.join(workdir, 'cache', 'glue_sst2cmp_classification.in48'))
  for split in ('train', 'heldout', 'validation'):
    assert f'info.{split}.json' in sst2_cache, sst2_cache
  row = summary['finetune']['encoder_mean_nodropout']
  acc = row['accuracy']['0']
  assert 0.0 <= acc <= 100.0 and row['inference_flops'] > 0
  rounds = [r for r in json.load(open(os.path.join(
      [s['dir'] for s in summary['stages'] if s['name'] == 'ft_encoder_mean_nodropout_s0'][0],
      'DONE.json')))['result']['rounds']]
  # Early stopping: the reported accuracy is the dev accuracy of the best held-out round.
  best = max(rounds, key=lambda r: r['heldout_accuracy'])
  assert acc == best['dev_accuracy']
  assert summary['bow']['dev_examples'] == 32
  # The fine-tune ran in a worker process pinned to one core (--jobs default: one per core); its
  # output is in the stage's log file, and its settings record the single core.
  assert 'stage ft_encoder_mean_nodropout_s0: running in a worker' in out
  assert 'heldout/accuracy' in open(os.path.join(workdir, 'logs',
                                                 'ft_encoder_mean_nodropout_s0.log')).read()
  ft_dir, = [s['dir'] for s in summary['stages'] if s['name'] == 'ft_encoder_mean_nodropout_s0']
  assert json.load(open(os.path.join(ft_dir, 'DONE.json')))['settings']['cores'] == 1
  page = open(md).read()
  assert f'| {row["label"]} | {acc:.2f} (1 seed, no CI) | 1 |' in page
  assert f"| bag-of-words logistic regression (reference) | {summary['bow']['accuracy']:.2f} |" in page
  last = rounds[-1]['step']
  assert row['last_step']['0'] == last and last <= 20  # QUICK: 2 rounds of 10 steps
  assert f"{row['stopped_at']['0']} ({last})" in page
  assert 'fine-tuning runs ended by early stopping' in page
  for stage in names:
    assert f'| {stage} |' in page
  assert os.path.getsize(os.path.join(workdir, 'comparison.png')) > 1000

  # The rerun reuses every stage, also from a moved work directory reading a copy of the data
  # (stage keys hold neither absolute path: stages.py, corpus.data_fingerprint).
  moved, data_copy = str(tmp_path / 'moved'), tmp_path / 'data_copy'
  shutil.move(workdir, moved)
  _copy_data(shared_data, data_copy)
  workdir = moved
  out2, second, _ = _run(workdir, data_copy)
  assert f'reused {len(names)} stage(s)' in out2 and 'ran 0 stage(s)' in out2, out2[-2000:]
  with open(os.path.join(workdir, 'summary.json')) as f:
    again = json.load(f)
  assert again['finetune'] == summary['finetune'] and again['bow'] == summary['bow']
  assert second < first / 2, (first, second)


def test_bad_setting_is_one_line_error(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'scripts', 'compare.py'),
       f'--workdir={tmp_path}', '--quick', '--set', 'pretrain_steps=ten'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "compare: --set 'pretrain_steps=ten': 'ten' is not a int"]


def test_corpus_with_every_source(tmp_path, shared_data):
  from scripts import compare
  from scripts.comparison import corpus
  from tasks import cli
  splits = corpus.sst2_splits(out_dir=str(tmp_path / 'sst2'), data_dir=str(shared_data),
                              heldout_examples=50, train_examples=0)
  sst2 = tmp_path / 'sst2' / 'SST-2'
  fit = [r.split('\t')[0] for r in (sst2 / 'train_fit.tsv').read_text().splitlines()[1:]]
  held = [r.split('\t')[0] for r in (sst2 / 'train_heldout.tsv').read_text().splitlines()[1:]]
  settings = compare.override(compare.DEFAULT, [f'corpus_sources={",".join(corpus.SOURCES)}'])
  assert settings.corpus_sources == corpus.SOURCES
  out = corpus.build_corpus(out_dir=str(tmp_path / 'corpus'), data_dir=str(shared_data),
                            sources=settings.corpus_sources[::-1], max_chars=0,
                            heldout_fraction=0.02, sst2_train=str(sst2 / 'train_fit.tsv'))
  assert list(out['sources']) == list(corpus.SOURCES)  # SOURCES' order, whatever the order given
  assert out['sources']['sst2-train-sentences']['paragraphs'] == len(fit)
  assert out['sources']['docstrings']['chars'] > 500_000
  paragraphs = set((tmp_path / 'corpus' / 'train.txt').read_text().split('\n\n')) | set(
      (tmp_path / 'corpus' / 'validation.txt').read_text().split('\n\n'))
  # Fine-tuning's training sentences are in, without their labels; its held-out slice is not.
  assert {s.strip() for s in fit} <= {p.strip() for p in paragraphs}
  assert not {s.strip() for s in held if s.strip() not in set(fit)} & paragraphs
  assert not any(p.endswith(('\t0', '\t1')) for p in paragraphs)
  assert splits['train_fit'] == len(fit)
  with pytest.raises(cli.UserError, match=r"corpus_sources=pydoc,news: .*unknown: \['news'\]"):
    corpus.build_corpus(out_dir=str(tmp_path / 'bad'), data_dir=str(shared_data),
                        sources=('pydoc', 'news'), max_chars=0, heldout_fraction=0.02)


def test_default_leaves_out_the_extra_systems(tmp_path, shared_data):
  from scripts import compare
  from tasks import cli

  def planned(settings, only=None):
    c = compare.Comparison(workdir=str(tmp_path / 'w'), data_dir=str(shared_data),
                           settings=settings, seeds=[0], only=only)
    return c.lm_keys(), c.ft_keys(), list(c.ft_systems())

  lm, ft, every_ft = planned(compare.DEFAULT)
  # The causal-prefix decoder-only (LM stage and fine-tune) and the from-scratch fine-tune are
  # left out; the from-scratch LM stage stays (adaptation vs scratch on held-out loss).
  assert lm == [k for k in compare.LM_SYSTEMS if k != 'dec_causal']
  assert 'ed_scratch' in lm and 'dec_bidir' in lm
  assert ft == [k for k in every_ft if k not in ('decoder_only_causal', 'encdec_scratch')]
  assert len(ft) == 10
  # `--set skip_systems=` (empty) runs every system; --quick (the test chain) runs every system.
  every = compare.override(compare.DEFAULT, ['skip_systems='])
  assert every.skip_systems == () and compare.QUICK.skip_systems == ()
  lm, ft, every_ft = planned(every)
  assert lm == list(compare.LM_SYSTEMS) and ft == every_ft
  # --only selects among the systems left: the skipped stay out, and an LM stage runs for the
  # fine-tunes that need it.
  assert planned(compare.DEFAULT, only=['decoder_only'])[:2] == (['dec_bidir'], ['decoder_only'])
  assert planned(every, only=['decoder_only'])[:2] == (
      ['dec_bidir', 'dec_causal'], ['decoder_only', 'decoder_only_causal'])
  with pytest.raises(cli.UserError, match=r"^--set skip_systems=encdec_scratch,gpt: unknown "
                                          r"system\(s\) \['gpt'\]; known: \["):
    planned(compare.override(compare.DEFAULT, ['skip_systems=encdec_scratch,gpt']))
