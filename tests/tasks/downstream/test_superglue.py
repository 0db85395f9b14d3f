"""SuperGLUE from its JSONL files (BoolQ, CB, COPA, RTE, WiC, MultiRC): both forms, labels by the
declared lists (words, indexes, JSON booleans), metrics, and one-line errors for bad rows."""
import json
import os

import pytest
import seqio

import downstream_fixtures as fx
from tasks import cli
from tasks import special_tokens
from tasks import vocab as vocab_lib
from tasks.downstream import superglue


@pytest.fixture(scope='module')
def vocab_path(tmp_path_factory):
  return fx.write_vocab(str(tmp_path_factory.mktemp('vocab')))


@pytest.fixture(scope='module')
def sg_dir(tmp_path_factory, vocab_path):
  root = fx.write_superglue(str(tmp_path_factory.mktemp('superglue')))
  names = superglue.register_superglue_tasks(data_dir=root, vocabulary=vocab_path)
  assert len(names) == 12
  return root


def _jsonl(path):
  return [json.loads(l) for l in open(path)]


def _examples(task, lengths, split='validation'):
  return list(seqio.get_mixture_or_task(task).get_dataset(
      lengths, split=split, shuffle=False).as_numpy_iterator())


T2T = {'inputs': 512, 'targets': 32}


def test_boolq_cb_rte_wic_labels_and_formats(sg_dir, vocab_path):
  vocab = vocab_lib.get_vocabulary(vocab_path)
  sep = special_tokens.pair_separator(vocab_lib.special_tokens(vocab))[1]
  rows = _jsonl(f'{sg_dir}/BoolQ/val.jsonl')
  ex = _examples('super_glue_boolq_text_to_text', T2T)
  assert [e['targets_pretokenized'].decode() for e in ex] == [str(r['label']) for r in rows]
  assert ex[0]['inputs_pretokenized'].decode() == (
      f"boolq question: {rows[0]['question']} passage: {rows[0]['passage']}")
  rows = _jsonl(f'{sg_dir}/CB/val.jsonl')
  ex = _examples('super_glue_cb_classification', {'inputs': 256})
  assert [int(e['label']) for e in ex] == [
      ('entailment', 'contradiction', 'neutral').index(r['label']) for r in rows]
  toks = ex[0]['inputs'].tolist()
  assert vocab.decode(toks[:toks.index(sep)]) == rows[0]['premise']
  rows = _jsonl(f'{sg_dir}/WiC/val.jsonl')
  ex = _examples('super_glue_wic_text_to_text', T2T)
  assert ex[1]['inputs_pretokenized'].decode() == (
      f"wic sentence1: {rows[1]['sentence1']} sentence2: {rows[1]['sentence2']} "
      f"word: {rows[1]['word']}")
  rows = _jsonl(f'{sg_dir}/RTE/train.jsonl')
  ex = _examples('super_glue_rte_text_to_text', T2T, split='train')
  assert [e['targets_pretokenized'].decode() for e in ex] == [r['label'] for r in rows]
  cb = seqio.get_mixture_or_task('super_glue_cb_text_to_text')
  scores = {}
  for fn in cb.metric_fns:
    scores.update(fn([0, 1, 2, 0], [0, 1, 1, 0]))
  assert scores['accuracy'] == pytest.approx(75.0)
  assert scores['mean_3class_f1'] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)


def test_copa_both_forms(sg_dir, vocab_path):
  vocab = vocab_lib.get_vocabulary(vocab_path)
  rows = _jsonl(f'{sg_dir}/COPA/val.jsonl')
  ex = _examples('super_glue_copa_text_to_text', T2T)
  r = rows[0]
  assert ex[0]['inputs_pretokenized'].decode() == (
      f"copa choice1: {r['choice1']} choice2: {r['choice2']} premise: {r['premise']} "
      f"question: {r['question']}")
  assert [e['targets_pretokenized'].decode() for e in ex] == [
      ('choice1', 'choice2')[r['label']] for r in rows]
  ex = _examples('super_glue_copa_classification', {'inputs': 512})
  assert vocab.decode(ex[1]['inputs'].tolist()[:-1]).startswith(
      f"{rows[1]['premise']} What was the {rows[1]['question']}?")
  assert [int(e['label']) for e in ex] == [r['label'] for r in rows]


def test_multirc_one_example_per_answer_with_group_metrics(sg_dir):
  rows = _jsonl(f'{sg_dir}/MultiRC/val.jsonl')
  answers = [(q, a) for r in rows for q in r['passage']['questions'] for a in q['answers']]
  ex = _examples('super_glue_multirc_text_to_text', T2T)
  assert len(ex) == len(answers)
  assert [e['targets_pretokenized'].decode() for e in ex] == [
      str(bool(a['label'])) for _, a in answers]
  task = seqio.get_mixture_or_task('super_glue_multirc_text_to_text')
  targets = [task.postprocess_fn(e['targets_pretokenized'].decode(), example=e, is_target=True)
             for e in ex]
  # Predictions: all right except the first answer of the first question.
  preds = [task.postprocess_fn(e['targets_pretokenized'].decode()) for e in ex]
  preds[0] = {'value': 1 - preds[0]['value']}
  scores = {}
  for fn in task.metric_fns:
    scores.update(fn(targets, preds))
  n_questions = len({t['group'] for t in targets})
  assert n_questions == 2 * len(rows)
  assert scores['exact_match'] == pytest.approx(100 * (n_questions - 1) / n_questions)
  assert 0 < scores['f1'] < 100


@pytest.mark.parametrize('name,line,message', [
    ('CB', '{"premise": "A .", "hypothesis": "B .", "label": "maybe", "idx": 0}',
     r"CB/val.jsonl:2: label 'maybe' is not one of \['entailment', 'contradiction', 'neutral'\]"),
    ('BoolQ', '{"question": "a", "label": true, "idx": 0}',
     r"BoolQ/val.jsonl:2: missing field 'passage'"),
    ('RTE', '{"premise": "", "hypothesis": "B .", "label": "entailment", "idx": 0}',
     r"RTE/val.jsonl:2: empty text in column 'premise'"),
    ('COPA', '{"premise": "A .", "choice1": "b", "choice2": "c", "question": "cause", "label": 2}',
     r"COPA/val.jsonl:2: label '2' is not one of"),
    ('WiC', 'not json', r"WiC/val.jsonl:2: not a JSON object"),
])
def test_bad_rows_are_one_line_errors(tmp_path, name, line, message):
  root = fx.write_superglue(str(tmp_path), n_train=3, n_dev=3)
  path = os.path.join(root, name, 'val.jsonl')
  lines = open(path).read().splitlines()
  lines[1] = line
  open(path, 'w').write('\n'.join(lines) + '\n')
  with pytest.raises(cli.UserError, match=message) as info:
    superglue.read_jsonl(path, benchmark=superglue.BENCHMARKS[name.lower()])
  assert '\n' not in str(info.value)
