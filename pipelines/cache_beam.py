"""The Beam pipeline of the cache job: work units -> finished examples -> seqio cache layout.

    units ──ProcessUnits──┬─ ((cached, split, shard, n), (key, unit, example)) ─┐
                          │                      empty-shard markers ───────────┴─ GBK ─ WriteShard
                          ├─ 'dead'  ((cached, split), (unit, record)) ── GBK ─ WriteDeadLetters
                          └─ 'stats' ((cached, split), stats) ── CombinePerKey ─ WriteStats

Only ParDo, GroupByKey, Flatten, Create and CombinePerKey: the DaskRunner translates exactly these.
No Beam sink decides shard names or order (WriteToTFRecord would shard by bundle, which depends on
the runner): each example's shard and its place in the shard come from its key
(`cache_plan.example_key`), so the bytes do not depend on the runner or the number of workers.
`info.<split>.json`, the wall-time figures and `COMPLETED` are written by the driver after the
pipeline succeeded (see `pipelines.cache_tasks`).
"""
from __future__ import annotations

import functools
import json
import os
import uuid
from typing import Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines import cache_plan

_NS = "cache_tasks"


def progress_file(progress_dir: str, unit: cache_plan.WorkUnit) -> str:
  name = f"{unit.cached_name}__{unit.split}__{unit.index:05d}.json".replace("/", "_")
  return os.path.join(progress_dir, name)


class ProcessUnits(beam.DoFn):
  """WorkUnit -> examples keyed by output shard; dead letters and stats as tagged outputs."""

  def __init__(self, *, module_import: Sequence[str], feature_lengths: Mapping[str, int],
               max_document_chars: Optional[int], progress_dir: Optional[str]):
    self._module_import = tuple(module_import)
    self._feature_lengths = dict(feature_lengths)
    self._max_document_chars = max_document_chars
    self._progress_dir = progress_dir
    self._processor = None

  def setup(self):
    from pipelines import cache_core  # pylint: disable=g-import-not-at-top  (TF: workers only)
    self._processor = cache_core.UnitProcessor(
        module_import=self._module_import, feature_lengths=self._feature_lengths,
        max_document_chars=self._max_document_chars)

  def _report(self, unit, stats, done):
    if not self._progress_dir:
      return
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    record = {"done": done, "records": stats["records"], "documents": stats["documents"],
              "source_tokens": stats.get("source_tokens", 0), "examples": stats["examples"]}
    try:
      with tf.io.gfile.GFile(progress_file(self._progress_dir, unit), "w") as f:
        f.write(json.dumps(record))
    except Exception:  # pylint: disable=broad-except  (progress is best-effort, never fatal)
      pass

  def process(self, unit: cache_plan.WorkUnit):
    if self._processor is None:  # Runners that skip setup() (none known; defensive).
      self.setup()
    result = self._processor.process(
        unit, progress=functools.partial(self._report, unit, done=False))
    stats = result.stats
    self._report(unit, stats, done=True)
    Metrics.counter(_NS, "records").inc(stats["records"])
    Metrics.counter(_NS, "documents").inc(stats["documents"])
    Metrics.counter(_NS, "source_tokens").inc(stats["source_tokens"])
    Metrics.counter(_NS, "examples").inc(stats["examples"])
    for reason, n in stats["dead_letters"].items():
      Metrics.counter(_NS, f"dead_letter_{reason}").inc(n)
    for shard, key, data in result.examples:
      yield (unit.cached_name, unit.split, shard, unit.num_shards), (key, unit.index, data)
    for record in result.dead_letters:
      yield beam.pvalue.TaggedOutput(
          "dead", ((unit.cached_name, unit.split), (unit.index, record["record_key"],
                                                     json.dumps(record, sort_keys=True))))
    yield beam.pvalue.TaggedOutput("stats", ((unit.cached_name, unit.split), stats))


