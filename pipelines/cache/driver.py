"""The cache job's driver: plan the work units, run the Beam pipeline, finish each split.

    from pipelines.cache import driver, plan
    config = plan.CacheJobConfig(tasks=('wiki_ul2',), output_cache_dir='/data/cache',
                                 feature_lengths={'inputs': 512, 'targets': 512},
                                 module_import=('my_tasks',))
    result = driver.run_cache_job(config)   # {'summary': {cached: {split: stats}}, ...}

`run_cache_job` selects tasks (`plan.select_task_names`), checks each one on synthetic text, removes
partial output of a killed run, plans input ranges (`plan.WorkUnit`), runs the graph of
`pipelines.cache.beam_graph`, and after the pipeline succeeded writes wall-time figures,
`info.<split>.json`, `cache_job.json` and `COMPLETED` (`pipelines.cache.layout`).
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from typing import Callable, Optional, Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pipelines.cache import layout  # noqa: E402
from pipelines.cache import plan as cache_plan  # noqa: E402
from pipelines.cache import runners  # noqa: E402
from pipelines.cache import stats as stats_lib  # noqa: E402
from pipelines.cache.plan import CacheJobError  # noqa: E402
from tasks import cli  # noqa: E402

_SYNTHETIC_WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly "
                    "judge boxing matches near old stone bridges and rivers").split()


def error_line(e: BaseException) -> str:
  """The most telling line of an error (Beam wraps worker errors in whole tracebacks)."""
  lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
  errors = [l for l in lines if re.match(r"^[\w.]*(Error|Exception)\b", l)]
  line = errors[-1] if errors else (lines[0] if lines else type(e).__name__)
  return line[:500]


@contextlib.contextmanager
def stderr_to_file(path: Optional[str]):
  """Sends fd 2 (ours and the worker processes', which inherit it) to `path` while running.

  Beam's worker processes log their start-up and every retry at INFO to stderr; the tool's output
  is the progress and the summary. The log stays in `path` for when something fails.
  """
  if path is None:
    yield
    return
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
        f"--output_cache_dir: cannot write to {output_cache_dir!r}: {error_line(e)}") from None


def _synthetic_docs(keys: Sequence[str], lengths, scalars=None) -> list[dict]:
  """Four documents: long text in every string field `keys`, zero in each numeric scalar field
  (`scalars`: name -> numpy dtype, e.g. a GLUE source's int 'label')."""
  words = max(64, 3 * sum(lengths.values()))
  text = " ".join(_SYNTHETIC_WORDS[i % len(_SYNTHETIC_WORDS)] for i in range(words))
  numbers = {k: np.zeros((), dtype) for k, dtype in (scalars or {}).items()}
  return [{**{k: text.encode() for k in keys}, **numbers} for _ in range(4)]


def probe_task(processor, task_name: str, split: str, log: Callable[[str], None]) -> None:
  """Runs the task's preprocessing on synthetic text to turn length errors into one line."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  program = processor.program(task_name)
  lengths = processor.feature_lengths
  try:  # lists the split's files: a glob that matches nothing is the user's to fix
    element_spec = program.task.source.get_dataset(split=split, shuffle=False).element_spec
  except (FileNotFoundError, ValueError, tf.errors.NotFoundError) as e:
    raise CacheJobError(f"task {task_name!r} split {split!r}: {error_line(e)}") from None
  for key, feature in program.output_features.items():
    try:  # loads the vocabulary: a missing model file is its own cause, not the lengths
      feature.vocabulary.vocab_size  # pylint: disable=pointless-statement
    except Exception as e:  # pylint: disable=broad-except
      raise CacheJobError(f"task {task_name!r}: the vocabulary of feature {key!r} cannot be "
                          f"loaded: {error_line(e)}") from None
  keys = [k for k, s in element_spec.items() if s.dtype == tf.string and s.shape.rank == 0]
  scalars = {k: s.dtype.as_numpy_dtype for k, s in element_spec.items()
             if (s.dtype.is_integer or s.dtype.is_floating) and s.shape.rank == 0}
  given = ",".join(f"{k}:{v}" for k, v in sorted(lengths.items()))
  try:
    examples, _ = program.run(_synthetic_docs(keys or ["text"], lengths, scalars), seed=1)
    sample = [ex for _, ex in zip(range(16), examples)]
  except Exception as e:  # pylint: disable=broad-except
    raise CacheJobError(f"task {task_name!r}: its preprocessing fails at --feature_lengths="
                        f"{given} (too short for its objective?): {error_line(e)}") from None
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
  from pipelines.cache import unit_processor  # pylint: disable=g-import-not-at-top

  cli.import_modules(config.module_import)
  mixtures = {}
  for mixture_name in seqio.MixtureRegistry.names():
    mixture = seqio.MixtureRegistry.get(mixture_name)
    mixtures[mixture_name] = [(t.name, float(mixture.get_rate(t))) for t in mixture.tasks]
  names = cache_plan.select_task_names(
      seqio.TaskRegistry.names(), config.tasks, config.excluded_tasks,
      mixtures={m: [t for t, _ in leaves] for m, leaves in mixtures.items()})
  check_writable(config.output_cache_dir)
  lengths = config.lengths
  processor = unit_processor.UnitProcessor(module_import=(), feature_lengths=lengths,
                                           max_document_chars=config.max_document_chars,
                                           objective_impl=config.objective_impl)
  units, output_dirs, todo = [], {}, {}
  # Mixtures selected by a pattern get a cached mixture of their cached tasks (same rates).
  for mixture_name, leaves in sorted(mixtures.items()):
    if (any(re.fullmatch(p, mixture_name) for p in config.tasks)
        and all(t in names for t, _ in leaves)):
      record = {"mixture": mixture_name,
                "cached_mixture": layout.cached_task_name(mixture_name, lengths),
                "tasks": [[layout.cached_task_name(t, lengths), r] for t, r in leaves]}
      layout.write_json(os.path.join(
          config.output_cache_dir, layout.mixture_file_name(record["cached_mixture"])), record)
  for name in names:
    task = seqio.TaskRegistry.get(name)
    task_splits = [s for s in task.splits if splits is None or s in splits]
    if not task_splits:
      raise CacheJobError(f"--splits: task {name!r} has none of {list(splits)} "
                          f"(its splits: {list(task.splits)})")
    processor.program(name)  # Raises for a missing feature length.
    cached = layout.cached_task_name(name, lengths)
    out_dir = layout.task_output_dir(config.output_cache_dir, cached)
    if tf.io.gfile.exists(os.path.join(out_dir, layout.COMPLETED)) and not config.overwrite:
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
          raise CacheJobError(f"task {name!r} split {split!r}: {error_line(e)}") from None
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


def finish_splits(output_dirs, todo, config, wall_s: float, log) -> dict:
  """Adds wall-time figures to stats, writes info.<split>.json, cache_job.json, COMPLETED."""
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  summary = {}
  for cached, out_dir in sorted(output_dirs.items()):
    name, splits = todo[cached]
    task = seqio.TaskRegistry.get(name)
    features = list(task.output_features)
    summary[cached] = {}
    for split in splits:
      stats_path = os.path.join(out_dir, layout.stats_file_name(split))
      stats = layout.read_json(stats_path)
      tokens = sum(stats.get(f"{k}_tokens", 0) for k in features)
      stats["wall_time_s"] = round(wall_s, 3)
      stats["tokens_per_s"] = tokens / wall_s if wall_s > 0 else 0.0
      stats["source_tokens_per_s"] = stats.get("source_tokens", 0) / wall_s if wall_s > 0 else 0.0
      layout.write_json(stats_path, stats)
      num_shards = len(tf.io.gfile.glob(os.path.join(out_dir, layout.shard_glob(split))))
      layout.write_json(os.path.join(out_dir, layout.info_file_name(split)),
                        layout.info_json(task.output_features, num_shards, seqio.__version__))
      summary[cached][split] = stats
    layout.write_json(os.path.join(out_dir, layout.JOB_INFO), {
        "task": name, "cached_task": cached, "splits": list(splits),
        "feature_lengths": config.lengths, "base_seed": config.base_seed,
        "objective_impl": config.objective_impl,
        "module_import": list(config.module_import), "seqio_version": seqio.__version__})
    with tf.io.gfile.GFile(os.path.join(out_dir, layout.COMPLETED), "w") as f:
      f.write("")
  return summary


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
  from pipelines.cache import beam_graph  # pylint: disable=g-import-not-at-top

  start = time.time()
  units, output_dirs, todo = plan_job(config, splits=splits, log=log)
  if not units:
    log("nothing to do: every selected task is cached (use --overwrite to recompute)")
    return {"summary": {}, "metrics": {}, "wall_time_s": 0.0, "units": 0}
  num_workers = num_workers or os.cpu_count() or 1
  runner_obj, options, cleanup = runners.runner_and_options(
      runner, pipeline_args, num_workers=num_workers, running_mode=running_mode,
      dask_client_address=dask_client_address, num_units=len(units), staging_args=staging_args)
  progress_dir = os.path.join(config.output_cache_dir, layout.PROGRESS_DIR, f"{os.getpid()}_{int(start)}")
  tf.io.gfile.makedirs(progress_dir)
  log(f"caching {len(todo)} task(s), {len(units)} input ranges, runner {runner}"
      + (f" ({num_workers} workers)" if runner in ("local", "DaskRunner") else ""))
  metrics = {}
  worker_log = None
  if quiet:
    fd, worker_log = tempfile.mkstemp(prefix="cache_tasks_", suffix=".log")
    os.close(fd)
  try:
    with stderr_to_file(worker_log), runners.Progress(
        progress_dir, len(units), progress_interval_s, log) as progress:
      pipeline = beam.Pipeline(runner=runner_obj, options=options)
      beam_graph.build_pipeline(
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
          raise CacheJobError(f"the pipeline failed: {error_line(e)} (worker logs: {worker_log})"
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
      parent = os.path.dirname(progress_dir)
      if "://" not in parent and not os.listdir(parent):  # another job may share it
        os.rmdir(parent)
    except (tf.errors.OpError, OSError):
      pass
  wall = time.time() - start
  summary = finish_splits(output_dirs, todo, config, wall, log)
  for line in stats_lib.format_summary(summary, config.lengths, wall):
    log(line)
  if metrics:
    log("beam metrics: " + ", ".join(f"{k}={v:,}" for k, v in sorted(metrics.items())))
  return {"summary": summary, "metrics": metrics, "wall_time_s": wall, "units": len(units),
          "output_dirs": output_dirs}
