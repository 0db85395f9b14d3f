"""seqio's packing and padding in NumPy, planned per chunk and written out a few rows at a time.

Packing follows seqio's `trim_and_pack_dataset` (without custom ops) exactly:
  * packing never crosses a chunk (`converter.chunk_size` consecutive examples);
  * within a chunk, greedily: each feature is trimmed to its length and then to its count of
    non-zero values; an example that does not fit every feature of the current row closes it;
    the last row of a chunk is closed at the chunk's end;
  * `<f>_positions` restart at 0 per example; `<f>_segment_ids` = cumsum(positions == 0) *
    (tokens != 0).

`plan_packing(examples, lengths)` does the greedy pass (one Python step per example) and keeps
each example's trimmed values once, concatenated per feature: a `PackedChunk`, about the size of
its examples, picklable as a few flat arrays. `chunk.rows(start, stop)` writes rows [start, stop)
as `[rows, length]` int32 arrays, one slice copy per example and feature. The Grain loader plans a
chunk in its reader (thread or worker process) and writes a batch's rows when the batch is taken,
so a 4,096-example window is never materialised as whole `[4096, 4096]` arrays.

    chunk = plan_packing([{'targets': [5, 6, 1]}, {'targets': [7, 1]}], {'targets': 8})
    chunk.num_rows      # 1
    chunk.rows(0, 1)    # {'targets': [[5, 6, 1, 7, 1, 0, 0, 0]],
                        #  'targets_positions':   [[0, 1, 2, 0, 1, 0, 0, 0]],
                        #  'targets_segment_ids': [[1, 1, 1, 2, 2, 0, 0, 0]]}

`Fill(value, n)` stands for a feature of n equal values (PrefixLM's per-token prefix widths): it
is trimmed and written like `[value] * n`, without building that array per example.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

Example = Mapping[str, np.ndarray]
Rows = Dict[str, np.ndarray]


class Fill:
  """A feature of `n` equal values, `[value] * n`, kept unexpanded until it is written."""
  __slots__ = ('value', 'n')

  def __init__(self, value: int, n: int):
    self.value = int(value)
    self.n = int(n)

  def __len__(self):
    return self.n

  def __array__(self, dtype=None, copy=None):
    return np.full(self.n, self.value, dtype or np.int32)


def _trimmed(value, length: int):
  """Packing's trim of one feature: to `length`, then to its count of non-zero values.
  Returns (int32 values or a Fill's value, kept length)."""
  if isinstance(value, Fill):
    return value.value, (min(value.n, length) if value.value else 0)
  v = np.asarray(value)[:length]
  if v.dtype != np.int32:
    v = v.astype(np.int32)
  n = int(np.count_nonzero(v))
  return v[:n], n


class PackedChunk:
  """One chunk's packing: where each example goes and its kept values (see the module doc)."""

  def __init__(self, keys, limits, positions_of, data, starts, fills, lens, cols, row_start):
    self.keys = keys                  # feature names
    self.limits = limits              # packed length per feature
    self.positions_of = positions_of  # features that get `_positions` / `_segment_ids`
    self.data = data                  # per feature: the kept values of all examples, int32
    self.starts = starts              # per feature: each example's offset in data (None: Fill)
    self.fills = fills                # per feature: each example's Fill value (or None)
    self.lens = lens                  # per feature: each example's kept length
    self.cols = cols                  # per feature: each example's first column in its row
    self.row_start = row_start        # first example of each row, and the end: len = rows + 1

  @property
  def num_rows(self) -> int:
    return len(self.row_start) - 1

  def as_tree(self) -> dict:
    """The chunk as a dict of arrays (Grain's worker processes pass those through shared memory;
    other objects are pickled): `chunk_from_tree` undoes it."""
    ints = lambda v: None if v is None else np.asarray(v, np.int64)  # noqa: E731
    return {'packed': {'keys': list(self.keys), 'limits': list(self.limits),
                       'positions_of': sorted(self.positions_of), 'data': list(self.data),
                       'starts': [ints(v) for v in self.starts],
                       'fills': [ints(v) for v in self.fills],
                       'lens': [ints(v) for v in self.lens], 'cols': [ints(v) for v in self.cols],
                       'row_start': ints(self.row_start)}}

  def rows(self, start: int = 0, stop: Optional[int] = None) -> Rows:
    """Rows [start, stop) as `[stop - start, length]` int32 arrays."""
    stop = self.num_rows if stop is None else stop
    count = stop - start
    arange = np.arange(max(self.limits), dtype=np.int32)
    out = {}
    for j, k in enumerate(self.keys):
      length = self.limits[j]
      tokens = np.zeros((count, length), np.int32)
      with_pos = k in self.positions_of
      if with_pos:
        positions = np.zeros((count, length), np.int32)
        segments = np.zeros((count, length), np.int32)
      data, starts, fills = self.data[j], self.starts[j], self.fills[j]
      lens, cols = self.lens[j], self.cols[j]
      for r in range(count):
        segment = 0
        for i in range(self.row_start[start + r], self.row_start[start + r + 1]):
          n = lens[i]
          if not n:
            continue
          c = cols[i]
          if starts is None:
            tokens[r, c:c + n] = fills[i]
          else:
            s = starts[i]
            tokens[r, c:c + n] = data[s:s + n]
          if with_pos:
            segment += 1
            positions[r, c:c + n] = arange[:n]
            segments[r, c:c + n] = segment
      out[k] = tokens
      if with_pos:
        # seqio: cumsum(positions == 0) * (tokens != 0): a zero token is in no segment.
        segments *= tokens != 0
        out[f'{k}_positions'] = positions
        out[f'{k}_segment_ids'] = segments
    return out


def plan_packing(examples: Sequence[Example], lengths: Mapping[str, int],
                 positions_of: Optional[Sequence[str]] = None) -> PackedChunk:
  """The greedy packing of one chunk (see the module doc); `positions_of`: default all."""
  keys = list(lengths)
  limits = [int(lengths[k]) for k in keys]
  kept: List[List] = [[] for _ in keys]
  lens: List[List[int]] = [[] for _ in keys]
  cols: List[List[int]] = [[] for _ in keys]
  row_start = [0]
  used = [0] * len(keys)
  for i, ex in enumerate(examples):
    parts = [_trimmed(ex[k], limit) for k, limit in zip(keys, limits)]
    if any(u + n > limit for u, (_, n), limit in zip(used, parts, limits)):
      row_start.append(i)
      used = [0] * len(keys)
    for j, (value, n) in enumerate(parts):
      kept[j].append(value)
      lens[j].append(n)
      cols[j].append(used[j])
      used[j] += n
  row_start.append(len(examples))
  data, starts, fills = [], [], []
  for j in range(len(keys)):
    if kept[j] and not any(isinstance(v, np.ndarray) for v in kept[j]):  # All Fills.
      data.append(None)
      starts.append(None)
      fills.append(kept[j])
    else:
      kept[j] = [v if isinstance(v, np.ndarray) else np.full(n, v, np.int32)
                 for v, n in zip(kept[j], lens[j])]
      offsets = np.cumsum([0] + lens[j][:-1]).tolist() if lens[j] else []
      data.append(np.concatenate(kept[j]) if kept[j] else np.zeros(0, np.int32))
      starts.append(offsets)
      fills.append(None)
  return PackedChunk(keys, limits, set(keys if positions_of is None else positions_of), data,
                     starts, fills, lens, cols, row_start)


class PaddedChunk:
  """Unpacked examples, each trimmed and zero-padded (seqio's `trim_and_pad_dataset`): one row
  per example, with the same `num_rows` / `rows(start, stop)` as `PackedChunk`."""

  def __init__(self, examples: Sequence[Example], lengths: Mapping[str, int]):
    padded = [trim_and_pad(ex, lengths) for ex in examples]
    self._rows = {k: np.stack([r[k] for r in padded]) for k in lengths} if padded else {}

  @property
  def num_rows(self) -> int:
    return len(next(iter(self._rows.values())))

  def as_tree(self) -> dict:
    return {'padded': dict(self._rows)}

  def rows(self, start: int = 0, stop: Optional[int] = None) -> Rows:
    return {k: v[start:stop].copy() for k, v in self._rows.items()}


def chunk_from_tree(tree: dict):
  """The `PackedChunk` or `PaddedChunk` whose `as_tree()` this is."""
  if 'padded' in tree:
    chunk = PaddedChunk([], {})
    chunk._rows = dict(tree['padded'])  # pylint: disable=protected-access
    return chunk
  t = tree['packed']
  lists = lambda v: None if v is None else v.tolist()  # noqa: E731  (fast Python indexing)
  return PackedChunk(list(t['keys']), list(t['limits']), set(t['positions_of']), list(t['data']),
                     [lists(v) for v in t['starts']], [lists(v) for v in t['fills']],
                     [lists(v) for v in t['lens']], [lists(v) for v in t['cols']],
                     lists(t['row_start']))


def trim_and_pad(example: Example, lengths: Mapping[str, int]) -> Rows:
  """seqio's `trim_and_pad_dataset` on one example (features in `lengths` only)."""
  out = {}
  for k, length in lengths.items():
    v = np.asarray(example[k])[:length]
    out[k] = np.pad(v, (0, length - len(v)))
  return out


def pack(examples: Sequence[Example], lengths: Mapping[str, int],
         positions_of: Optional[Sequence[str]] = None) -> Rows:
  """All rows of one packed chunk: `[rows, length]` arrays `<f>`, `<f>_positions`,
  `<f>_segment_ids` (the latter two for `positions_of`, default all)."""
  return plan_packing(examples, lengths, positions_of).rows()


def concat_rows(parts: Sequence[Rows]) -> Rows:
  """Rows from several chunks, stacked in order."""
  if len(parts) == 1:
    return dict(parts[0])
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