def _atomic_write(path: str, write_fn) -> None:
  """Writes via a temporary name and renames, so a retried or killed writer leaves no half file."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tmp = f"{path}.tmp-{uuid.uuid4().hex}"
  write_fn(tmp)
  tf.io.gfile.rename(tmp, path, overwrite=True)


class WriteShard(beam.DoFn):
  """All examples of one output shard, sorted by key, into `<split>.tfrecord-SSSSS-of-NNNNN`."""

  def __init__(self, output_dirs: Mapping[str, str]):
    self._output_dirs = dict(output_dirs)

  def process(self, element):
    (cached, split, shard, num_shards), values = element
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    items = sorted(v for v in values if v is not None)
    path = os.path.join(self._output_dirs[cached],
                        cache_plan.shard_file_name(split, shard, num_shards))

    def write(tmp):
      with tf.io.TFRecordWriter(tmp) as writer:
        for _, _, data in items:
          writer.write(data)

    _atomic_write(path, write)
    Metrics.counter(_NS, "shards_written").inc()
    yield (cached, split), len(items)


class WriteDeadLetters(beam.DoFn):
  """Bad records of a split, in input order, into `deadletter.<split>.jsonl` beside the shards."""

  def __init__(self, output_dirs: Mapping[str, str]):
    self._output_dirs = dict(output_dirs)

  def process(self, element):
    (cached, split), values = element
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    items = sorted(v for v in values if v is not None)
    path = os.path.join(self._output_dirs[cached], cache_plan.dead_letter_file_name(split))

    def write(tmp):
      with tf.io.gfile.GFile(tmp, "w") as f:
        f.write("".join(line + "\n" for _, _, line in items))  # Creates the file when empty.

    _atomic_write(path, write)
    yield (cached, split), len(items)


def _merge_all(stats_list):
  from pipelines import cache_core  # pylint: disable=g-import-not-at-top
  return functools.reduce(cache_core.merge_stats, stats_list, {})


class WriteStats(beam.DoFn):
  """Merged stats of a split -> `stats.<split>.json` (the driver adds wall-time figures)."""

  def __init__(self, output_dirs: Mapping[str, str], feature_lengths: Mapping[str, int]):
    self._output_dirs = dict(output_dirs)
    self._feature_lengths = dict(feature_lengths)

  def process(self, element):
    (cached, split), stats = element
    from pipelines import cache_core  # pylint: disable=g-import-not-at-top
    stats = cache_core.finish_stats(stats, self._feature_lengths)
    path = os.path.join(self._output_dirs[cached], f"stats.{split}.json")
    _atomic_write(path, lambda tmp: cache_core.write_json(tmp, stats))
    yield cached, split


def build_pipeline(pipeline: beam.Pipeline, *, units: Sequence[cache_plan.WorkUnit],
                   output_dirs: Mapping[str, str], module_import: Sequence[str],
                   feature_lengths: Mapping[str, int], max_document_chars: Optional[int] = None,
                   progress_dir: Optional[str] = None) -> None:
  """Adds the cache job for `units` to `pipeline` (all tasks and splits in one graph)."""
  splits = sorted({(u.cached_name, u.split, u.num_shards) for u in units})
  shard_markers = [((c, s, i, n), None) for c, s, n in splits for i in range(n)]
  split_markers = [((c, s), None) for c, s, _ in splits]

  outputs = (
      pipeline
      | "Units" >> beam.Create(list(units))
      # Spread the units over the workers (Create alone may hand them all to one bundle).
      | "SpreadUnits" >> beam.Reshuffle()
      | "ProcessUnits" >> beam.ParDo(ProcessUnits(
          module_import=module_import, feature_lengths=feature_lengths,
          max_document_chars=max_document_chars, progress_dir=progress_dir,
      )).with_outputs("dead", "stats", main="examples"))

  markers = pipeline | "ShardMarkers" >> beam.Create(shard_markers)
  _ = ((outputs.examples, markers)
       | "FlattenShards" >> beam.Flatten()
       | "GroupShards" >> beam.GroupByKey()
       | "WriteShards" >> beam.ParDo(WriteShard(output_dirs)))

  dead_markers = pipeline | "DeadMarkers" >> beam.Create(split_markers)
  _ = ((outputs.dead, dead_markers)
       | "FlattenDead" >> beam.Flatten()
       | "GroupDead" >> beam.GroupByKey()
       | "WriteDeadLetters" >> beam.ParDo(WriteDeadLetters(output_dirs)))

  _ = (outputs.stats
       | "MergeStats" >> beam.CombinePerKey(_merge_all)
       | "WriteStats" >> beam.ParDo(WriteStats(output_dirs, feature_lengths)))
