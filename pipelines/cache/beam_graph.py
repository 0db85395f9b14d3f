"""The Beam pipeline of the cache job: work units -> finished examples -> seqio cache layout.

    units ──ProcessUnits──┬─ ((cached, split, shard, n), (key, unit, example)) ─┐
                          │                      empty-shard markers ───────────┴─ GBK ─ WriteShard
                          ├─ ((cached, split), (unit, record)) ── GBK ─ WriteDeadLetters
                          └─ ((cached, split), stats) ── GBK ─ merge ─ WriteStats
    WriteShard, WriteDeadLetters, WriteStats ── Flatten ── GBK ── Done

Only Create, ParDo (single output), GroupByKey and Flatten: the DaskRunner translates exactly
these (its multi-output ParDo and CombinePerKey are broken in Beam 2.77, and it computes only the
graph's last node, hence the final `Done` that depends on every branch).
No Beam sink decides shard names or order (WriteToTFRecord would shard by bundle, which depends on
the runner): each example's shard and its place in the shard come from its key
(`plan.example_key`), so the bytes do not depend on the runner or the number of workers.
File names come from `pipelines.cache.layout`. `info.<split>.json`, the wall-time figures and
`COMPLETED` are written by the driver after the pipeline succeeded (`pipelines.cache.driver`).
"""
from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
import uuid
from typing import Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.cache import layout
from pipelines.cache import plan as cache_plan
from pipelines.cache import records
from pipelines.cache import stats as stats_lib

_NS = "cache_tasks"


def progress_file(progress_dir: str, unit: cache_plan.WorkUnit) -> str:
  name = f"{unit.cached_name}__{unit.split}__{unit.index:05d}.json".replace("/", "_")
  return os.path.join(progress_dir, name)


_WORKER_MAIN = "apache_beam.runners.worker.sdk_worker_main"
_watching_driver = False


