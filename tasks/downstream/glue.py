"""GLUE: the nine tasks from GLUE's own TSV files, each in the text-to-text and the encoder form.

Files as distributed (`<data_dir>/<subdir>/`), read by header name (CoLA has no header: by position):
  CoLA  train/dev.tsv  source, label, original_label, sentence          (no header)   MCC
  SST-2 train/dev.tsv  sentence, label                                                accuracy
  MRPC  train/dev.tsv  Quality, #1 ID, #2 ID, #1 String, #2 String                  accuracy, F1
  STS-B train/dev.tsv  index, genre, ..., sentence1, sentence2, score   (regression) Pearson, Spearman
  QQP   train/dev.tsv  id, qid1, qid2, question1, question2, is_duplicate             accuracy, F1
  MNLI  train.tsv, dev_matched.tsv, dev_mismatched.tsv  ..., sentence1, sentence2, ..., gold_label
  QNLI  train/dev.tsv  index, question, sentence, label                               accuracy
  RTE   train/dev.tsv  index, sentence1, sentence2, label                             accuracy
  WNLI  train/dev.tsv  index, sentence1, sentence2, label                             accuracy
Labels may be words (`entailment`) or indexes (`0`); both map through the benchmark's declared
label list. Splits: `train`, `validation` (dev; MNLI: matched, plus `validation_matched` and
`validation_mismatched`). `glue_mnli_mismatched_*` evaluates the mismatched dev set as `validation`.

Per benchmark `b`, `register_glue_tasks` registers (see `tasks.downstream.pairs` for the forms):
  glue_<b>_text_to_text   {'inputs': 'rte sentence1: ... sentence2: ...', 'targets': 'entailment'}
  glue_<b>_classification {'inputs': s1 tokens + [SEP] + s2 tokens + EOS, 'label': 1}
  glue_stsb_regression    {'inputs': ..., 'score': 3.8}   (STS-B's encoder form)
"""
import dataclasses
import functools
import os
from typing import Dict, Mapping, Optional, Sequence, Tuple

from tasks.downstream import metrics as metrics_lib
from tasks.downstream import rows

GLUE_DIR_ENV = 'GEMMA_ADAPT_GLUE_DIR'
DEFAULT_GLUE_DIR = os.path.join('~', '.cache', 'gemma_adapt', 'glue')
_TRAIN_DEV = (('train', 'train.tsv'), ('validation', 'dev.tsv'))


@dataclasses.dataclass(frozen=True)
class GlueTsvBenchmark:
  """A GLUE-style TSV benchmark.

  Attributes:
    name: benchmark name used in task names (`rte`).
    subdir: directory under the GLUE data dir (`RTE`).
    columns: header columns the file must have (file order when `has_header=False`).
    text_fields: columns holding the text(s); two make a sentence pair.
    label_field: column with the label (a word from `label_names` or its index; a float score
      when `regression`).
    label_names: class names, by id (the text-to-text targets); empty for regression.
    split_files: split -> file name.
    text_names: how each text is labelled in the text-to-text form (default: the column names).
    has_header: False for CoLA (no header line).
    metrics: metric names (`tasks.downstream.metrics.metric_fns`).
    prefix: text-to-text task prefix (default: `name`).
    regression: the label is a float score (STS-B).
  """
  name: str
  subdir: str
  columns: Tuple[str, ...]
  text_fields: Tuple[str, ...]
  label_field: str
  label_names: Tuple[str, ...]
  split_files: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(_TRAIN_DEV))
  text_names: Tuple[str, ...] = ()
  has_header: bool = True
  metrics: Tuple[str, ...] = ('accuracy',)
  prefix: str = ''
  regression: bool = False

  def __post_init__(self):
    missing = [f for f in self.text_fields + (self.label_field,) if f not in self.columns]
    if missing:
      raise ValueError(f'GlueTsvBenchmark {self.name!r}: fields {missing} are not in columns '
                       f'{self.columns}')
    if not 1 <= len(self.text_fields) <= 2:
      raise ValueError(f'GlueTsvBenchmark {self.name!r}: text_fields must be 1 or 2 columns, got '
                       f'{self.text_fields}')
    if not self.regression and len(self.label_names) < 2:
      raise ValueError(f'GlueTsvBenchmark.label_names needs >= 2 classes, got {self.label_names}')
    if self.text_names and len(self.text_names) != len(self.text_fields):
      raise ValueError(f'GlueTsvBenchmark {self.name!r}: text_names {self.text_names} must match '
                       f'text_fields {self.text_fields}')
    object.__setattr__(self, 'split_files', dict(self.split_files))
    object.__setattr__(self, 'text_names', tuple(self.text_names or self.text_fields))
    object.__setattr__(self, 'prefix', self.prefix or self.name)

  def __hash__(self):
    return hash((self.name, self.subdir, self.columns))


