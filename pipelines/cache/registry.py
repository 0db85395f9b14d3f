"""Registers the tasks materialised by the cache job so seqio reads them back.

    from pipelines.cache import registry
    names = registry.register_cached_tasks('/data/cache')   # ['wiki_ul2.in512_tg512', ...]
    ds = seqio.get_dataset('wiki_ul2.in512_tg512', task_feature_lengths={'inputs': 512,
                           'targets': 512}, use_cached=True, feature_converter=...)

Each cached task `T.<lengths>` has the source task's output features (same vocabularies) and a
single preprocessor, `seqio.CacheDatasetPlaceholder(required=True)`: reading it runs no
preprocessing at all (seqio raises if asked for it with `use_cached=False`). The cache directory is
added to seqio's global cache directories, where `Task.cache_dir` looks for `<dir>/<name>/COMPLETED`.
Directories without `COMPLETED` (a job still running, or killed) are never registered. File names
are those of `pipelines.cache.layout`.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines.cache import layout  # noqa: E402
from tasks import cli  # noqa: E402


def register_cached_tasks(cache_dir: str, *, module_import: Optional[Sequence[str]] = None,
                          replace: bool = True) -> list[str]:
  """Registers every completed cached task (and cached mixture) under `cache_dir`.

  Returns the registered names, sorted. A mixture selected by the job's --tasks pattern is
  registered as `<mixture>.<lengths>` over its cached tasks, with the same rates, once all of them
  are complete.

  Args:
    cache_dir: the cache job's `--output_cache_dir`.
    module_import: modules that register the source tasks (default: those the cache job used,
      from each `cache_job.json`); imported with `tasks.cli.import_modules` (so `tasks` registers
      the built-in tasks) only when a source task is not registered yet.
    replace: re-register a name that is already registered (e.g. after re-running the job, or a
      cache of the same task and lengths in another directory: the last one registered is read).
  """
  if not tf.io.gfile.isdir(cache_dir):
    raise FileNotFoundError(f"register_cached_tasks: cache_dir {cache_dir!r} is not a directory")
  # seqio reads a cached task from the first global cache dir holding its name: put this one first
  # so that registering a newer cache of the same task and lengths takes effect.
  seqio.set_global_cache_dirs(
      [cache_dir] + [d for d in seqio.get_global_cache_dirs() if d != cache_dir])
  names = []
  for info_path in sorted(tf.io.gfile.glob(os.path.join(cache_dir, "*", layout.JOB_INFO))):
    task_dir = os.path.dirname(info_path)
    if not tf.io.gfile.exists(os.path.join(task_dir, layout.COMPLETED)):
      continue
    info = layout.read_json(info_path)
    source_name, cached_name = info["task"], info["cached_task"]
    if source_name not in seqio.TaskRegistry.names():
      cli.import_modules(module_import if module_import is not None else info["module_import"])
    if source_name not in seqio.TaskRegistry.names():
      raise ValueError(f"register_cached_tasks: {cached_name!r} was cached from task "
                       f"{source_name!r}, which is not registered (pass module_import=[...])")
    source_task = seqio.TaskRegistry.get(source_name)
    if cached_name in seqio.TaskRegistry.names():
      if not replace:
        names.append(cached_name)
        continue
      seqio.TaskRegistry.remove(cached_name)
    seqio.TaskRegistry.add(
        cached_name,
        source=source_task.source,  # Only for its split names: reading uses the cache.
        output_features=source_task.output_features,
        preprocessors=[seqio.CacheDatasetPlaceholder(required=True)],
        postprocess_fn=source_task.postprocessor,
        metric_fns=source_task.metric_fns)
    names.append(cached_name)
  # Mixtures cached by pattern (`<mixture>.<lengths>.mixture.json`), once all their tasks are.
  for path in sorted(tf.io.gfile.glob(os.path.join(cache_dir, "*" + layout.MIXTURE_SUFFIX))):
    record = layout.read_json(path)
    tasks = [(t, float(r)) for t, r in record["tasks"]]
    if not all(t in names for t, _ in tasks):
      continue
    if record["cached_mixture"] in seqio.MixtureRegistry.names():
      if not replace:
        names.append(record["cached_mixture"])
        continue
      seqio.MixtureRegistry.remove(record["cached_mixture"])
    seqio.MixtureRegistry.add(record["cached_mixture"], tasks)
    names.append(record["cached_mixture"])
  return sorted(names)
