"""Planning for the cache job: configuration, task selection, work units, seeds.

Plain Python (no Beam, no TF at import): the driver plans here, the Beam DoFns in
`pipelines.cache.beam_graph` execute the plan. Everything that decides output bytes (the work units
(input ranges), their seeds and the output shard of each example) is a pure function of the
inputs, the tasks, the feature lengths and `base_seed`, never of the runner or the number of
workers. That is what makes the job's output byte-identical across runners.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import re
from typing import Iterable, Mapping, Optional, Sequence

from tasks import cli

OBJECTIVE_IMPLS = ("numpy", "tf")


class CacheJobError(cli.UserError):
  """An error the user can fix; the entry point prints it as one line (no traceback)."""


@dataclasses.dataclass(frozen=True)
class CacheJobConfig:
  """What to cache and how.

  Attributes:
    tasks: regexes (full match, as seqio's cache_tasks_main) of registered task names.
    output_cache_dir: where cached tasks go (local path or any tf.io.gfile URL, e.g. gs://).
    feature_lengths: feature name -> length of the finished examples, e.g. {'inputs': 512,
      'targets': 512}. Every output feature of a selected task needs a length.
    excluded_tasks: regexes of task names to skip.
    module_import: modules imported (in the driver and in every worker) to register tasks.
    base_seed: seeds of every input range derive from (base_seed, task, split, range).
    overwrite: recompute tasks whose cache is COMPLETED (default: skip them).
    min_shards: minimum number of output shards per split (as seqio's cache_tasks_main).
    max_shards: maximum number of output shards per split; 0 = no maximum.
    input_range_bytes: text/JSONL files are split into byte ranges of at most this size (TFRecord
      files into record ranges of about this many bytes), so parallelism is not capped by the
      number of input files.
    min_input_ranges: split each task split into at least this many input ranges (when its
      files are large enough: a range is never smaller than `min_range_bytes`).
    min_range_bytes: lower bound on the size of an input range.
    max_document_chars: when set, overrides the corpus' limit on document length (longer
      documents go to the dead-letter output with reason 'too_long').
    objective_impl: 'numpy' runs `tasks.objectives` preprocessors as their vectorised NumPy twins
      (same distribution, its own random draws); 'tf' runs them in tf.data, giving exactly
      `task.get_dataset(seed=range seed)` (see `pipelines.cache.unit_processor`).
  """
  tasks: tuple[str, ...]
  output_cache_dir: str
  feature_lengths: tuple[tuple[str, int], ...]
  excluded_tasks: tuple[str, ...] = ()
  module_import: tuple[str, ...] = ()
  base_seed: int = 0
  overwrite: bool = False
  min_shards: int = 16
  max_shards: int = 0
  # A range whose preprocessing runs in tf.data pays a fixed cost to trace the graph, so ranges
  # are large by default; min_input_ranges only matters for small corpora.
  input_range_bytes: int = 8 << 20
  min_input_ranges: int = 4
  min_range_bytes: int = 64 << 10
  max_document_chars: Optional[int] = None
  objective_impl: str = "numpy"

  def __post_init__(self):
    if isinstance(self.feature_lengths, Mapping):
      object.__setattr__(self, "feature_lengths", tuple(sorted(self.feature_lengths.items())))
    for name in ("tasks", "excluded_tasks", "module_import"):
      value = getattr(self, name)
      if isinstance(value, str):
        object.__setattr__(self, name, (value,))
      else:
        object.__setattr__(self, name, tuple(value))
    if not self.tasks:
      raise CacheJobError("tasks: give at least one task name regex (--tasks=REGEX)")
    for pattern in self.tasks + self.excluded_tasks:
      try:
        re.compile(pattern)
      except re.error as e:
        raise CacheJobError(f"tasks: {pattern!r} is not a valid regex: {e}") from None
    if not self.output_cache_dir:
      raise CacheJobError("output_cache_dir: required (--output_cache_dir=DIR)")
    if not self.feature_lengths:
      raise CacheJobError("feature_lengths: required, e.g. --feature_lengths=inputs:512,targets:512")
    for key, length in self.feature_lengths:
      if not isinstance(length, int) or length <= 0:
        raise CacheJobError(f"feature_lengths: {key}={length!r} must be a positive integer")
    for name in ("min_shards", "input_range_bytes", "min_input_ranges", "min_range_bytes"):
      if getattr(self, name) < 1:
        raise CacheJobError(f"{name}: must be >= 1, got {getattr(self, name)}")
    if self.max_shards < 0:
      raise CacheJobError(f"max_shards: must be >= 0 (0 = no maximum), got {self.max_shards}")
    if self.max_document_chars is not None and self.max_document_chars < 1:
      raise CacheJobError(f"max_document_chars: must be >= 1, got {self.max_document_chars}")
    if self.objective_impl not in OBJECTIVE_IMPLS:
      raise CacheJobError(f"objective_impl: must be 'numpy' or 'tf', got {self.objective_impl!r}")

  @property
  def lengths(self) -> dict[str, int]:
    return dict(self.feature_lengths)


def parse_feature_lengths(text: str) -> dict[str, int]:
  """'inputs:512,targets:256' -> {'inputs': 512, 'targets': 256} (clear error otherwise)."""
  out = {}
  for item in filter(None, (s.strip() for s in text.split(","))):
    key, sep, value = item.partition(":")
    if not sep or not key or not value.strip().isdigit():
      raise CacheJobError(
          f"--feature_lengths: {item!r} is not NAME:LENGTH (e.g. inputs:512,targets:512)")
    out[key.strip()] = int(value)
  if not out:
    raise CacheJobError("--feature_lengths: required, e.g. inputs:512,targets:512")
  return out


def select_task_names(registered: Iterable[str], include: Sequence[str],
                      exclude: Sequence[str] = (),
                      mixtures: Optional[Mapping[str, Sequence[str]]] = None) -> list[str]:
  """Names matching one of `include` (full match) and none of `exclude`, sorted.

  A pattern that matches a mixture (`mixtures`: name -> its leaf task names) selects the mixture's
  tasks. Unlike seqio's tool (which warns and does nothing), a regex that matches nothing is an
  error naming it and the closest registered names.
  """
  registered = sorted(registered)
  mixtures = dict(mixtures or {})
  selected = set()
  for pattern in include:
    rx = re.compile(pattern)
    hits = [n for n in registered if rx.fullmatch(n)]
    for name, leaves in mixtures.items():
      if rx.fullmatch(name):
        hits.extend(leaves)
    if not hits:
      close = difflib.get_close_matches(pattern, registered + sorted(mixtures), n=5, cutoff=0.5)
      hint = f"; close names: {', '.join(close)}" if close else ""
      raise CacheJobError(f"--tasks: no registered task matches {pattern!r}{hint} "
                          f"({len(registered)} tasks registered; check --module_import)")
    selected.update(hits)
  excluded = [re.compile(p) for p in exclude]
  names = sorted(n for n in selected if not any(rx.fullmatch(n) for rx in excluded))
  if not names:
    raise CacheJobError("--tasks/--excluded_tasks: every matching task is excluded")
  return names


def derive_seed(*parts) -> int:
  """A 31-bit seed from the parts (stable across processes and machines, unlike hash())."""
  digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little") & 0x7FFFFFFF


def example_key(unit_seed: int, index: int) -> bytes:
  """Sort key of an example: a hash (spreads examples over shards, shuffles within a shard)."""
  return hashlib.blake2b(f"{unit_seed}:{index}".encode(), digest_size=8).digest()


def shard_of(key: bytes, num_shards: int) -> int:
  return int.from_bytes(key, "big") % num_shards


@dataclasses.dataclass(frozen=True)
class WorkUnit:
  """One input range of one task split: the unit of parallel work.

  kind 'range': records of `path` starting in [start, end) (bytes or record indices, as the
  corpus reads them); kind 'shard': seqio shard `start` of `end` of a generic seqio source.
  """
  task: str
  cached_name: str
  split: str
  index: int
  num_units: int
  kind: str
  path: str
  start: int
  end: int
  seed: int
  num_shards: int

  @property
  def label(self) -> str:
    return f"{self.cached_name}/{self.split}/{self.index:05d}"


def plan_ranges(file_sizes: Sequence[tuple[str, int]], *, range_bytes: int, min_ranges: int,
                min_range_bytes: int) -> list[tuple[str, int, int]]:
  """Splits files into (path, start, end) byte ranges.

  The range size is min(range_bytes, total/min_ranges), but never below min_range_bytes; each file
  is cut into ceil(size/range_size) equal ranges. Depends only on the sizes and the flags.
  """
  total = sum(size for _, size in file_sizes)
  target = max(min_range_bytes, min(range_bytes, math.ceil(total / max(1, min_ranges))))
  out = []
  for path, size in file_sizes:
    n = max(1, math.ceil(size / target))
    bounds = [round(i * size / n) for i in range(n + 1)]
    out.extend((path, bounds[i], bounds[i + 1]) for i in range(n))
  return out


def num_output_shards(num_units: int, *, min_shards: int, max_shards: int) -> int:
  """As seqio's tool: at least min_shards (or one per input range), at most max_shards."""
  n = max(num_units, min_shards)
  if max_shards > 0:
    n = min(n, max_shards)
  return n
