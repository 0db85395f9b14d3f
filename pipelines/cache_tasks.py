r"""Beam job that materialises each task's finished examples in SeqIO's cache layout.

    python -m pipelines.cache_tasks --module_import=tasks --tasks='wiki_.*_ul2' \
        --output_cache_dir=/data/cache --feature_lengths=inputs:512,targets:512

Unlike seqio's `cache_tasks_main` (which caches tokens before a `CacheDatasetPlaceholder` and
leaves the objective to the trainer), this runs a task's *whole* pipeline at the run's feature
lengths (tokenisation, the objective, trimming), so training hosts only read and pack. Each task
`T` cached at lengths `L` becomes the seqio task `T.in512_tg512`
(`pipelines.cache.layout.cached_task_name`) under `<output_cache_dir>/T.in512_tg512/` with seqio's
files (`info.<split>.json`, `stats.<split>.json`, `<split>.tfrecord-NNNNN-of-NNNNN`, `COMPLETED`)
plus `cache_job.json` (what was cached, for `pipelines.cache.registry.register_cached_tasks`) and
`deadletter.<split>.jsonl`.

Runners: the default `--runner=local` is Beam's FnApiRunner in multi-process mode on all cores;
`--runner=DaskRunner` (a LocalCluster unless `--dask_client_address`); `--runner=DataflowRunner`
with `--pipeline_options=--project=...,--region=...,--temp_location=gs://...` (the project's code
and pinned requirements are staged: `pipelines.cache.dataflow`).

This is the command line only; the job is `pipelines.cache.driver.run_cache_job`.
"""
import os
import sys
import tempfile
from typing import Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402

from pipelines.cache import driver  # noqa: E402
from pipelines.cache import plan as cache_plan  # noqa: E402
from pipelines.cache.plan import CacheJobError  # noqa: E402
from tasks import cli  # noqa: E402

_TASKS = flags.DEFINE_list("tasks", None, "Regexes (full match) of the tasks to cache.")
_EXCLUDED_TASKS = flags.DEFINE_list("excluded_tasks", None, "Regexes of tasks to skip.")
_MODULE_IMPORT = flags.DEFINE_multi_string(
    "module_import", [], "Modules that register tasks (comma lists ok).")
_OUTPUT_CACHE_DIR = flags.DEFINE_string(
    "output_cache_dir", None, "Where cached tasks go (local path or gs://).")
_FEATURE_LENGTHS = flags.DEFINE_string(
    "feature_lengths", None, "NAME:LENGTH,... e.g. inputs:512,targets:512.")
_SPLITS = flags.DEFINE_list("splits", None, "Only these splits (default: every split of a task).")
_BASE_SEED = flags.DEFINE_integer("base_seed", 0, "Seeds derive from (base_seed, task, split, range).")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Recompute tasks that are COMPLETED.")
_MIN_SHARDS = flags.DEFINE_integer("min_shards", 16, "Minimum number of output shards per split.")
_MAX_SHARDS = flags.DEFINE_integer(
    "max_shards", 0, "Maximum number of output shards per split (0: none).")
_INPUT_RANGE_BYTES = flags.DEFINE_integer("input_range_bytes", 8 << 20, "Largest input range (bytes).")
_MIN_INPUT_RANGES = flags.DEFINE_integer(
    "min_input_ranges", 4, "Split each task split into at least this many input ranges (ranges "
    "are never below --min_range_bytes).")
_MIN_RANGE_BYTES = flags.DEFINE_integer("min_range_bytes", 64 << 10, "Smallest input range (bytes).")
_MAX_DOCUMENT_CHARS = flags.DEFINE_integer(
    "max_document_chars", None, "Override the corpora's document length limit.")
_OBJECTIVE_IMPL = flags.DEFINE_enum(
    "objective_impl", "numpy", list(cache_plan.OBJECTIVE_IMPLS), "numpy: tasks.objectives "
    "preprocessors run as vectorised NumPy twins (same distribution, faster); tf: in tf.data, "
    "exactly task.get_dataset(seed=range seed).")
_RUNNER = flags.DEFINE_string("runner", None, "local (default), DaskRunner or DataflowRunner.")
_DIRECT_NUM_WORKERS = flags.DEFINE_integer(
    "direct_num_workers", 0, "local runner: worker processes (0: all cores).")
_DIRECT_RUNNING_MODE = flags.DEFINE_enum(
    "direct_running_mode", "multi_processing", ["multi_processing", "multi_threading", "in_memory"],
    "local runner mode.")
