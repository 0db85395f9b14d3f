"""SuperGLUE from its JSONL files: BoolQ, CB, COPA, RTE, WiC and MultiRC, in both forms.

Files as distributed (`<data_dir>/<subdir>/{train,val}.jsonl`, one JSON object a line). Covered:
  BoolQ   {question, passage, label: true|false}                      accuracy
  CB      {premise, hypothesis, label: entailment|contradiction|neutral}  accuracy, macro F1 (3)
  COPA    {premise, choice1, choice2, question: cause|effect, label: 0|1}  accuracy
  RTE     {premise, hypothesis, label: entailment|not_entailment}     accuracy
  WiC     {word, sentence1, sentence2, label: true|false, start1, ...}  accuracy
  MultiRC {passage: {text, questions: [{question, idx, answers: [{text, label}]}]}}
          one example per answer; text-to-text metrics F1a (over answers) and EM (per question);
          the encoder form gets accuracy and F1a (EM needs the question groups).
Not covered: ReCoRD (its answers are entity spans scored by max-over-answers EM/F1, which needs a
span-extraction or candidate-ranking form these task forms do not have), WSC, AX-b/AX-g.

Task names: `super_glue_<b>_text_to_text` and `super_glue_<b>_classification`; splits `train`
(train.jsonl) and `validation` (val.jsonl). Examples (text-to-text / encoder):
  COPA {'premise': 'My body cast a shadow.', 'choice1': 'The sun was rising.', 'choice2': ...,
        'question': 'cause', 'label': 0}
    -> {'inputs': 'copa choice1: The sun was rising. choice2: ... premise: My body cast a shadow.
        question: cause', 'targets': 'choice1'}
    -> {'inputs': tokens of 'My body cast a shadow. What was the cause?' + [SEP] +
        tokens of 'choice1: The sun was rising. choice2: ...' + EOS, 'label': 0}
"""
import dataclasses
import functools
import json
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

from tasks.downstream import metrics as metrics_lib
from tasks.downstream import rows

SUPERGLUE_DIR_ENV = 'GEMMA_ADAPT_SUPERGLUE_DIR'
DEFAULT_SUPERGLUE_DIR = os.path.join('~', '.cache', 'gemma_adapt', 'superglue')
_BOOL = ('False', 'True')


@dataclasses.dataclass(frozen=True)
class JsonlBenchmark:
  """A SuperGLUE-style JSONL benchmark.

  Attributes:
    name: benchmark name (`cb`), used in task names and as the text-to-text prefix.
    subdir: directory under the data dir (`CB`).
    fields: JSON text fields of an example row, in text-to-text order.
    label_names: class names by id; a label may be one of them, its index, or a JSON bool.
    first, second: fields forming the encoder form's two parts (second empty: one text).
    metrics: metric names (`tasks.downstream.metrics.metric_fns`).
    rows_of: optional function JSON object -> list of flat rows (MultiRC's answers, COPA's
      derived texts); default: the object itself.
  """
  name: str
  subdir: str
  fields: Tuple[str, ...]
  label_names: Tuple[str, ...]
  first: Tuple[str, ...]
  second: Tuple[str, ...] = ()
  metrics: Tuple[str, ...] = ('accuracy',)
  rows_of: Optional[Callable] = None
  split_files: Tuple[Tuple[str, str], ...] = (('train', 'train.jsonl'),
                                              ('validation', 'val.jsonl'))


def _copa_rows(obj):
  q = obj['question']
  return [dict(obj, premise_question=f"{obj['premise']} What was the {q}?",
               choices=f"choice1: {obj['choice1']} choice2: {obj['choice2']}")]


def _multirc_rows(obj):
  out = []
  passage = obj['passage']
  for q in passage['questions']:
    for a in q['answers']:
      out.append({'paragraph': passage['text'], 'question': q['question'], 'answer': a['text'],
                  'label': a['label'], 'group': int(obj.get('idx', 0)) * 1000 + int(q['idx'])})
  return out


BOOLQ = JsonlBenchmark('boolq', 'BoolQ', ('question', 'passage'), _BOOL, ('question',),
                       ('passage',))
CB = JsonlBenchmark('cb', 'CB', ('premise', 'hypothesis'),
                    ('entailment', 'contradiction', 'neutral'), ('premise',), ('hypothesis',),
                    metrics=('accuracy', 'f1_multiclass'))
COPA = JsonlBenchmark('copa', 'COPA', ('choice1', 'choice2', 'premise', 'question'),
                      ('choice1', 'choice2'), ('premise_question',), ('choices',),
                      rows_of=_copa_rows)
RTE = JsonlBenchmark('rte', 'RTE', ('premise', 'hypothesis'), ('entailment', 'not_entailment'),
                     ('premise',), ('hypothesis',))
