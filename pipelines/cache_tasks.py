r"""Beam job that materialises each task's finished examples in SeqIO's cache layout.

    python -m pipelines.cache_tasks --module_import=tasks --tasks='wiki_.*_ul2' \
        --output_cache_dir=/data/cache --feature_lengths=inputs:512,targets:512

Unlike seqio's `cache_tasks_main` (which caches tokens before a `CacheDatasetPlaceholder` and
leaves the objective to the trainer), this runs a task's *whole* pipeline at the run's feature
lengths — tokenisation, the objective, trimming — so training hosts only read and pack. Each task
`T` cached at lengths `L` becomes the seqio task `T.in512_tg512` (`cache_plan.cached_task_name`)
under `<output_cache_dir>/T.in512_tg512/` with seqio's files (`info.<split>.json`,
`stats.<split>.json`, `<split>.tfrecord-NNNNN-of-NNNNN`, `COMPLETED`) plus `cache_job.json` (what
was cached, for `pipelines.cache_registry.register_cached_tasks`) and `deadletter.<split>.jsonl`.

Runners: the default `--runner=local` is Beam's FnApiRunner in multi-process mode on all cores
(chosen explicitly: Beam's DirectRunner first tries Prism, which fails slowly offline);
`--runner=DaskRunner` (a LocalCluster unless `--dask_client_address`); `--runner=DataflowRunner`
with `--pipeline_options=--project=...,--region=...,--temp_location=gs://...` (the project's code
and pinned requirements are staged: `pipelines.dataflow`).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from typing import Callable, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pipelines import cache_plan  # noqa: E402
from pipelines.cache_plan import CacheJobError  # noqa: E402

COMPLETED = "COMPLETED"
JOB_INFO = "cache_job.json"
_SYNTHETIC_WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly "
                    "judge boxing matches near old stone bridges and rivers").split()


def _one_line(e: BaseException) -> str:
  """The most telling line of an error (Beam wraps worker errors in whole tracebacks)."""
  lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
  errors = [l for l in lines if re.match(r"^[\w.]*(Error|Exception)\b", l)]
  line = errors[-1] if errors else (lines[0] if lines else type(e).__name__)
  return line[:500]


@contextlib.contextmanager
def _stderr_to_file(path: Optional[str]):
  """Sends fd 2 (ours and the worker processes', which inherit it) to `path` while running.

  Beam's worker processes log their start-up and every retry at INFO to stderr; the tool's output
  is the progress and the summary. The log stays in `path` for when something fails.
  """
  if path is None:
    yield
    return
  from tasks import cli  # pylint: disable=g-import-not-at-top
  with cli.native_stderr_to(path):
    yield


def check_writable(output_cache_dir: str) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  probe = os.path.join(output_cache_dir, f".write_probe_{os.getpid()}")
  try:
    tf.io.gfile.makedirs(output_cache_dir)
    with tf.io.gfile.GFile(probe, "w") as f:
      f.write("ok")
    tf.io.gfile.remove(probe)
  except Exception as e:  # pylint: disable=broad-except
    raise CacheJobError(
        f"--output_cache_dir: cannot write to {output_cache_dir!r}: {_one_line(e)}") from None


def _synthetic_docs(keys: Sequence[str], lengths) -> list[dict]:
  words = max(64, 3 * sum(lengths.values()))
  text = " ".join(_SYNTHETIC_WORDS[i % len(_SYNTHETIC_WORDS)] for i in range(words))
  return [{k: text.encode() for k in keys} for _ in range(4)]


def probe_task(processor, task_name: str, split: str, log: Callable[[str], None]) -> None:
  """Runs the task's preprocessing on synthetic text to turn length errors into one line."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  program = processor.program(task_name)
  lengths = processor.feature_lengths
  element_spec = program.task.source.get_dataset(split=split, shuffle=False).element_spec
  keys = [k for k, s in element_spec.items() if s.dtype == tf.string and s.shape.rank == 0]
  given = ",".join(f"{k}:{v}" for k, v in sorted(lengths.items()))
  try:
    examples, _ = program.run(_synthetic_docs(keys or ["text"], lengths), seed=1)
    sample = [ex for _, ex in zip(range(16), examples)]
  except Exception as e:  # pylint: disable=broad-except
    raise CacheJobError(f"task {task_name!r}: its preprocessing fails at --feature_lengths="
                        f"{given} (too short for its objective?): {_one_line(e)}") from None
  if not sample:
    raise CacheJobError(f"task {task_name!r}: produces no examples at --feature_lengths={given}")
  for ex in sample:
    for k, length in lengths.items():
      if k in ex and len(ex[k]) > length:
        log(f"warning: task {task_name!r} makes {k} of {len(ex[k])} tokens > {length}: the "
            f"excess is trimmed (as seqio does) and counted in stats ({k}_truncated_tokens)")
        return


def plan_job(config: cache_plan.CacheJobConfig, *, splits: Optional[Sequence[str]] = None,
             log: Callable[[str], None] = print):
  """Selects tasks, checks them, cleans partial outputs; returns (units, output_dirs, tasks)."""
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from pipelines import cache_core  # pylint: disable=g-import-not-at-top

  cache_core.import_modules(config.module_import)
  mixtures = {}
  for mixture_name in seqio.MixtureRegistry.names():
    mixture = seqio.MixtureRegistry.get(mixture_name)
    mixtures[mixture_name] = [(t.name, float(mixture.get_rate(t))) for t in mixture.tasks]
  names = cache_plan.select_task_names(
      seqio.TaskRegistry.names(), config.tasks, config.excluded_tasks,
      mixtures={m: [t for t, _ in leaves] for m, leaves in mixtures.items()})
  check_writable(config.output_cache_dir)
  lengths = config.lengths
  processor = cache_core.UnitProcessor(module_import=(), feature_lengths=lengths,
                                       max_document_chars=config.max_document_chars,
                                       objective_impl=config.objective_impl)
  units, output_dirs, todo = [], {}, {}
  # Mixtures selected by a pattern get a cached mixture of their cached tasks (same rates).
  for mixture_name, leaves in sorted(mixtures.items()):
    if (any(re.fullmatch(p, mixture_name) for p in config.tasks)
        and all(t in names for t, _ in leaves)):
      record = {"mixture": mixture_name,
                "cached_mixture": cache_plan.cached_task_name(mixture_name, lengths),
                "tasks": [[cache_plan.cached_task_name(t, lengths), r] for t, r in leaves]}
      cache_core.write_json(os.path.join(
          config.output_cache_dir, cache_plan.mixture_file_name(record["cached_mixture"])), record)
  for name in names:
    task = seqio.TaskRegistry.get(name)
    task_splits = [s for s in task.splits if splits is None or s in splits]
    if not task_splits:
      raise CacheJobError(f"--splits: task {name!r} has none of {list(splits)} "
                          f"(its splits: {list(task.splits)})")
    processor.program(name)  # Raises for a missing feature length.
    cached = cache_plan.cached_task_name(name, lengths)
    out_dir = cache_plan.task_output_dir(config.output_cache_dir, cached)
    if tf.io.gfile.exists(os.path.join(out_dir, COMPLETED)) and not config.overwrite:
      log(f"skip {cached}: COMPLETED in {out_dir} (--overwrite to recompute)")
      continue
    probe_task(processor, name, task_splits[0], log)
    if tf.io.gfile.exists(out_dir):
      # Partial output of a killed run (no COMPLETED), or --overwrite: start clean.
      log(f"clean {out_dir} ({'overwrite' if config.overwrite else 'partial output, no COMPLETED'})")
      tf.io.gfile.rmtree(out_dir)
    tf.io.gfile.makedirs(out_dir)
    output_dirs[cached] = out_dir
    todo[cached] = (name, task_splits)
    spec = processor.corpus(name)
    for split in task_splits:
      pieces = []  # (kind, path, start, end)
      if spec is not None:
        try:
          files = list(spec.files(split))
        except (FileNotFoundError, ValueError) as e:
          raise CacheJobError(f"task {name!r} split {split!r}: {_one_line(e)}") from None
        sizes = [(p, tf.io.gfile.stat(p).length) for p in files]
        for path, start, end in cache_plan.plan_ranges(
            sizes, range_bytes=config.input_range_bytes, min_ranges=config.min_input_ranges,
            min_range_bytes=config.min_range_bytes):
          pieces.append(("range", path, start, end))
        if spec.is_tfrecord:  # Byte ranges -> record-index ranges of about the same size.
          pieces = _tfrecord_pieces(spec, pieces)
      else:
        source = task.source
        n = max(1, len(source.list_shards(split)))
        if source.supports_arbitrary_sharding:
          n = max(n, config.min_input_ranges)
        pieces = [("shard", "", i, n) for i in range(n)]
      num_shards = cache_plan.num_output_shards(
          len(pieces), min_shards=config.min_shards, max_shards=config.max_shards)
      for index, (kind, path, start, end) in enumerate(pieces):
        seed = cache_plan.derive_seed(config.base_seed, name, split, os.path.basename(path),
                                      start, end)
        units.append(cache_plan.WorkUnit(
            task=name, cached_name=cached, split=split, index=index, num_units=len(pieces),
            kind=kind, path=path, start=start, end=end, seed=seed, num_shards=num_shards))
  return units, output_dirs, todo


def _tfrecord_pieces(spec, pieces):
  """Maps byte ranges of TFRecord files onto record-index ranges (same count per file)."""
  by_file = {}
  for _, path, _, _ in pieces:
    by_file[path] = by_file.get(path, 0) + 1
  out = []
  for path, n in by_file.items():
    out.extend(("range", path, s, e) for s, e in spec.split_ranges(path, n) if e > s)
  return out


class _Progress:
  """Prints records/tokens so far, from the small files each work unit writes as it goes."""

  def __init__(self, progress_dir: str, num_units: int, interval_s: float, log):
    self._dir, self._n, self._interval, self._log = progress_dir, num_units, interval_s, log
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, daemon=True)
    self._start = time.time()

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join(timeout=5)

  def _loop(self):
    last = None
    while not self._stop.wait(self._interval):
      line = self.line()
      if line and line != last:
        self._log(line)
        last = line

  def line(self) -> Optional[str]:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    totals = {"done": 0, "records": 0, "source_tokens": 0, "examples": 0}
    try:
      paths = tf.io.gfile.glob(os.path.join(self._dir, "*.json"))
      for path in paths:
        with tf.io.gfile.GFile(path) as f:
          rec = json.loads(f.read())
        for k in totals:
          totals[k] += int(rec.get(k, 0))
    except Exception:  # pylint: disable=broad-except  (a file being replaced; next time)
      return None
    if not paths:
      return None
    elapsed = time.time() - self._start
    return (f"[{elapsed:6.0f}s] ranges {totals['done']}/{self._n}, records "
            f"{totals['records']:,}, source tokens {totals['source_tokens']:,} "
            f"({totals['source_tokens'] / max(elapsed, 1e-9):,.0f}/s), examples "
            f"{totals['examples']:,}")


