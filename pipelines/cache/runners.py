"""Beam runners for the cache job (local, Dask, Dataflow) and its progress lines.

The default `local` runner is Beam's FnApiRunner in multi-process mode on all cores (chosen
explicitly: Beam's DirectRunner first tries Prism, which fails slowly offline). `DaskRunner` uses a
LocalCluster unless given a scheduler address; `DataflowRunner` gets the staging options of
`pipelines.cache.dataflow`.
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Optional, Sequence

from pipelines.cache.plan import CacheJobError

RUNNERS = ("local", "DaskRunner", "DataflowRunner", "DirectRunner", "FnApiRunner", "PrismRunner")


class Progress:
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


def runner_and_options(runner: str, pipeline_args: Sequence[str], *, num_workers: int,
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
