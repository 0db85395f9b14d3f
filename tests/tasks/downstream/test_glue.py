"""GLUE from GLUE's own TSV layouts: both forms of all nine tasks, labels by a declared list,
sentence pairs (labelled parts; separator + truncation that keeps both parts), STS-B regression,
official metrics, and one-line errors naming file and line for bad data."""
import math
import os

import numpy as np
import pytest
import seqio

import downstream_fixtures as fx
from tasks import cli
from tasks import special_tokens
from tasks import vocab as vocab_lib
from tasks.downstream import glue
from tasks.downstream import metrics as metrics_lib
from tasks.downstream import pairs


@pytest.fixture(scope='module')
def vocab_path(tmp_path_factory):
  return fx.write_vocab(str(tmp_path_factory.mktemp('vocab')))


@pytest.fixture(scope='module')
def glue_dir(tmp_path_factory, vocab_path):
  root = fx.write_glue(str(tmp_path_factory.mktemp('glue')))
  glue.register_glue_tasks(data_dir=root, vocabulary=vocab_path, benchmarks=glue.ALL)
  return root


def _rows(path, header=True):
  lines = open(path, encoding='utf-8').read().splitlines()
  return [l.split('\t') for l in lines[1 if header else 0:]]


def _examples(task, split, lengths):
  return list(seqio.get_mixture_or_task(task).get_dataset(
      lengths, split=split, shuffle=False).as_numpy_iterator())


def test_all_nine_tasks_register_both_forms(glue_dir):
  names = set(seqio.TaskRegistry.names())
  for b in ('cola', 'sst2', 'mrpc', 'qqp', 'mnli', 'mnli_mismatched', 'qnli', 'rte', 'wnli'):
    assert {f'glue_{b}_text_to_text', f'glue_{b}_classification'} <= names
  assert {'glue_stsb_text_to_text', 'glue_stsb_regression'} <= names


def test_text_to_text_labels_each_part_and_maps_string_labels(glue_dir, vocab_path):
  vocab = vocab_lib.get_vocabulary(vocab_path)
  dev = _rows(f'{glue_dir}/MNLI/dev_matched.tsv')
  ex = _examples('glue_mnli_text_to_text', 'validation', {'inputs': 256, 'targets': 32})
  assert len(ex) == len(dev)
  for e, row in zip(ex, dev):
    assert e['inputs_pretokenized'].decode() == f'mnli premise: {row[8]} hypothesis: {row[9]}'
    assert e['targets_pretokenized'].decode() == row[-1]
    assert vocab.decode(e['targets'].tolist()) == row[-1]
  # String labels (RTE) and integer labels (MRPC, WNLI) go through the declared label list.
  rte = _rows(f'{glue_dir}/RTE/train.tsv')
  ex = _examples('glue_rte_text_to_text', 'train', {'inputs': 256, 'targets': 32})
  assert [e['targets_pretokenized'].decode() for e in ex] == [r[3] for r in rte]
  assert ex[0]['inputs_pretokenized'].decode() == f'rte sentence1: {rte[0][1]} sentence2: {rte[0][2]}'
  mrpc = _rows(f'{glue_dir}/MRPC/dev.tsv')
  ex = _examples('glue_mrpc_classification', 'validation', {'inputs': 256})
  assert [int(e['label']) for e in ex] == [int(r[0]) for r in mrpc]
  ex = _examples('glue_mrpc_text_to_text', 'validation', {'inputs': 256, 'targets': 32})
  assert [e['targets_pretokenized'].decode() for e in ex] == [
      ('not_equivalent', 'equivalent')[int(r[0])] for r in mrpc]
  cola = _rows(f'{glue_dir}/CoLA/dev.tsv', header=False)
  ex = _examples('glue_cola_text_to_text', 'validation', {'inputs': 128, 'targets': 32})
  assert [e['inputs_pretokenized'].decode() for e in ex] == [f'cola sentence: {r[3]}' for r in cola]
  mm = _rows(f'{glue_dir}/MNLI/dev_mismatched.tsv')
  for task, split in (('glue_mnli_mismatched_text_to_text', 'validation'),
                      ('glue_mnli_text_to_text', 'validation_mismatched')):
    ex = _examples(task, split, {'inputs': 256, 'targets': 32})
    assert [e['inputs_pretokenized'].decode() for e in ex] == [
        f'mnli premise: {r[8]} hypothesis: {r[9]}' for r in mm]