def _runner_and_options(runner: str, pipeline_args: Sequence[str], *, num_workers: int,
                        running_mode: str, dask_client_address: Optional[str],
                        num_units: int, staging_args: Sequence[str] = ()):
  """(runner object or name, PipelineOptions, cleanup fn) for the chosen runner."""
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  args = list(pipeline_args)
  cleanup = lambda: None  # noqa: E731
  if runner == "local":
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner  # pylint: disable=g-import-not-at-top
    args += [f"--direct_num_workers={num_workers}", f"--direct_running_mode={running_mode}",
             "--default_sdk_harness_log_level=WARNING"]
    return FnApiRunner(), PipelineOptions(args), cleanup
  if runner == "DaskRunner":
    from apache_beam.runners.dask.dask_runner import DaskRunner  # pylint: disable=g-import-not-at-top
    if not dask_client_address:
      import distributed  # pylint: disable=g-import-not-at-top
      cluster = distributed.LocalCluster(n_workers=num_workers, threads_per_worker=1,
                                         processes=True, dashboard_address=None)
      dask_client_address = cluster.scheduler_address
      cleanup = cluster.close
    args += [f"--dask_client_address={dask_client_address}"]
    if not any(a.startswith(("--dask_npartitions", "--dask_partition_size")) for a in args):
      args += [f"--dask_npartitions={max(1, num_units)}"]
    return DaskRunner(), PipelineOptions(args), cleanup
  if runner == "DataflowRunner":
    return "DataflowRunner", PipelineOptions(args + list(staging_args)), cleanup
  if runner in ("DirectRunner", "FnApiRunner", "PrismRunner"):
    return runner, PipelineOptions(args), cleanup
  raise CacheJobError(f"--runner: {runner!r} is not one of local, DaskRunner, DataflowRunner, "
                      f"DirectRunner, PrismRunner")


