"""Validated in-memory tables from local files, served as a seqio DataSource.

A downstream benchmark's files are small (GLUE's largest, MNLI train, is ~400k rows), so a split is
read in Python, checked row by row and handed to tf.data as columns. Bad data stops the read with
one line naming the file and the line (`DataError`, a `tasks.cli.UserError`):

  /data/RTE/dev.tsv:7: label 'maybe' is not one of ['entailment', 'not_entailment']
  /data/MRPC/train.tsv:1: missing column '#2 String' (header has ['Quality', '#1 ID', ...])
  /data/CoLA/dev.tsv:12: empty text in column 'sentence'

A reader is `read(path) -> dict of columns` (lists of str / int / float, one entry per example);
`TableSource` maps each split to one or more files and a reader, and caches what it read per
(path, size, mtime) so the train and eval passes of one process read a file once.

Before (`RTE/dev.tsv`, GLUE's layout):
  index\tsentence1\tsentence2\tlabel
  0\tDana Reeve ...\tChristopher Reeve had an accident.\tnot_entailment
After (`TableSource(...).get_dataset('validation')`, one example):
  {'sentence1': b'Dana Reeve ...', 'sentence2': b'Christopher Reeve had an accident.', 'label': 1}
"""
import functools
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

from tasks import cli

Columns = Dict[str, list]
Reader = Callable[[str], Columns]


class DataError(cli.UserError, ValueError):
  """A downstream data file has a bad row: `path:line: what is wrong`."""


def where(path: str, line: int) -> str:
  return f'{path}:{line}'


def class_id(value: str, label_names: Sequence[str], *, path: str, line: int) -> int:
  """A label given as one of `label_names` or as its index ('0', '1', ...) -> the index."""
  v = value.strip()
  if v in label_names:
    return list(label_names).index(v)
  if v.lstrip('-').isdigit() and 0 <= int(v) < len(label_names):
    return int(v)
  raise DataError(f'{where(path, line)}: label {value!r} is not one of {list(label_names)} '
                  f'(or an index 0..{len(label_names) - 1})')


def float_value(value: str, *, name: str, path: str, line: int) -> float:
  try:
    return float(value)
  except ValueError:
    raise DataError(f'{where(path, line)}: {name} {value!r} is not a number') from None


def text_value(value, *, name: str, path: str, line: int) -> str:
  if not isinstance(value, str):
    raise DataError(f'{where(path, line)}: column {name!r} is {type(value).__name__}, not text')
  if not value.strip():
    raise DataError(f'{where(path, line)}: empty text in column {name!r}')
  return value


def _file_key(path: str):
  st = os.stat(path)
  return (path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _read_cached(key, reader: Reader) -> Columns:
  return reader(key[0])


class TableSource:
  """Split -> files, read by `reader` into validated columns; a seqio DataSource (built lazily).

  `TableSource(split_files={'train': '/d/RTE/train.tsv'}, reader=fn).as_seqio()`.
  Missing files raise `FileNotFoundError` naming the file and `hint` when the split is used.
  """

  def __init__(self, *, split_files: Mapping[str, Union[str, Sequence[str]]], reader: Reader,
               hint: str = '', label: str = 'data'):
    self.split_files = {s: (f,) if isinstance(f, str) else tuple(f) for s, f in split_files.items()}
    self.reader = reader
    self.hint = hint
    self.label = label

  def files(self, split: str) -> Sequence[str]:
    if split not in self.split_files:
      raise ValueError(f'no split {split!r} (splits: {sorted(self.split_files)})')
    for path in self.split_files[split]:
      if not os.path.isfile(path):
        raise FileNotFoundError(f'{self.label} file not found: {path}' + (f' ({self.hint})' if self.hint
                                                                   else ''))
    return self.split_files[split]

  def columns(self, split: str) -> Columns:
    out: Optional[Columns] = None
    for path in self.files(split):
      cols = _read_cached(_file_key(path), self.reader)
      if out is None:
        out = {k: list(v) for k, v in cols.items()}
      else:
        for k in out:
          out[k].extend(cols[k])
    return out or {}

  def num_examples(self, split: str) -> int:
    cols = self.columns(split)
    return len(next(iter(cols.values()))) if cols else 0

  def as_seqio(self):
    return _seqio_source(self)


def _seqio_source(table: TableSource):
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  class _Source(seqio.DataSource):
    """seqio face of a TableSource: one shard per file; arbitrary sharding by example."""

    def __init__(self):
      super().__init__(splits=tuple(table.split_files))

    @property
    def supports_arbitrary_sharding(self) -> bool:
      return True

    def list_shards(self, split: str) -> Sequence[str]:
      return list(table.files(split))

    def num_input_examples(self, split: str) -> int:
      return table.num_examples(split)

    def get_dataset(self, split: str = 'train', shuffle: bool = True, seed=None,
                    shard_info=None):
      cols = table.columns(split)
      ds = tf.data.Dataset.from_tensor_slices({k: _tensor(v) for k, v in cols.items()})
      if shard_info and shard_info.num_shards > 1:
        ds = ds.shard(shard_info.num_shards, shard_info.index)
      if shuffle:
        ds = ds.shuffle(max(1, table.num_examples(split)), seed=seed)
      return ds

  def _tensor(values: List):
    if values and isinstance(values[0], float):
      return tf.constant(values, tf.float32)
    if values and isinstance(values[0], int) and not isinstance(values[0], bool):
      return tf.constant(values, tf.int32)
    return tf.constant(values, tf.string)

  return _Source()
