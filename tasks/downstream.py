"""Downstream GLUE-style TSV classification tasks (SST-2 first), in two forms.

For a benchmark `b` (e.g. `sst2`) under `data_dir/<subdir>/{train,dev}.tsv` (GLUE's layout, one
header line), `register_glue_tasks` registers:

- `glue_<b>_text_to_text` (encoder-decoder / decoder):
    before: TSV line `it 's a charming journey .\t1`
    after:  {'inputs': tokens of `sst2 sentence: it 's a charming journey .` + EOS,
             'targets': tokens of `positive` + EOS, plus '*_pretokenized' strings}
  metrics: accuracy and F1 (t5.evaluation.metrics) on label ids; predictions are mapped back to
  ids with t5's `string_label_to_class_id` (-1 for a string that is no label, counted wrong).
- `glue_<b>_classification` (encoder + pooling head):
    after: {'inputs': tokens of the sentence + EOS, 'label': int32} (no '*_pretokenized')
  metrics: accuracy and F1 on integer predictions.

Splits: `train` (train.tsv) and `validation` (dev.tsv). The data directory is a parameter
(default `$GEMMA_ADAPT_GLUE_DIR` or `~/.cache/gemma_adapt/glue`); a missing file raises a clear
error when the task is used.
"""
import dataclasses
import functools
import os
from typing import Mapping, Optional, Sequence, Tuple

import seqio
from t5.data import postprocessors as t5_postprocessors
from t5.data import preprocessors as t5_preprocessors
from t5.evaluation import metrics as t5_metrics
import tensorflow as tf

from tasks import pretraining

GLUE_DIR_ENV = 'GEMMA_ADAPT_GLUE_DIR'
DEFAULT_GLUE_DIR = os.path.join('~', '.cache', 'gemma_adapt', 'glue')


@dataclasses.dataclass(frozen=True)
class GlueTsvBenchmark:
  """A GLUE-style TSV benchmark.

  Attributes:
    name: benchmark name used in task names and as the text-to-text prefix (`sst2`).
    subdir: directory under the GLUE data dir (`SST-2`).
    columns: TSV column names in file order (the header line is skipped).
    text_fields: columns joined (as `name: value`) into the inputs.
    label_field: column with the integer class id.
    label_names: class names, by id (the text-to-text targets).
    split_files: split -> file name.
  """
  name: str
  subdir: str
  columns: Tuple[str, ...]
  text_fields: Tuple[str, ...]
  label_field: str
  label_names: Tuple[str, ...]
  split_files: Mapping[str, str] = dataclasses.field(
      default_factory=lambda: {'train': 'train.tsv', 'validation': 'dev.tsv'})

  def __post_init__(self):
    missing = [f for f in self.text_fields + (self.label_field,) if f not in self.columns]
    if missing:
      raise ValueError(f'GlueTsvBenchmark {self.name!r}: fields {missing} are not in columns '
                       f'{self.columns}')
    if len(self.label_names) < 2:
      raise ValueError(f'GlueTsvBenchmark.label_names needs >= 2 classes, got {self.label_names}')

  def __hash__(self):
    return hash((self.name, self.subdir, self.columns))


SST2 = GlueTsvBenchmark(name='sst2', subdir='SST-2', columns=('sentence', 'label'),
                        text_fields=('sentence',), label_field='label',
                        label_names=('negative', 'positive'))
BENCHMARKS = {'sst2': SST2}


def default_glue_dir() -> str:
  return os.path.expanduser(os.environ.get(GLUE_DIR_ENV) or DEFAULT_GLUE_DIR)


class _TsvSource(seqio.TextLineDataSource):
  """TextLineDataSource (header skipped) whose missing files give an error naming the data dir."""

  def __init__(self, benchmark: GlueTsvBenchmark, data_dir: str):
    self._files = {s: os.path.join(data_dir, benchmark.subdir, f)
                   for s, f in benchmark.split_files.items()}
    self._data_dir = data_dir
    super().__init__(split_to_filepattern=self._files, skip_header_lines=1)

  def list_shards(self, split: str) -> Sequence[str]:
    path = self._files[split]
    if not os.path.isfile(path):
      raise FileNotFoundError(f'GLUE file not found: {path} (data_dir={self._data_dir!r}; set '
                              f'data_dir= or ${GLUE_DIR_ENV})')
    return [path]


@seqio.map_over_dataset
def _label_to_int(x, label_field: str):
  x = dict(x)
  x['label'] = tf.strings.to_number(tf.strings.strip(x.pop(label_field)), tf.int32)
  return x


@seqio.map_over_dataset
def _classification_features(x, text_fields: Sequence[str]):
  """{'sentence': str, 'label': int} -> {'inputs': str, 'label': int} (fields joined by ' ')."""
  return {'inputs': tf.strings.join([x[f] for f in text_fields], separator=' '),
          'label': x['label']}


def _parse(benchmark: GlueTsvBenchmark):
  return [
      functools.partial(t5_preprocessors.parse_tsv, field_names=list(benchmark.columns)),
      functools.partial(_label_to_int, label_field=benchmark.label_field),
  ]


def register_glue_tasks(data_dir: Optional[str] = None, vocabulary=None,
                        benchmarks: Sequence[GlueTsvBenchmark] = (SST2,),
                        overwrite: bool = True) -> Tuple[str, ...]:
  """Registers `glue_<b>_text_to_text` and `glue_<b>_classification` per benchmark; no I/O."""
  data_dir = os.path.expanduser(data_dir) if data_dir else default_glue_dir()
  vocabulary = pretraining.as_vocabulary(vocabulary)
  names = []
  for b in benchmarks:
    source = _TsvSource(b, data_dir)
    label_to_id = functools.partial(t5_postprocessors.string_label_to_class_id,
                                    label_classes=list(b.label_names))
    t2t = f'glue_{b.name}_text_to_text'
    cls = f'glue_{b.name}_classification'
    if overwrite:
      seqio.TaskRegistry.remove(t2t)
      seqio.TaskRegistry.remove(cls)
    seqio.TaskRegistry.add(
        t2t, source=source,
        preprocessors=_parse(b) + [
            functools.partial(t5_preprocessors.glue, benchmark_name=b.name,
                              label_names=list(b.label_names), feature_names=list(b.text_fields),
                              id_key=None),
            seqio.preprocessors.tokenize,
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features={'inputs': seqio.Feature(vocabulary, add_eos=True),
                         'targets': seqio.Feature(vocabulary, add_eos=True)},
        postprocess_fn=label_to_id,
        metric_fns=[t5_metrics.accuracy, t5_metrics.f1_score_with_invalid])
    seqio.TaskRegistry.add(
        cls, source=source,
        preprocessors=_parse(b) + [
            functools.partial(_classification_features, text_fields=list(b.text_fields)),
            functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features={'inputs': seqio.Feature(vocabulary, add_eos=True),
                         'label': seqio.ContinuousFeature(dtype=tf.int32, rank=0)},
        metric_fns=[t5_metrics.accuracy, t5_metrics.f1_score_with_invalid])
    names += [t2t, cls]
  return tuple(names)