def _finish(output_dirs, todo, config, wall_s: float, log) -> dict:
  """Adds wall-time figures to stats, writes info.<split>.json, cache_job.json, COMPLETED."""
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from pipelines import cache_core  # pylint: disable=g-import-not-at-top
  summary = {}
  for cached, out_dir in sorted(output_dirs.items()):
    name, splits = todo[cached]
    task = seqio.TaskRegistry.get(name)
    features = list(task.output_features)
    summary[cached] = {}
    for split in splits:
      stats_path = os.path.join(out_dir, f"stats.{split}.json")
      with tf.io.gfile.GFile(stats_path) as f:
        stats = json.load(f)
      tokens = sum(stats.get(f"{k}_tokens", 0) for k in features)
      stats["wall_time_s"] = round(wall_s, 3)
      stats["tokens_per_s"] = tokens / wall_s if wall_s > 0 else 0.0
      stats["source_tokens_per_s"] = stats.get("source_tokens", 0) / wall_s if wall_s > 0 else 0.0
      cache_core.write_json(stats_path, stats)
      num_shards = len(tf.io.gfile.glob(os.path.join(out_dir, f"{split}.tfrecord-*")))
      cache_core.write_json(os.path.join(out_dir, f"info.{split}.json"),
                            cache_core.info_json(task.output_features, num_shards))
      summary[cached][split] = stats
    cache_core.write_json(os.path.join(out_dir, JOB_INFO), {
        "task": name, "cached_task": cached, "splits": list(splits),
        "feature_lengths": config.lengths, "base_seed": config.base_seed,
        "objective_impl": config.objective_impl,
        "module_import": list(config.module_import), "seqio_version": seqio.__version__})
    with tf.io.gfile.GFile(os.path.join(out_dir, COMPLETED), "w") as f:
      f.write("")
  return summary