def test_stsb_is_regression_in_both_forms(glue_dir):
  dev = _rows(f'{glue_dir}/STS-B/dev.tsv')
  ex = _examples('glue_stsb_regression', 'validation', {'inputs': 256})
  assert set(ex[0]) >= {'inputs', 'score'} and 'label' not in ex[0]
  np.testing.assert_allclose([e['score'] for e in ex], [float(r[9]) for r in dev], rtol=1e-6)
  ex = _examples('glue_stsb_text_to_text', 'validation', {'inputs': 256, 'targets': 32})
  # T5: the score rounded to steps of 0.2, one decimal.
  assert [e['targets_pretokenized'].decode() for e in ex] == [
      f'{round(float(r[9]) * 5) / 5:.1f}' for r in dev]
  task = seqio.get_mixture_or_task('glue_stsb_text_to_text')
  assert task.postprocess_fn('3.4') == pytest.approx(3.4)
  scores = {}
  for fn in task.metric_fns:
    scores.update(fn([1.0, 2.0, 3.0, 4.0], [1.1, 1.9, 3.5, 3.9]))
  assert set(scores) == {'pearson_corrcoef', 'spearman_corrcoef'}
  assert scores['spearman_corrcoef'] == pytest.approx(100.0)


def test_encoder_form_separates_and_truncates_pairs_keeping_both_parts(glue_dir, vocab_path):
  vocab = vocab_lib.get_vocabulary(vocab_path)
  sep_piece, sep = special_tokens.pair_separator(vocab_lib.special_tokens(vocab))
  assert sep_piece == vocab_lib.special_tokens(vocab).sentinel_pieces[-1]
  dev = _rows(f'{glue_dir}/RTE/dev.tsv')
  full = _examples('glue_rte_classification', 'validation', {'inputs': 512})
  for e, row in zip(full, dev):
    toks = e['inputs'].tolist()
    assert toks.count(sep) == 1 and toks[-1] == vocab.eos_id
    k = toks.index(sep)
    assert vocab.decode(toks[:k]) == row[1] and vocab.decode(toks[k + 1:-1]) == row[2]
    assert e['pair_truncated'] == 0
    assert e['label'] == ('entailment', 'not_entailment').index(row[3])
  length = 12
  cut = _examples('glue_rte_classification', 'validation', {'inputs': length})
  budget = length - 2
  for e, row in zip(cut, dev):
    la, lb = len(vocab.encode(row[1])), len(vocab.encode(row[2]))
    toks = e['inputs'].tolist()
    k = toks.index(sep)
    ka, kb = k, len(toks) - k - 2
    if la + lb <= budget:
      assert (ka, kb) == (la, lb)
    else:
      # Longest first: the longer part loses tokens until both fit; both keep some.
      assert ka + kb == budget and ka >= 1 and kb >= 1
      assert ka == min(la, max(math.ceil(budget / 2), budget - lb))
      assert toks[:k] == vocab.encode(row[1])[:ka]
    assert e['pair_dropped_first'] == la - ka and e['pair_dropped_second'] == lb - kb
  stats = pairs.truncation_stats('glue_rte_classification', split='validation',
                                 sequence_length={'inputs': length})
  assert stats['examples'] == len(dev)
  assert stats['truncated_pairs'] == sum(int(e['pair_truncated']) for e in cut) > 0
  assert stats['dropped_tokens_second'] == sum(int(e['pair_dropped_second']) for e in cut) > 0
  # The old behaviour (one string, cut from the end) would drop the whole hypothesis.
  assert all(len(e['inputs']) <= length for e in cut)


def test_declared_part_budget(glue_dir, vocab_path):
  glue.register_glue_tasks(data_dir=glue_dir, vocabulary=vocab_path, benchmarks=[glue.RTE],
                           part_budgets={'rte': (3, 20)}, forms=('encoder',))
  try:
    vocab = vocab_lib.get_vocabulary(vocab_path)
    sep = special_tokens.pair_separator(vocab_lib.special_tokens(vocab))[1]
    for e in _examples('glue_rte_classification', 'validation', {'inputs': 64}):
      toks = e['inputs'].tolist()
      assert toks.index(sep) == 3
  finally:
    glue.register_glue_tasks(data_dir=glue_dir, vocabulary=vocab_path, benchmarks=[glue.RTE])


def test_gemma_style_vocabulary_separator_is_an_unused_piece(tmp_path):
  model = fx.write_vocab(str(tmp_path), reserved_pieces=8)
  vocab = vocab_lib.get_vocabulary(model)
  piece, pid = special_tokens.pair_separator(vocab_lib.special_tokens(vocab))
  assert piece == '<unused7>' and vocab.encode(piece) == [pid]