WIC = JsonlBenchmark('wic', 'WiC', ('sentence1', 'sentence2', 'word'), _BOOL,
                     ('word', 'sentence1'), ('sentence2',))
MULTIRC = JsonlBenchmark('multirc', 'MultiRC', ('question', 'answer', 'paragraph'), _BOOL,
                         ('question', 'answer'), ('paragraph',), metrics=('accuracy', 'f1'),
                         rows_of=_multirc_rows)
ALL = (BOOLQ, CB, COPA, RTE, WIC, MULTIRC)
BENCHMARKS = {b.name: b for b in ALL}


def default_superglue_dir() -> str:
  return os.path.expanduser(os.environ.get(SUPERGLUE_DIR_ENV) or DEFAULT_SUPERGLUE_DIR)


def _label(value, names, *, path, line):
  if isinstance(value, bool):
    value = str(value)
  elif isinstance(value, int):
    value = str(value)
  elif not isinstance(value, str):
    raise rows.DataError(f'{path}:{line}: label {value!r} is not one of {list(names)}')
  return rows.class_id(value, names, path=path, line=line)


def read_jsonl(path: str, *, benchmark: JsonlBenchmark) -> Dict[str, list]:
  """A SuperGLUE JSONL file -> {field: [str], 'label': [int]} (+ 'group' for MultiRC)."""
  text_fields = sorted(set(benchmark.fields + benchmark.first + benchmark.second))
  out = {f: [] for f in text_fields}
  out['label'] = []
  if benchmark.rows_of is _multirc_rows:
    out['group'] = []
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise rows.DataError(f'{path}:{n}: not a JSON object ({e.msg})') from None
      try:
        flat = benchmark.rows_of(obj) if benchmark.rows_of else [obj]
      except (KeyError, TypeError) as e:
        raise rows.DataError(f'{path}:{n}: missing field {e}') from None
      for row in flat:
        for k in list(out):
          if k not in row:
            raise rows.DataError(f'{path}:{n}: missing field {k!r}')
        for k in text_fields:
          out[k].append(rows.text_value(row[k], name=k, path=path, line=n))
        out['label'].append(_label(row['label'], benchmark.label_names, path=path, line=n))
        if 'group' in out:
          out['group'].append(int(row['group']))
  return out


def _postprocess_multirc(output, example=None, is_target=False):
  value = _BOOL.index(output) if output in _BOOL else -1
  if is_target:
    return {'value': value, 'group': int(example['group'])}
  return {'value': value}


def _multirc_metrics():
  from t5.evaluation import metrics as t5_metrics  # pylint: disable=g-import-not-at-top
  return [t5_metrics.multirc_f1_over_all_answers,
          t5_metrics.mean_group_metric(t5_metrics.all_match)]


def register_superglue_tasks(*, data_dir: Optional[str] = None, vocabulary=None,
                             benchmarks: Sequence[JsonlBenchmark] = ALL,
                             overwrite: bool = True,
                             forms: Sequence[str] = ('text_to_text', 'encoder')
                             ) -> Tuple[str, ...]:
  """Registers `super_glue_<b>_text_to_text` / `super_glue_<b>_classification`; no I/O."""
  from t5.data import postprocessors as t5_post  # pylint: disable=g-import-not-at-top
  from tasks import pretraining  # pylint: disable=g-import-not-at-top
  from tasks.downstream import pairs  # pylint: disable=g-import-not-at-top
  data_dir = os.path.expanduser(data_dir) if data_dir else default_superglue_dir()
  vocabulary = pretraining.as_vocabulary(vocabulary)
  names = []
  for b in benchmarks:
    source = rows.TableSource(
        split_files={s: os.path.join(data_dir, b.subdir, f) for s, f in b.split_files},
        reader=functools.partial(read_jsonl, benchmark=b), label='SuperGLUE',
        hint=f'data_dir={data_dir!r}; set data_dir= or ${SUPERGLUE_DIR_ENV}').as_seqio()
    fns = metrics_lib.metric_fns(b.metrics, num_classes=len(b.label_names))
    multirc = b.rows_of is _multirc_rows
    post = (_postprocess_multirc if multirc else functools.partial(
        t5_post.string_label_to_class_id, label_classes=list(b.label_names)))
    names += pairs.register_forms(
        name=f'super_glue_{b.name}', source=source, vocabulary=vocabulary, prefix=b.name,
        fields=[(f, f) for f in b.fields], first=b.first, second=b.second,
        label_names=b.label_names, t2t_postprocess=post,
        t2t_metrics=_multirc_metrics() if multirc else fns, encoder_metrics=fns,
        keep=('group',) if multirc else (), overwrite=overwrite, forms=forms)
  return tuple(names)