def format_summary(summary: dict, feature_lengths, wall_s: float) -> list[str]:
  lines = []
  for cached, splits in summary.items():
    for split, s in splits.items():
      lines.append(f"{cached} [{split}]: {s['examples']:,} examples from {s['documents']:,} "
                   f"documents ({s['records']:,} records, {s['source_tokens']:,} source tokens)")
      for k, length in sorted(feature_lengths.items()):
        if f"{k}_tokens" in s:
          lines.append(f"  {k}: {s[f'{k}_tokens']:,} tokens (+EOS: {s[f'{k}_length_tokens']:,}),"
                       f" max {s[f'{k}_max_tokens']}, padding {s.get(f'{k}_padding_fraction', 0):.1%}"
                       f" of {length}, truncated {s[f'{k}_truncated_tokens']:,}")
      if s.get("mode_examples"):
        modes = ", ".join(f"{m} {n:,}" for m, n in sorted(s["mode_examples"].items()))
        lines.append(f"  examples per mode token: {modes}")
      dead = s.get("dead_letters") or {}
      total_dead = sum(dead.values())
      detail = ", ".join(f"{r} {n:,}" for r, n in sorted(dead.items()))
      lines.append(f"  dead letters: {total_dead:,}" + (f" ({detail})" if detail else ""))
      lines.append(f"  {s['tokens_per_s']:,.0f} tokens/s ({s['source_tokens_per_s']:,.0f} source "
                   f"tokens/s) over the job's wall time {wall_s:.1f}s")
  return lines