def test_official_metrics_and_glue_table(glue_dir):
  cola = seqio.get_mixture_or_task('glue_cola_classification')
  scores = {}
  for fn in cola.metric_fns:
    scores.update(fn([1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]))
  # MCC by hand: tp=2 tn=2 fp=1 fn=1 -> (4 - 1) / sqrt(3*3*3*3) = 1/3.
  assert scores['matthews_corrcoef'] == pytest.approx(100 / 3)
  assert {fn.__name__ for fn in seqio.get_mixture_or_task('glue_qqp_text_to_text').metric_fns} \
      == {'accuracy', 'f1_score_with_invalid'}
  t2t = seqio.get_mixture_or_task('glue_rte_text_to_text')
  assert [t2t.postprocess_fn(s) for s in ('entailment', 'not_entailment', 'yes')] == [0, 1, -1]
  results = {
      'glue_cola_classification': {'matthews_corrcoef': 40.0, 'accuracy': 70.0},
      'glue_mrpc_classification': {'accuracy': 80.0, 'f1': 90.0},
      'glue_stsb_regression': {'pearson_corrcoef': 88.0, 'spearman_corrcoef': 86.0},
      'glue_mnli_classification': {'accuracy': 80.0},
      'glue_mnli_mismatched_classification': {'accuracy': 82.0},
      'glue_rte_classification': {'accuracy': 60.0},
  }
  s = metrics_lib.glue_scores(results)
  assert s['cola'] == 40.0 and s['mrpc'] == 85.0 and s['stsb'] == 87.0
  assert s['glue_average'] == pytest.approx((40 + 85 + 87 + 81 + 60) / 5)
  table = metrics_lib.glue_table(results)
  lines = table.splitlines()
  assert lines[0].split() == ['task', 'metrics', 'score']
  assert lines[2].startswith('glue_cola_classification') and lines[-1].startswith(
      'GLUE average (5 tasks)') and lines[-1].endswith(f'{s["glue_average"]:.2f}')


@pytest.mark.parametrize('subdir,fname,line_no,content,message', [
    ('RTE', 'dev.tsv', 3, '1\tA b .\tC d .\tmaybe',
     r"RTE/dev.tsv:3: label 'maybe' is not one of \['entailment', 'not_entailment'\]"),
    ('RTE', 'dev.tsv', 2, '0\tA b .\tC d .', r"RTE/dev.tsv:2: missing column 'label'"),
    ('MRPC', 'dev.tsv', 1, 'Quality\t#1 ID\t#2 ID\t#1 String',
     r"MRPC/dev.tsv:1: missing column '#2 String'"),
    ('RTE', 'dev.tsv', 4, '2\t  \tC d .\tentailment',
     r"RTE/dev.tsv:4: empty text in column 'sentence1'"),
    ('STS-B', 'dev.tsv', 2, '\t'.join(['0'] * 7 + ['A .', 'B .', 'high']),
     r"STS-B/dev.tsv:2: score 'high' is not a number"),
])
def test_bad_data_is_one_line_naming_file_and_line(tmp_path, vocab_path, subdir, fname, line_no,
                                                   content, message):
  root = fx.write_glue(str(tmp_path), n_train=4, n_dev=4)
  path = os.path.join(root, subdir, fname)
  lines = open(path).read().splitlines()
  lines[line_no - 1] = content
  open(path, 'w').write('\n'.join(lines) + '\n')
  b = {'RTE': glue.RTE, 'MRPC': glue.MRPC, 'STS-B': glue.STSB}[subdir]
  with pytest.raises(cli.UserError, match=message) as info:
    glue.read_tsv(path, benchmark=b)
  assert '\n' not in str(info.value)
  # Through seqio too, the same one-line error reaches the caller (before any tf.data work).
  names = glue.register_glue_tasks(data_dir=root, vocabulary=vocab_path, benchmarks=[b],
                                   forms=('encoder',))
  try:
    with pytest.raises(cli.UserError, match=message):
      seqio.get_mixture_or_task(names[0]).get_dataset({'inputs': 32}, split='validation',
                                                       shuffle=False)
  finally:
    glue.register_glue_tasks(data_dir=str(tmp_path / 'none'), vocabulary=vocab_path,
                             benchmarks=[b])


def test_importing_the_package_loads_no_tensorflow():
  import subprocess
  import sys
  code = ('import sys, tasks.downstream, tasks.downstream.metrics, tasks.downstream.rows\n'
          "print(sorted(m for m in ('tensorflow', 'seqio', 't5') if m in sys.modules))")
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '[]'