def _parent_of_shell(pid: int) -> Optional[int]:
  """The parent of `pid` if `pid` is a shell (read from /proc; None elsewhere or otherwise)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
  except OSError:
    return None
  comm = stat[stat.find("(") + 1:stat.rfind(")")]
  if comm not in ("sh", "bash", "dash"):
    return None
  return int(stat[stat.rfind(")") + 2:].split()[1])


def exit_with_driver(poll_s: float = 1.0) -> bool:
  """In a local-runner SDK worker process: exits the worker when its driver process dies.

  The local runner (FnApiRunner, multi-processing) starts its workers as child processes
  (`python -m apache_beam.runners.worker.sdk_worker_main`); a SIGKILLed driver cannot stop them,
  and re-parented to PID 1 they would idle until their gRPC deadline (about 2 minutes). A daemon
  thread polls the parent PID and ends the worker (os._exit) once it changes. Does nothing (False)
  in other processes: the driver itself (in-memory mode), Dask and Dataflow workers, whose own
  schedulers own their lifetime. Started by the first DoFn setup in the worker.
  """
  global _watching_driver  # pylint: disable=global-statement
  main = sys.modules.get("__main__")
  if _watching_driver or getattr(getattr(main, "__spec__", None), "name", "") != _WORKER_MAIN:
    return False
  parent = os.getppid()
  driver = _parent_of_shell(parent)  # Beam starts the worker through `sh -c`: watch the driver

  def alive(pid):
    try:
      os.kill(pid, 0)
      return True
    except ProcessLookupError:
      return False
    except PermissionError:
      return True

  def watch():
    while True:
      time.sleep(poll_s)
      if os.getppid() != parent or (driver is not None and not alive(driver)):
        os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, daemon=True, name="exit-with-driver").start()
  _watching_driver = True
  return True


class ProcessUnits(beam.DoFn):
  """WorkUnit -> tagged (tag, key, value): examples by output shard, dead letters, stats."""

  def __init__(self, *, module_import: Sequence[str], feature_lengths: Mapping[str, int],
               max_document_chars: Optional[int], progress_dir: Optional[str],
               objective_impl: str = "numpy"):
    self._module_import = tuple(module_import)
    self._feature_lengths = dict(feature_lengths)
    self._max_document_chars = max_document_chars
    self._objective_impl = objective_impl
    self._progress_dir = progress_dir
    self._processor = None

  def setup(self):
    exit_with_driver()
    from pipelines.cache import unit_processor  # pylint: disable=g-import-not-at-top  (TF: workers only)
    self._processor = unit_processor.UnitProcessor(
        module_import=self._module_import, feature_lengths=self._feature_lengths,
        max_document_chars=self._max_document_chars, objective_impl=self._objective_impl)

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
    # One output stream of (tag, key, value), split by `_select`: the DaskRunner does not keep
    # a multi-output ParDo's tagged outputs apart.
    for shard, key, data in result.examples:
      yield "examples", (unit.cached_name, unit.split, shard, unit.num_shards), (
          key, unit.index, data)
    for record in result.dead_letters:
      yield "dead", (unit.cached_name, unit.split), (
          unit.index, record["record_key"], json.dumps(record, sort_keys=True))
    yield "stats", (unit.cached_name, unit.split), stats


def _select(element, tag):
  if element[0] == tag:
    yield element[1], element[2]


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
                        layout.shard_file_name(split, shard, num_shards))

    def write(tmp):
      with tf.io.TFRecordWriter(tmp) as writer:
        for _, _, data in items:
          writer.write(data)

    # The record index (random access without TF, `pipelines.cache.records`) from the lengths
    # written; before the shard, and both before the driver's COMPLETED.
    index = records.index_bytes([len(data) for _, _, data in items])

    def write_index(tmp):
      with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(index)

    _atomic_write(os.path.join(self._output_dirs[cached],
                               layout.index_file_name(split, shard, num_shards)), write_index)
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
    path = os.path.join(self._output_dirs[cached], layout.dead_letter_file_name(split))

    def write(tmp):
      with tf.io.gfile.GFile(tmp, "w") as f:
        f.write("".join(line + "\n" for _, _, line in items))  # Creates the file when empty.

    _atomic_write(path, write)
    yield (cached, split), len(items)


def _merge_all(stats_list):
  return functools.reduce(stats_lib.merge_stats, stats_list, {})


class WriteStats(beam.DoFn):
  """Merged stats of a split -> `stats.<split>.json` (the driver adds wall-time figures)."""

  def __init__(self, output_dirs: Mapping[str, str], feature_lengths: Mapping[str, int]):
    self._output_dirs = dict(output_dirs)
    self._feature_lengths = dict(feature_lengths)

  def process(self, element):
    (cached, split), stats = element
    stats = stats_lib.finish_stats(stats, self._feature_lengths)
    path = os.path.join(self._output_dirs[cached], layout.stats_file_name(split))
    _atomic_write(path, lambda tmp: layout.write_json(tmp, stats))
    yield (cached, split), stats["examples"]


def build_pipeline(pipeline: beam.Pipeline, *, units: Sequence[cache_plan.WorkUnit],
                   output_dirs: Mapping[str, str], module_import: Sequence[str],
                   feature_lengths: Mapping[str, int], max_document_chars: Optional[int] = None,
                   progress_dir: Optional[str] = None, objective_impl: str = "numpy") -> None:
  """Adds the cache job for `units` to `pipeline` (all tasks and splits in one graph)."""
  splits = sorted({(u.cached_name, u.split, u.num_shards) for u in units})
  shard_markers = [((c, s, i, n), None) for c, s, n in splits for i in range(n)]
  split_markers = [((c, s), None) for c, s, _ in splits]

  tagged = (
      pipeline
      | "Units" >> beam.Create(list(units))
      # Spread the units over the workers (Create alone may hand them all to one bundle).
      | "SpreadUnits" >> beam.Reshuffle()
      | "ProcessUnits" >> beam.ParDo(ProcessUnits(
          module_import=module_import, feature_lengths=feature_lengths,
          max_document_chars=max_document_chars, progress_dir=progress_dir,
          objective_impl=objective_impl,
      )))
  examples = tagged | "SelectExamples" >> beam.FlatMap(_select, "examples")
  dead = tagged | "SelectDead" >> beam.FlatMap(_select, "dead")
  stats = tagged | "SelectStats" >> beam.FlatMap(_select, "stats")

  markers = pipeline | "ShardMarkers" >> beam.Create(shard_markers)
  shards_done = ((examples, markers)
                 | "FlattenShards" >> beam.Flatten()
                 | "GroupShards" >> beam.GroupByKey()
                 | "WriteShards" >> beam.ParDo(WriteShard(output_dirs)))

  dead_markers = pipeline | "DeadMarkers" >> beam.Create(split_markers)
  dead_done = ((dead, dead_markers)
               | "FlattenDead" >> beam.Flatten()
               | "GroupDead" >> beam.GroupByKey()
               | "WriteDeadLetters" >> beam.ParDo(WriteDeadLetters(output_dirs)))

  # GroupByKey + merge rather than CombinePerKey: the DaskRunner mistranslates combiner lifting.
  stats_done = (stats
                | "GroupStats" >> beam.GroupByKey()
                | "MergeStats" >> beam.MapTuple(lambda key, values: (key, _merge_all(values)))
                | "WriteStats" >> beam.ParDo(WriteStats(output_dirs, feature_lengths)))

  # One sink that depends on every branch: the DaskRunner computes only the graph's last bag.
  _ = ((shards_done, dead_done, stats_done)
       | "FlattenDone" >> beam.Flatten()
       | "KeyDone" >> beam.Map(lambda _: ("done", 1))
       | "GroupDone" >> beam.GroupByKey()
       | "Done" >> beam.MapTuple(lambda key, ones: sum(ones)))