def run_cache_job(config: cache_plan.CacheJobConfig, *, runner: str = "local",
                  pipeline_args: Sequence[str] = (), num_workers: Optional[int] = None,
                  running_mode: str = "multi_processing",
                  dask_client_address: Optional[str] = None,
                  splits: Optional[Sequence[str]] = None, progress_interval_s: float = 10.0,
                  staging_args: Sequence[str] = (), quiet: bool = True,
                  log: Callable[[str], None] = print) -> dict:
  """Runs the whole job; returns {'summary': {cached: {split: stats}}, 'metrics': {...}, ...}."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from pipelines import cache_beam  # pylint: disable=g-import-not-at-top

  start = time.time()
  units, output_dirs, todo = plan_job(config, splits=splits, log=log)
  if not units:
    log("nothing to do: every selected task is cached (use --overwrite to recompute)")
    return {"summary": {}, "metrics": {}, "wall_time_s": 0.0, "units": 0}
  num_workers = num_workers or os.cpu_count() or 1
  runner_obj, options, cleanup = _runner_and_options(
      runner, pipeline_args, num_workers=num_workers, running_mode=running_mode,
      dask_client_address=dask_client_address, num_units=len(units), staging_args=staging_args)
  progress_dir = os.path.join(config.output_cache_dir, ".progress", f"{os.getpid()}_{int(start)}")
  tf.io.gfile.makedirs(progress_dir)
  log(f"caching {len(todo)} task(s), {len(units)} input ranges, runner {runner}"
      + (f" ({num_workers} workers)" if runner in ("local", "DaskRunner") else ""))
  metrics = {}
  worker_log = None
  if quiet:
    fd, worker_log = tempfile.mkstemp(prefix="cache_tasks_", suffix=".log")
    os.close(fd)
  try:
    with _stderr_to_file(worker_log), _Progress(
        progress_dir, len(units), progress_interval_s, log) as progress:
      pipeline = beam.Pipeline(runner=runner_obj, options=options)
      cache_beam.build_pipeline(
          pipeline, units=units, output_dirs=output_dirs, module_import=config.module_import,
          feature_lengths=config.lengths, max_document_chars=config.max_document_chars,
          objective_impl=config.objective_impl,
          progress_dir=progress_dir)
      try:
        result = pipeline.run()
        try:
          result.wait_until_finish()
        finally:
          client = getattr(result, "client", None)  # DaskRunnerResult keeps its own Client.
          if client is not None:
            client.close()
      except Exception as e:  # pylint: disable=broad-except
        if worker_log:
          raise CacheJobError(f"the pipeline failed: {_one_line(e)} (worker logs: {worker_log})"
                              ) from e
        raise
      final_line = progress.line()
    if worker_log:
      os.remove(worker_log)
    if final_line:
      log(final_line)
    try:
      for counter in result.metrics().query()["counters"]:
        metrics[counter.key.metric.name] = metrics.get(counter.key.metric.name, 0) + (
            counter.committed if counter.committed is not None else counter.attempted)
    except (NotImplementedError, AttributeError, KeyError):
      pass  # The DaskRunner collects no metrics; the stats files have the same figures.
  finally:
    cleanup()
    try:
      tf.io.gfile.rmtree(progress_dir)
    except tf.errors.OpError:
      pass
  wall = time.time() - start
  summary = _finish(output_dirs, todo, config, wall, log)
  for line in format_summary(summary, config.lengths, wall):
    log(line)
  if metrics:
    log("beam metrics: " + ", ".join(f"{k}={v:,}" for k, v in sorted(metrics.items())))
  return {"summary": summary, "metrics": metrics, "wall_time_s": wall, "units": len(units),
          "output_dirs": output_dirs}


def _split_pipeline_options(items: Sequence[str]) -> tuple[Optional[str], list[str]]:
  runner, rest = None, []
  for item in items:
    if item.startswith("--runner="):
      runner = item.split("=", 1)[1]
    else:
      rest.append(item)
  return runner, rest


def main(argv: Sequence[str]) -> int:
  from absl import flags  # pylint: disable=g-import-not-at-top
  fl = flags.FLAGS
  flags.DEFINE_list("tasks", None, "Regexes (full match) of the tasks to cache.")
  flags.DEFINE_list("excluded_tasks", None, "Regexes of tasks to skip.")
  flags.DEFINE_multi_string("module_import", [], "Modules that register tasks (comma lists ok).")
  flags.DEFINE_string("output_cache_dir", None, "Where cached tasks go (local path or gs://).")
  flags.DEFINE_string("feature_lengths", None, "NAME:LENGTH,... e.g. inputs:512,targets:512.")
  flags.DEFINE_list("splits", None, "Only these splits (default: every split of a task).")
  flags.DEFINE_integer("base_seed", 0, "Seeds derive from (base_seed, task, split, range).")
  flags.DEFINE_boolean("overwrite", False, "Recompute tasks that are COMPLETED.")
  flags.DEFINE_integer("min_shards", 16, "Minimum number of output shards per split.")
  flags.DEFINE_integer("max_shards", 0, "Maximum number of output shards per split (0: none).")
  flags.DEFINE_integer("input_range_bytes", 8 << 20, "Largest input range (bytes).")
  flags.DEFINE_integer("min_input_ranges", 4, "Split each task split into at least this many "
                       "input ranges (ranges are never below --min_range_bytes).")
  flags.DEFINE_integer("min_range_bytes", 64 << 10, "Smallest input range (bytes).")
  flags.DEFINE_integer("max_document_chars", None, "Override the corpora's document length limit.")
  flags.DEFINE_enum("objective_impl", "numpy", ["numpy", "tf"], "numpy: tasks.objectives "
                    "preprocessors run as vectorised NumPy twins (same distribution, faster); tf: "
                    "in tf.data, exactly task.get_dataset(seed=range seed).")
  flags.DEFINE_string("runner", None, "local (default), DaskRunner or DataflowRunner.")
  flags.DEFINE_integer("direct_num_workers", 0, "local runner: worker processes (0: all cores).")
  flags.DEFINE_enum("direct_running_mode", "multi_processing",
                    ["multi_processing", "multi_threading", "in_memory"], "local runner mode.")
  flags.DEFINE_string("dask_client_address", None, "DaskRunner: scheduler address (default: a "
                      "LocalCluster with --direct_num_workers workers started by the job).")
  flags.DEFINE_list("pipeline_options", [], "Beam pipeline options, comma separated (as seqio's "
                    "cache_tasks_main), e.g. --project=p,--region=r,--temp_location=gs://b/t.")
  flags.DEFINE_string("requirements_file", None, "DataflowRunner: requirements to stage "
                      "(default: generated from the installed pinned dependencies).")
  flags.DEFINE_float("progress_interval_s", 10.0, "Seconds between progress lines.")
  flags.DEFINE_boolean("verbose", False, "Show tracebacks and library logs.")
  if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
    print((__doc__ or "").strip() + "\n\nFlags:\n" + fl.main_module_help())
    return 0
  try:
    fl(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not fl.verbose:
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.ERROR)
    import logging as py_logging  # pylint: disable=g-import-not-at-top
    py_logging.getLogger().setLevel(py_logging.ERROR)
  log = lambda s: print(s, flush=True)  # noqa: E731
  log_path = None
  if not fl.verbose:
    fd, log_path = tempfile.mkstemp(prefix="cache_tasks_", suffix=".log")
    os.close(fd)
  error, code = None, 0
  with _stderr_to_file(log_path):  # TF/absl/Beam start-up noise goes to the log file.
    try:
      _run_from_flags(fl, log)
    except CacheJobError as e:
      error, code = f"error: {e}", 2
    except Exception as e:  # pylint: disable=broad-except
      if fl.verbose:
        raise
      error, code = (f"error: the cache job failed: {type(e).__name__}: {_one_line(e)} "
                     f"(log: {log_path})"), 1
  if error:
    print(error, file=sys.stderr)
  if log_path and code != 1:
    os.remove(log_path)
  return code


def _run_from_flags(fl, log) -> None:
  if not fl.output_cache_dir:
    raise CacheJobError("--output_cache_dir: required")
  if not fl.feature_lengths:
    raise CacheJobError("--feature_lengths: required, e.g. inputs:512,targets:512")
  modules = [m for item in fl.module_import for m in item.split(",") if m]
  config = cache_plan.CacheJobConfig(
      tasks=tuple(fl.tasks or ()), excluded_tasks=tuple(fl.excluded_tasks or ()),
      module_import=tuple(modules), output_cache_dir=fl.output_cache_dir,
      feature_lengths=cache_plan.parse_feature_lengths(fl.feature_lengths),
      base_seed=fl.base_seed, overwrite=fl.overwrite, min_shards=fl.min_shards,
      max_shards=fl.max_shards, input_range_bytes=fl.input_range_bytes,
      min_input_ranges=fl.min_input_ranges, min_range_bytes=fl.min_range_bytes,
      max_document_chars=fl.max_document_chars, objective_impl=fl.objective_impl)
  option_runner, pipeline_args = _split_pipeline_options(fl.pipeline_options)
  runner = fl.runner or option_runner or "local"
  staging_args = []
  if runner == "DataflowRunner":
    from pipelines import dataflow  # pylint: disable=g-import-not-at-top
    staging_args = dataflow.staging_options(requirements_file=fl.requirements_file, log=log)
  run_cache_job(config, runner=runner, pipeline_args=pipeline_args,
                num_workers=fl.direct_num_workers or None, running_mode=fl.direct_running_mode,
                dask_client_address=fl.dask_client_address, splits=fl.splits,
                progress_interval_s=fl.progress_interval_s, staging_args=staging_args,
                quiet=False, log=log)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
