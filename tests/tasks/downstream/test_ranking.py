"""MS MARCO-style ranking from the passage-ranking TSV layout: training groups of positives plus
seeded sampled negatives, the candidate set for evaluation, MRR@10 / Recall@k."""
import os

import pytest
import seqio

import downstream_fixtures as fx
from tasks import cli
from tasks.downstream import metrics as metrics_lib
from tasks.downstream import ranking


@pytest.fixture(scope='module')
def vocab_path(tmp_path_factory):
  return fx.write_vocab(str(tmp_path_factory.mktemp('vocab')))


def _table(path):
  return [l.split('\t') for l in open(path).read().splitlines()]


def test_train_groups_and_candidate_set(tmp_path, vocab_path):
  root = fx.write_msmarco(str(tmp_path))
  texts = {int(p): t for p, t in _table(f'{root}/collection.tsv')}
  queries = {int(q): t for q, t in _table(f'{root}/queries.train.tsv')}
  rel = {}
  for q, _, p, _ in _table(f'{root}/qrels.train.tsv'):
    rel.setdefault(int(q), set()).add(int(p))
  cols = ranking.build_split(data_dir=root, files=ranking.DEFAULT_SPLITS['train'],
                             collection='collection.tsv', train=True, num_negatives=3, seed=5)
  again = ranking.build_split(data_dir=root, files=ranking.DEFAULT_SPLITS['train'],
                              collection='collection.tsv', train=True, num_negatives=3, seed=5)
  other = ranking.build_split(data_dir=root, files=ranking.DEFAULT_SPLITS['train'],
                              collection='collection.tsv', train=True, num_negatives=3, seed=6)
  assert cols == again and cols['passage'] != other['passage']
  by_passage = {t: p for p, t in texts.items()}
  seen = []
  for i, qid in enumerate(cols['query_id']):
    if not seen or seen[-1] != qid:
      seen.append(qid)
    pid = by_passage[cols['passage'][i]]
    assert cols['query'][i] == queries[qid]
    assert cols['label'][i] == (1 if pid in rel[qid] else 0)
  # Groups are consecutive: each query once, one group of a positive + 3 negatives per positive.
  assert len(seen) == len(set(seen)) and set(seen) == set(rel)
  assert any(len(r) > 1 for r in rel.values())
  for qid in rel:
    labels = [l for q, l in zip(cols['query_id'], cols['label']) if q == qid]
    assert labels == ([1] + [0] * 3) * len(rel[qid])

  cols = ranking.build_split(data_dir=root, files=ranking.DEFAULT_SPLITS['validation'],
                             collection='collection.tsv', train=False, num_negatives=0, seed=0)
  top = _table(f'{root}/top1000.dev.tsv')
  assert cols['query_id'] == [int(r[0]) for r in top]
  assert cols['passage'] == [r[3] for r in top]
  dev_rel = {(int(q), int(p)) for q, _, p, _ in _table(f'{root}/qrels.dev.tsv')}
  assert cols['label'] == [int((int(r[0]), int(r[1])) in dev_rel) for r in top]

  names = ranking.register_ranking_tasks(data_dir=root, vocabulary=vocab_path, num_negatives=3)
  assert names == ('msmarco_passage_ranking',)
  ex = list(seqio.get_mixture_or_task(names[0]).get_dataset(
      {'inputs': 48}, split='validation', shuffle=False).as_numpy_iterator())
  assert [int(e['query_id']) for e in ex] == [int(r[0]) for r in top]
  assert all(len(e['inputs']) <= 48 for e in ex)


def test_mrr_and_recall():
  qids = [1, 1, 1, 2, 2, 2, 3, 3]
  scores = [0.9, 0.5, 0.1, 0.2, 0.8, 0.3, 0.4, 0.6]
  labels = [0, 1, 1, 1, 0, 0, 0, 0]
  assert metrics_lib.recall_at_k(qids, scores, labels, k=1) == 0.0
  # q1: relevant at ranks 2 and 3; q2: relevant at rank 3; q3 has none (skipped).
  assert metrics_lib.recall_at_k(qids, scores, labels, k=2) == pytest.approx((0.5 + 0) / 2)
  assert metrics_lib.recall_at_k(qids, scores, labels, k=3) == pytest.approx(1.0)


def test_bad_files_are_one_line_errors(tmp_path):
  root = fx.write_msmarco(str(tmp_path))
  with open(f'{root}/qrels.train.tsv', 'a') as f:
    f.write('100\t0\tx7000\t1\n')
  n = len(open(f'{root}/qrels.train.tsv').read().splitlines())
  with pytest.raises(cli.UserError, match=rf"qrels.train.tsv:{n}: pid 'x7000' is not an integer"):
    ranking.build_split(data_dir=root, files=ranking.DEFAULT_SPLITS['train'],
                        collection='collection.tsv', train=True, num_negatives=1, seed=0)
  with open(f'{root}/queries.dev.tsv', 'a') as f:
    f.write('5555\n')
  n = len(open(f'{root}/queries.dev.tsv').read().splitlines())
  with pytest.raises(cli.UserError, match=rf"queries.dev.tsv:{n}: missing column 'query'"):
    ranking.read_queries(os.path.join(root, 'queries.dev.tsv'))
