"""The comparison's fan-out stages (every lm_* and ft_* stage) in worker processes, one core each.

Why: at the comparison's shapes (d 128, rows of 64-128 tokens) one train step cannot keep two
cores busy: its matmuls are too small to split well. Measured on the 2-core machine (session 11,
the encoder-decoder fine-tuning step, batch 16 x (64 + 16) tokens): 195-212 ms per step on both
cores alone (1.4-1.7 cores busy); 262 ms on one pinned core alone; 267 and 276 ms for each of two
processes pinned to one core each at once. After pretraining, the comparison is a fan-out of
independent stages (21 LM stages, 36 fine-tunes), so `python scripts/compare.py --jobs N` runs
them N at a time, each in a process pinned to one core: 3 LM stages + 6 fine-tunes took 502 s
wall with --jobs 2 against 674 s in the main process (docs/comparison.md, "Stages in parallel").

Same bytes for any N: each worker is pinned (`os.sched_setaffinity`) before JAX starts, and XLA
CPU sizes its thread pool from the affinity mask (a pinned step's CPU time equals its wall time),
so a stage computes on one thread whatever N is; on the --quick chain, --jobs 1 and --jobs 2 wrote
identical results. `--jobs 0` runs them in the main process on every core instead (the layout
before session 11; round-off differs, and the stage settings say which: `'cores': 1` in the
workers' stages).

Each worker builds the comparison once (every earlier stage is reused from the work directory),
then runs stages by name; a stage's output goes to `<workdir>/logs/<stage>.log` and the main
process prints when each starts and ends. An error in a stage (e.g. `tasks.cli.UserError`)
reaches the main process as that error; the stages already running finish and are kept.
"""
import concurrent.futures as futures
import contextlib
import importlib
import multiprocessing
import os
import sys
import time
from typing import Any, Callable, Dict, List, Sequence

from tasks import cli

CORES_KEY = 'cores'  # in the settings of a stage run by a worker: {'cores': 1}

_WORKER: Dict[str, Any] = {}


def default_jobs() -> int:
  """One worker per core this process may use (at most 8: each holds ~1.5-3 GB); 0 (in-process)
  where JAX would run on an accelerator: workers would each claim the same device's memory."""
  from trainer import host_malloc  # pylint: disable=g-import-not-at-top
  if not host_malloc.cpu_only():
    return 0
  return max(1, min(8, len(os.sched_getaffinity(0))))


def _init_worker(cpus, module: str, kwargs: Dict[str, Any]) -> None:
  cpu = cpus.get()
  os.sched_setaffinity(0, {cpu})  # before JAX or TensorFlow start their threads
  _WORKER.update(cpu=cpu, module=module, kwargs=kwargs, comparison=None)


def _comparison():
  if _WORKER['comparison'] is None:
    module = importlib.import_module(_WORKER['module'])
    _WORKER['comparison'] = module.worker_comparison(**_WORKER['kwargs'])
  return _WORKER['comparison']


@contextlib.contextmanager
def _output_to(path: str):
  """Points this process's stdout and stderr (file descriptors 1 and 2) at `path`.

  At the descriptor level, not `contextlib.redirect_stdout`: absl's log handler keeps the
  `sys.stderr` it first saw, and TensorFlow/XLA write from C++; both follow the descriptors.
  """
  sys.stdout.flush()
  sys.stderr.flush()
  saved = (os.dup(1), os.dup(2))
  try:
    with open(path, 'w', encoding='utf-8') as f:
      os.dup2(f.fileno(), 1)
      os.dup2(f.fileno(), 2)
      try:
        yield
      finally:
        sys.stdout.flush()
        sys.stderr.flush()
  finally:
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    for fd in saved:
      os.close(fd)


def _run_stage(name: str, log_dir: str) -> Dict[str, Any]:
  start = time.time()
  with _output_to(os.path.join(log_dir, f'{name}.log')):
    comparison = _comparison()
    stage = comparison.fanout_stages()[name]
    comparison.store.run(stage.name, stage.settings, stage.fn)
  return {'cpu': _WORKER['cpu'], 'seconds': round(time.time() - start, 1)}


def run_stages(stages: Sequence, *, store, jobs: int, module: str, kwargs: Dict[str, Any],
               log: Callable[[str], None]) -> List[str]:
  """Runs the stages of `stages` (`stages.Stage`, in priority order) that are not done yet.

  At most `jobs` at a time, each in a worker pinned to one core; a stage starts once the stages
  in its `after` are done. `module.worker_comparison(**kwargs)` builds the comparison in a worker
  (its `fanout_stages()` maps a name to the same `Stage`). Returns the names of the stages run.
  """
  todo = [s for s in stages if not store.done(s.name, s.settings)]
  if not todo:
    return []
  waiting = {s.name for s in todo}
  log_dir = os.path.join(store.workdir, 'logs')
  os.makedirs(log_dir, exist_ok=True)
  cores = sorted(os.sched_getaffinity(0))
  jobs = max(1, min(jobs, len(todo)))
  ctx = multiprocessing.get_context('spawn')  # fresh interpreters: no JAX state forked
  cpus = ctx.Queue()
  for i in range(jobs):
    cpus.put(cores[i % len(cores)])
  log(f'{len(todo)} stage(s) in {jobs} worker process(es), one core each; '
      f'their logs: {log_dir}')
  ran = []
  with futures.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                   initargs=(cpus, module, kwargs)) as pool:
    running = {}
    try:
      while todo or running:
        for stage in [s for s in todo if not waiting.intersection(s.after)]:
          if len(running) == jobs:
            break
          todo.remove(stage)
          running[pool.submit(_run_stage, stage.name, log_dir)] = stage
          log(f'stage {stage.name}: running in a worker')
        if not running:
          raise RuntimeError(f'stages waiting on stages that never run: {[s.name for s in todo]}')
        finished, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
        for future in finished:
          stage = running.pop(future)
          info = future.result()  # a stage's error is raised here
          waiting.discard(stage.name)
          ran.append(stage.name)
          log(f'stage {stage.name}: done in {info["seconds"]} s (worker on core {info["cpu"]})')
    except KeyboardInterrupt:
      # The workers got the same SIGINT: their training loops stop at a step boundary.
      pool.shutdown(wait=True, cancel_futures=True)
      raise cli.UserError(f'interrupted; {len(ran)} stage(s) finished here are kept, rerun to '
                          'continue') from None
    except BaseException:
      pool.shutdown(wait=True, cancel_futures=True)  # running stages finish and are kept
      raise
  return ran