_DASK_CLIENT_ADDRESS = flags.DEFINE_string(
    "dask_client_address", None, "DaskRunner: scheduler address (default: a LocalCluster with "
    "--direct_num_workers workers started by the job).")
_PIPELINE_OPTIONS = flags.DEFINE_list(
    "pipeline_options", [], "Beam pipeline options, comma separated (as seqio's cache_tasks_main), "
    "e.g. --project=p,--region=r,--temp_location=gs://b/t.")
_REQUIREMENTS_FILE = flags.DEFINE_string(
    "requirements_file", None, "DataflowRunner: requirements to stage (default: generated from "
    "the installed pinned dependencies).")
_PROGRESS_INTERVAL_S = flags.DEFINE_float("progress_interval_s", 10.0, "Seconds between progress lines.")
_VERBOSE = flags.DEFINE_boolean("verbose", False, "Show tracebacks and library logs.")


def _split_pipeline_options(items: Sequence[str]) -> tuple[Optional[str], list[str]]:
  runner, rest = None, []
  for item in items:
    if item.startswith("--runner="):
      runner = item.split("=", 1)[1]
    else:
      rest.append(item)
  return runner, rest


def main(argv: Sequence[str]) -> int:
  del argv
  verbose = _VERBOSE.value
  if not verbose:
    cli.quiet_absl_logging()
    import logging as py_logging  # pylint: disable=g-import-not-at-top
    py_logging.getLogger().setLevel(py_logging.ERROR)
  log = lambda s: print(s, flush=True)  # noqa: E731
  log_path = None
  if not verbose:
    fd, log_path = tempfile.mkstemp(prefix="cache_tasks_", suffix=".log")
    os.close(fd)
  error, failed = None, False
  with driver.stderr_to_file(log_path):  # TF/absl/Beam start-up noise goes to the log file.
    try:
      _run_from_flags(log)
    except cli.UserError as e:
      error = e
    except Exception as e:  # pylint: disable=broad-except
      if verbose:
        raise
      failed = True
      print(f"error: the cache job failed: {type(e).__name__}: {driver.error_line(e)} "
            f"(log: {log_path})", file=sys.stderr)
  if log_path and not failed:
    os.remove(log_path)
  if error is not None:
    raise error
  return 1 if failed else 0


def _run_from_flags(log) -> None:
  if not _OUTPUT_CACHE_DIR.value:
    raise CacheJobError("--output_cache_dir: required")
  if not _FEATURE_LENGTHS.value:
    raise CacheJobError("--feature_lengths: required, e.g. inputs:512,targets:512")
  modules = [m for item in _MODULE_IMPORT.value for m in item.split(",") if m]
  config = cache_plan.CacheJobConfig(
      tasks=tuple(_TASKS.value or ()), excluded_tasks=tuple(_EXCLUDED_TASKS.value or ()),
      module_import=tuple(modules), output_cache_dir=_OUTPUT_CACHE_DIR.value,
      feature_lengths=cache_plan.parse_feature_lengths(_FEATURE_LENGTHS.value),
      base_seed=_BASE_SEED.value, overwrite=_OVERWRITE.value, min_shards=_MIN_SHARDS.value,
      max_shards=_MAX_SHARDS.value, input_range_bytes=_INPUT_RANGE_BYTES.value,
      min_input_ranges=_MIN_INPUT_RANGES.value, min_range_bytes=_MIN_RANGE_BYTES.value,
      max_document_chars=_MAX_DOCUMENT_CHARS.value, objective_impl=_OBJECTIVE_IMPL.value)
  option_runner, pipeline_args = _split_pipeline_options(_PIPELINE_OPTIONS.value)
  runner = _RUNNER.value or option_runner or "local"
  staging_args = []
  if runner == "DataflowRunner":
    from pipelines.cache import dataflow  # pylint: disable=g-import-not-at-top
    staging_args = dataflow.staging_options(requirements_file=_REQUIREMENTS_FILE.value, log=log)
  driver.run_cache_job(
      config, runner=runner, pipeline_args=pipeline_args,
      num_workers=_DIRECT_NUM_WORKERS.value or None, running_mode=_DIRECT_RUNNING_MODE.value,
      dask_client_address=_DASK_CLIENT_ADDRESS.value, splits=_SPLITS.value,
      progress_interval_s=_PROGRESS_INTERVAL_S.value, staging_args=staging_args, quiet=False,
      log=log)


if __name__ == "__main__":
  cli.main_exit(main, program="cache_tasks")