def _pair(name, subdir, text_fields, label_field, label_names, *, columns=None, **kw):
  columns = columns or tuple(text_fields) + (label_field,)
  return GlueTsvBenchmark(name=name, subdir=subdir, columns=tuple(columns),
                          text_fields=tuple(text_fields), label_field=label_field,
                          label_names=tuple(label_names), **kw)


COLA = _pair('cola', 'CoLA', ('sentence',), 'label', ('unacceptable', 'acceptable'),
             columns=('source', 'label', 'original_label', 'sentence'), has_header=False,
             metrics=('mcc', 'accuracy'))
SST2 = _pair('sst2', 'SST-2', ('sentence',), 'label', ('negative', 'positive'),
             metrics=('accuracy', 'f1'))
MRPC = _pair('mrpc', 'MRPC', ('#1 String', '#2 String'), 'Quality',
             ('not_equivalent', 'equivalent'), text_names=('sentence1', 'sentence2'),
             metrics=('accuracy', 'f1'))
STSB = _pair('stsb', 'STS-B', ('sentence1', 'sentence2'), 'score', (), regression=True,
             metrics=('pearson', 'spearman'))
QQP = _pair('qqp', 'QQP', ('question1', 'question2'), 'is_duplicate',
            ('not_duplicate', 'duplicate'), metrics=('accuracy', 'f1'))
_MNLI_LABELS = ('entailment', 'neutral', 'contradiction')
MNLI = _pair('mnli', 'MNLI', ('sentence1', 'sentence2'), 'gold_label', _MNLI_LABELS,
             text_names=('premise', 'hypothesis'),
             split_files={'train': 'train.tsv', 'validation': 'dev_matched.tsv',
                          'validation_matched': 'dev_matched.tsv',
                          'validation_mismatched': 'dev_mismatched.tsv'})
MNLI_MISMATCHED = _pair('mnli_mismatched', 'MNLI', ('sentence1', 'sentence2'), 'gold_label',
                        _MNLI_LABELS, text_names=('premise', 'hypothesis'), prefix='mnli',
                        split_files={'validation': 'dev_mismatched.tsv'})
QNLI = _pair('qnli', 'QNLI', ('question', 'sentence'), 'label', ('entailment', 'not_entailment'))
RTE = _pair('rte', 'RTE', ('sentence1', 'sentence2'), 'label', ('entailment', 'not_entailment'))
WNLI = _pair('wnli', 'WNLI', ('sentence1', 'sentence2'), 'label', ('not_entailment', 'entailment'))

ALL = (COLA, SST2, MRPC, STSB, QQP, MNLI, MNLI_MISMATCHED, QNLI, RTE, WNLI)
BENCHMARKS = {b.name: b for b in ALL}


def default_glue_dir() -> str:
  return os.path.expanduser(os.environ.get(GLUE_DIR_ENV) or DEFAULT_GLUE_DIR)


