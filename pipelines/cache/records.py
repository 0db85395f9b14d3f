"""Random access to a cache without TensorFlow: record indexes, CRC-checked reads, tf.Example decode.

    from pipelines.cache import records
    split = records.CachedSplit('/data/cache/wiki_ul2.in512_tg512', 'train')
    len(split)   # examples in all shards
    split[7]     # {'inputs': int32[<= 512], 'targets': int32[<= 512]}

    records.resolve_cached('/data/cache', 'wiki_ul2_mix', {'inputs': 512, 'targets': 512})
    # -> [(CachedSplit of wiki_ul2.in512_tg512, 0.5), (CachedSplit of wiki_prefix_lm..., 0.5)]

Every shard `<split>.tfrecord-SSSSS-of-NNNNN` has an index `<split>.tfrecord_index-SSSSS-of-NNNNN`
(`pipelines.cache.layout.index_file_name`): `INDEX_MAGIC`, the record count, then one
`(frame offset, payload length)` pair per record, little-endian uint64. The cache job writes it
with the shard (`index_bytes`, from the lengths it wrote: no re-read), and `python -m
pipelines.cache_index` builds it from the shard for caches written before (`build_index`, every
CRC checked). Reads check both CRC32Cs of the record (`tasks.record_formats.read_tfrecord_at`).
Example global index `i` is record `i - offset[s]` of shard `s` (shards in name order).

Errors (`CacheReadError`, a ValueError, one line): a directory without `COMPLETED`, a shard without
its index (naming the command that adds it), an index that does not match its shard, a corrupted
record, a task or mixture not in the cache, a mixture whose tasks were cached at other lengths.
Plain Python + NumPy: no TensorFlow, seqio or Beam.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from pipelines.cache import layout
from pipelines.cache import storage
from tasks import record_formats

_read_varint = record_formats.read_varint  # bound once: called per field on the hot path


class CacheReadError(ValueError):
  """A cache that cannot be read by random access (the message says why and what to run)."""


def index_bytes(lengths: Sequence[int]) -> bytes:
  """The index of a TFRecord file holding records of these payload lengths, in order.

  >>> index_bytes([3, 5])[8:16]   # count
  b'\\x02\\x00\\x00\\x00\\x00\\x00\\x00\\x00'
  """
  lengths = np.asarray(lengths, dtype=np.uint64)
  frames = lengths + np.uint64(16)
  offsets = np.concatenate([np.zeros(1, np.uint64), np.cumsum(frames, dtype=np.uint64)[:-1]]) \
      if len(lengths) else np.zeros(0, np.uint64)
  pairs = np.stack([offsets, lengths], axis=1).astype('<u8')
  return layout.INDEX_MAGIC + struct.pack('<Q', len(lengths)) + pairs.tobytes()


def build_index(shard_path: str) -> bytes:
  """The index of an existing shard, read from its frames (length and payload CRCs checked)."""
  lengths = []
  with open(shard_path, 'rb') as f:
    for offset, length in record_formats.tfrecord_offsets(shard_path):
      record_formats.read_tfrecord_at(f, shard_path, offset - 12, length)
      lengths.append(length)
  return index_bytes(lengths)


def read_index(index_path: str) -> np.ndarray:
  """`[n, 2]` uint64 (frame offset, payload length) of each record."""
  with open(index_path, 'rb') as f:
    return parse_index(f.read(), index_path)


def parse_index(data: bytes, index_path: str) -> np.ndarray:
  """`read_index` of the bytes read from `index_path`."""
  if data[:8] != layout.INDEX_MAGIC or len(data) < 16:
    raise CacheReadError(f'{index_path}: not a record index (bad header); rebuild it with '
                         f'{layout.INDEX_COMMAND}{os.path.dirname(os.path.dirname(index_path))}'
                         ' --overwrite')
  (count,) = struct.unpack('<Q', data[8:16])
  if len(data) != 16 + 16 * count:
    raise CacheReadError(f'{index_path}: truncated record index ({count} records announced)')
  return np.frombuffer(data, dtype='<u8', offset=16).reshape(count, 2)


# ------------------------------------------------------------------------------------------------
# tf.Example -> numpy: a minimal wire-format walk (offsets, no copies) + vectorised varints.


def _varints(buf, boundaries: Optional[np.ndarray] = None):
  """Decodes a run of protobuf varints (a packed repeated int64): uint32 when every value has at
  most 3 bytes (< 2**21, so any integer dtype holds them), else uint64.

  Token ids take 1-3 bytes: that case is ~15 vectorised operations over the values; longer
  varints (ids >= 2**21, negative numbers) take the general per-byte path. With `boundaries`
  (end offsets of the runs joined in `buf`, ascending): also returns the number of values before
  each boundary (each run must end a varint).
  """
  b = np.frombuffer(buf, dtype=np.uint8)
  n = len(b)
  if n and b[-1] >= 0x80:
    raise ValueError('truncated varint')
  ends = np.flatnonzero(b < 0x80)
  counts = None
  if boundaries is not None:
    inner = boundaries[(boundaries > 0) & (boundaries < n)]
    if len(inner) and np.any(b[inner - 1] >= 0x80):
      raise ValueError('truncated varint')
    counts = np.searchsorted(ends, boundaries)
  if len(ends) == n:  # All one byte (or none).
    values = b.astype(np.uint32)
    return values if boundaries is None else (values, counts)
  last = b[ends]
  # b[ends - k] wraps to b[-1] (< 0x80) for the first values: "not a continuation", as wanted.
  p1, p2, p3 = b[ends - 1], b[ends - 2], b[ends - 3]
  two = p1 >> 7                 # 1 where the value has >= 2 bytes
  three = two & (p2 >> 7)       # >= 3 bytes
  if not np.any(three & (p3 >> 7)):
    two32, three32 = two.astype(np.uint32), three.astype(np.uint32)
    shift = np.uint32(7) * (two32 + three32)
    values = ((last.astype(np.uint32) << shift)
              | (((p1 & 0x7F).astype(np.uint32) << (np.uint32(7) * three32)) * two32)
              | ((p2 & 0x7F).astype(np.uint32) * three32))
    return values if boundaries is None else (values, counts)
  starts = np.empty_like(ends)
  starts[0] = 0
  starts[1:] = ends[:-1] + 1
  widths = ends - starts + 1
  if widths.max() > 10:
    raise ValueError('bad varint')
  shift = (np.arange(n) - np.repeat(starts, widths)).astype(np.uint64) * np.uint64(7)
  values = np.add.reduceat((b & 0x7F).astype(np.uint64) << shift, starts)
  return values if boundaries is None else (values, counts)


def _fields(buf: bytes, pos: int, end: int):
  """`(field, wire type, value start, value end)` of the message in `buf[pos:end]` (for wire type
  0 the varint's bytes)."""
  out = []
  while pos < end:
    key = buf[pos]
    pos += 1
    if key & 0x80:  # Field numbers >= 16: a multi-byte key.
      key, pos = _read_varint(buf, pos - 1, end)
    wire = key & 7
    if wire == 2:
      # Lengths under 128 (one byte) are read inline: this loop is the Grain reader's hot path.
      if pos < end and not buf[pos] & 0x80:
        length = buf[pos]
        pos += 1
      else:
        length, pos = _read_varint(buf, pos, end)
      start, pos = pos, pos + length
    elif wire == 0:
      start = pos
      while True:
        if pos >= end:
          raise ValueError('bad varint')
        pos += 1
        if not buf[pos - 1] & 0x80:
          break
    elif wire == 1:
      start, pos = pos, pos + 8
    elif wire == 5:
      start, pos = pos, pos + 4
    else:
      raise ValueError(f'unsupported wire type {wire}')
    if pos > end:
      raise ValueError('field past the end')
    out.append((key >> 3, wire, start, pos))
  return out


def _locate(raw: bytes, dtypes: Mapping[str, str]):
  """Where the wanted features' values lie: `{name: (list kind, [(start, end), ...])}`, kind 3
  (Int64List: packed runs or single varints) or 2 (FloatList: packed or fixed32)."""
  out = {}
  for f1, w1, s1, e1 in _fields(raw, 0, len(raw)):
    if f1 != 1 or w1 != 2:
      continue
    for f2, w2, s2, e2 in _fields(raw, s1, e1):
      if f2 != 1 or w2 != 2:
        continue
      name, value = None, (0, 0)
      for f3, w3, s3, e3 in _fields(raw, s2, e2):
        if f3 == 1 and w3 == 2:
          name = raw[s3:e3].decode('utf-8')
        elif f3 == 2 and w3 == 2:
          value = (s3, e3)
      if name not in dtypes:
        continue
      kind, ranges = 3, []
      for k4, w4, s4, e4 in _fields(raw, *value):
        if w4 != 2 or k4 not in (2, 3):
          continue
        kind = k4
        ranges = [(s5, e5) for f5, w5, s5, e5 in _fields(raw, s4, e4)
                  if f5 == 1 and w5 in ((0, 2) if k4 == 3 else (2, 5))]
      out[name] = (kind, ranges)
  missing = [k for k in dtypes if k not in out]
  if missing:
    raise ValueError(f'tf.Example has no feature {missing[0]!r}')
  return out


class ExampleDecodeError(ValueError):
  """A payload that is not a tf.Example with the wanted features; `position` in the batch."""

  def __init__(self, position: int, message: str):
    super().__init__(message)
    self.position = position


_GROUP_BYTES = 1 << 18  # Varints decoded together: large enough to amortise, small for the cache.


def decode_examples(raws: Sequence[bytes], dtypes: Mapping[str, str]
                    ) -> List[Dict[str, np.ndarray]]:
  """`decode_example` of each payload, with the Int64List varints of ~256 KB of payloads decoded
  in one vectorised pass (the features are views of that pass's array).

  Raises `ExampleDecodeError` (a ValueError) naming the position of the first bad payload.
  """
  located = []
  for i, raw in enumerate(raws):
    try:
      located.append(_locate(raw, dtypes))
    except ValueError as e:
      raise ExampleDecodeError(i, str(e)) from None
  out: List[Dict[str, np.ndarray]] = [{} for _ in raws]
  group: List[Tuple[int, str]] = []   # (example, feature) of the Int64 runs being gathered
  pieces: List[memoryview] = []
  ends: List[int] = []                # per (example, feature): byte end of its runs

  def flush():
    if not group:
      return
    joined = b''.join(pieces)
    try:
      values, counts = _varints(joined, np.asarray(ends, np.int64))
    except ValueError:  # Say which payload: decode each feature's runs on its own.
      start = 0
      for (i, name), stop in zip(group, ends):
        try:
          _varints(joined[start:stop])
        except ValueError as e:
          raise ExampleDecodeError(i, f'feature {name!r}: {e}') from None
        start = stop
      raise
    if values.dtype == np.uint64:  # Two's complement: negative values are 10-byte varints.
      values = values.view(np.int64)
    cast = {}
    start = 0
    for (i, name), stop in zip(group, counts.tolist()):
      dtype = dtypes[name]
      if dtype not in cast:
        cast[dtype] = values.astype(dtype)
      out[i][name] = cast[dtype][start:stop]
      start = stop
    group.clear()
    pieces.clear()
    ends.clear()

  total = 0
  for i, (raw, where) in enumerate(zip(raws, located)):
    view = memoryview(raw)
    for name, (kind, ranges) in where.items():
      if kind == 2:
        packed = b''.join(view[s:e] for s, e in ranges)
        out[i][name] = np.frombuffer(packed, dtype='<f4').astype(dtypes[name])
        continue
      for s, e in ranges:
        pieces.append(view[s:e])
        total += e - s
      group.append((i, name))
      ends.append(total)
    if total >= _GROUP_BYTES:
      flush()
      total = 0
  flush()
  return out


def decode_example(raw: bytes, dtypes: Mapping[str, str]) -> Dict[str, np.ndarray]:
  """The features of a serialized tf.Example as 1-D numpy arrays of `dtypes` (name -> dtype).

  Int64List (packed or not) and FloatList values; features not in `dtypes` are skipped.
  Raises ValueError for a payload that is not a tf.Example with those features.
  """
  return decode_examples([bytes(raw)], dtypes)[0]


# ------------------------------------------------------------------------------------------------
# A cached task's split, by random access.


def _read_json(path: str, files=None):
  files = files or storage.for_path(path)
  return json.loads(files.read_bytes(path).decode('utf-8'))


class CachedSplit:
  """One split of one cached task directory: `len()` examples, `[i]` -> feature dict.

  `task_dir` is a local path or any `etils.epath` URI (gs://...; `pipelines.cache.storage`).
  Picklable (Grain worker processes): file handles are per process, opened on demand; local files
  are read with `os.pread` (safe from several threads).
  """

  def __init__(self, task_dir: str, split: str, files=None):
    self.task_dir = task_dir
    self.split = split
    self._files = files = files or storage.for_path(task_dir)
    if not files.exists(os.path.join(task_dir, layout.COMPLETED)):
      raise CacheReadError(f'{task_dir}: no {layout.COMPLETED} file (the cache job did not '
                           'finish writing it)')
    info_path = os.path.join(task_dir, layout.info_file_name(split))
    if not files.exists(info_path):
      raise CacheReadError(f'{task_dir}: split {split!r} is not cached (no '
                           f'{layout.info_file_name(split)})')
    info = _read_json(info_path, files)
    job_path = os.path.join(task_dir, layout.JOB_INFO)
    self.job_info = _read_json(job_path, files) if files.exists(job_path) else {}
    self.dtypes = {k: v['dtype'] for k, v in info['features'].items()}
    shards = files.glob(task_dir, layout.shard_glob(split))
    if len(shards) != info['num_shards']:
      raise CacheReadError(f'{task_dir}: {len(shards)} shards of split {split!r} found, '
                           f'{layout.info_file_name(split)} says {info["num_shards"]}')
    self.shards = shards
    indexes = []
    for shard in shards:
      index_path = os.path.join(task_dir, layout.index_of_shard(os.path.basename(shard)))
      if not files.exists(index_path):
        raise CacheReadError(
            f'{task_dir}: shard {os.path.basename(shard)} has no record index (a cache written '
            f'before indexes existed); add them with: {layout.INDEX_COMMAND}'
            f'{os.path.dirname(task_dir)}')
      index = parse_index(files.read_bytes(index_path), index_path)
      if len(index):
        end = int(index[-1, 0] + index[-1, 1] + 16)
        size = files.size(shard)
        if end != size:
          raise CacheReadError(f'{index_path}: does not match {os.path.basename(shard)} (ends '
                               f'at byte {end}, the shard has {size}); rebuild '
                               f'with {layout.INDEX_COMMAND}{os.path.dirname(task_dir)} '
                               '--overwrite')
      indexes.append(index)
    self._indexes = indexes
    self._starts = np.cumsum([0] + [len(i) for i in indexes])

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __repr__(self):
    return f'CachedSplit({self.task_dir!r}, {self.split!r}, {len(self)} examples)'

  def raw(self, index: int) -> bytes:
    if not 0 <= index < len(self):
      raise IndexError(f'{self!r}: index {index} out of range')
    shard = int(np.searchsorted(self._starts, index, side='right') - 1)
    offset, length = self._indexes[shard][index - self._starts[shard]]
    path = self.shards[shard]
    offset, length = int(offset), int(length)
    try:
      frame = self._files.read_at(path, offset, 12 + length + 4)
      return record_formats.check_tfrecord_frame(frame, path, offset, length)
    except record_formats.CorruptRecordError as e:
      raise CacheReadError(f'{e} (example {index} of {self.task_dir}); re-run the cache job '
                           'for this task (--overwrite)') from None

  def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
    return self.decode([int(index)], [self.raw(int(index))])[0]

  def decode(self, indices: Sequence[int], raws: Sequence[bytes]) -> List[Dict[str, np.ndarray]]:
    """The examples of payloads `raws` (read from examples `indices`), decoded together."""
    try:
      return decode_examples(raws, self.dtypes)
    except ExampleDecodeError as e:
      raise CacheReadError(f'{self.task_dir}: example {indices[e.position]} is not a valid '
                           f'tf.Example ({e})') from None


def resolve_cached(cache_dir: str, name: str, feature_lengths: Mapping[str, int],
                   split: str = 'train') -> List[Tuple[CachedSplit, float]]:
  """The cached splits (with mixing rates) that `name` at `feature_lengths` means in `cache_dir`.

  `name`: a source task or mixture name (as MIXTURE_OR_TASK_NAME), or a cached name
  (`wiki_ul2.in512_tg512`). A task gives `[(split, 1.0)]`; a mixture its tasks and rates from
  `<mixture>.<lengths>.mixture.json`. The cache's own files say what it holds: no task module is
  imported.
  """
  files = storage.for_path(cache_dir)
  if not files.isdir(cache_dir):
    raise CacheReadError(f'CACHE_DIR {cache_dir!r} is not a directory')
  lengths = dict(feature_lengths)
  cached = layout.cached_task_name(name, lengths)
  for candidate in (cached, name):
    task_dir = layout.task_output_dir(cache_dir, candidate)
    if files.exists(os.path.join(task_dir, layout.JOB_INFO)):
      return [(CachedSplit(task_dir, split, files), 1.0)]
  for candidate in (cached, name):
    path = os.path.join(cache_dir, layout.mixture_file_name(candidate))
    if files.exists(path):
      record = _read_json(path, files)
      out = []
      for task, rate in record['tasks']:
        task_dir = layout.task_output_dir(cache_dir, task)
        if not files.exists(os.path.join(task_dir, layout.COMPLETED)):
          source = task.rsplit('.', 1)[0]
          others = sorted(d for d in files.listdir(cache_dir) if d.startswith(source + '.')
                          and d != task and files.isdir(os.path.join(cache_dir, d)))
          where = (f'cached at other lengths ({", ".join(others)})' if others
                   else 'not (completely) cached')
          raise CacheReadError(f'mixture {name!r}: its task {task!r} is {where} in {cache_dir}; '
                               'cache the mixture\'s tasks at the same lengths')
        out.append((CachedSplit(task_dir, split, files), float(rate)))
      return out
  # Not there at these lengths: say what is.
  prefix = f'{name}.'
  others = sorted(d[:-len(layout.MIXTURE_SUFFIX)] if d.endswith(layout.MIXTURE_SUFFIX) else d
                  for d in files.listdir(cache_dir) if d.startswith(prefix))
  if others:
    is_mixture = any(d.endswith(layout.MIXTURE_SUFFIX) for d in files.listdir(cache_dir)
                     if d.startswith(prefix))
    kind = 'mixture' if is_mixture else 'task'
    raise CacheReadError(
        f'{kind} {name!r} is cached in {cache_dir} at other lengths ({", ".join(others)}), not '
        f'at {cached[len(prefix):]}: set TASK_FEATURE_LENGTHS to match or cache it at these '
        'lengths')
  known = sorted({d[:-len(layout.MIXTURE_SUFFIX)] if d.endswith(layout.MIXTURE_SUFFIX) else d
                  for d in files.listdir(cache_dir) if not d.startswith('.')})
  raise CacheReadError(f'{name!r} at {cached[len(name) + 1:]} is not in the cache {cache_dir} '
                       f'(it holds: {", ".join(known) or "nothing"})')