def read_tsv(path: str, *, benchmark: GlueTsvBenchmark) -> Dict[str, list]:
  """A GLUE TSV file -> {text name: [str], 'label': [int]} (or 'score': [float]), validated.

  Fields are split on tabs only (GLUE's files use no quoting). Errors name the file and line.
  """
  with open(path, encoding='utf-8') as f:
    lines = f.read().split('\n')
  if lines and lines[-1] == '':
    lines.pop()
  start = 0
  if benchmark.has_header:
    if not lines:
      raise rows.DataError(f'{path}:1: empty file (expected a header line)')
    header = lines[0].rstrip('\r').split('\t')
    for c in benchmark.columns:
      if c not in header:
        raise rows.DataError(f'{path}:1: missing column {c!r} (header has {header})')
    index = {c: header.index(c) for c in benchmark.columns}
    start = 1
  else:
    index = {c: i for i, c in enumerate(benchmark.columns)}
  target = 'score' if benchmark.regression else 'label'
  out = {n: [] for n in benchmark.text_names}
  out[target] = []
  needed = max(index[c] for c in benchmark.text_fields + (benchmark.label_field,))
  for n, line in enumerate(lines[start:], start + 1):
    fields = line.rstrip('\r').split('\t')
    if len(fields) <= needed:
      absent = [c for c in benchmark.text_fields + (benchmark.label_field,)
                if index[c] >= len(fields)]
      raise rows.DataError(f'{path}:{n}: missing column {absent[0]!r} ({len(fields)} fields, '
                           f'expected at least {needed + 1})')
    for column, name in zip(benchmark.text_fields, benchmark.text_names):
      out[name].append(rows.text_value(fields[index[column]], name=column, path=path, line=n))
    value = fields[index[benchmark.label_field]]
    if benchmark.regression:
      out[target].append(rows.float_value(value, name=benchmark.label_field, path=path, line=n))
    else:
      out[target].append(rows.class_id(value, benchmark.label_names, path=path, line=n))
  return out


def table_source(benchmark: GlueTsvBenchmark, data_dir: str) -> rows.TableSource:
  return rows.TableSource(
      split_files={s: os.path.join(data_dir, benchmark.subdir, f)
                   for s, f in benchmark.split_files.items()},
      reader=functools.partial(read_tsv, benchmark=benchmark),
      hint=f'data_dir={data_dir!r}; set data_dir= or ${GLUE_DIR_ENV}', label='GLUE')


def register_glue_tasks(data_dir: Optional[str] = None, vocabulary=None,
                        benchmarks: Sequence[GlueTsvBenchmark] = (SST2,),
                        overwrite: bool = True,
                        part_budgets: Optional[Mapping[str, Tuple[int, int]]] = None,
                        forms: Sequence[str] = ('text_to_text', 'encoder')) -> Tuple[str, ...]:
  """Registers `glue_<b>_text_to_text` and `glue_<b>_classification` (STS-B: `_regression`) per
  benchmark (`benchmarks=glue.ALL` for all of GLUE); reads no file until a task is used.

  `part_budgets`: {benchmark name: (first part tokens, second part tokens)} for pair tasks'
  encoder form; without one, pairs are cut longest-first to the inputs length.
  """
  from t5.data import postprocessors as t5_post  # pylint: disable=g-import-not-at-top
  from tasks import pretraining  # pylint: disable=g-import-not-at-top
  from tasks.downstream import pairs  # pylint: disable=g-import-not-at-top
  data_dir = os.path.expanduser(data_dir) if data_dir else default_glue_dir()
  vocabulary = pretraining.as_vocabulary(vocabulary)
  part_budgets = dict(part_budgets or {})
  names = []
  for b in benchmarks:
    source = table_source(b, data_dir).as_seqio()
    if b.regression:
      post = t5_post.string_to_float
    else:
      post = functools.partial(t5_post.string_label_to_class_id, label_classes=list(b.label_names))
    fns = metrics_lib.metric_fns(b.metrics, num_classes=max(2, len(b.label_names)))
    names += pairs.register_forms(
        name=f'glue_{b.name}', source=source, vocabulary=vocabulary, prefix=b.prefix,
        fields=[(n, n) for n in b.text_names], first=(b.text_names[0],),
        second=tuple(b.text_names[1:]), label_names=None if b.regression else b.label_names,
        t2t_postprocess=post, t2t_metrics=fns, encoder_metrics=fns,
        part_budget=part_budgets.get(b.name), overwrite=overwrite, forms=forms,
        encoder_suffix='regression' if b.regression else 'classification')
  return tuple(names)
