"""scripts/comparison/workers.py: the comparison's fan-out stages in worker processes pinned to one
core each, on stages that are plain Python (no JAX): order, pinning, logs, reuse, errors.

(That a JAX stage gives the same bytes with --jobs 1 and --jobs 2 was checked on the --quick chain
when the workers were written, session 11: docs/comparison.md.)"""
import json
import os
import textwrap

import pytest

from scripts.comparison import stages
from scripts.comparison import workers
from tasks import cli

# Imported by name in each spawned worker (the parent's sys.path travels with spawn).
FAKE_MODULE = textwrap.dedent('''
    import os
    import time
    from scripts.comparison import stages
    from tasks import cli


    class FakeComparison:
      def __init__(self, workdir, fail):
        self.store = stages.StageStore(workdir)
        self.fail = fail

      def fanout_stages(self):
        def fn(name):
          def run(stage_dir):
            print(f'working on {name}')
            start = time.time()
            if name == self.fail:
              raise cli.UserError(f'stage {name}: bad input')
            time.sleep(0.5)
            return {'cores': sorted(os.sched_getaffinity(0)), 'pid': os.getpid(),
                    'start': start, 'end': time.time()}
          return run
        out = [stages.Stage('a', {'n': 1}, fn('a')),
               stages.Stage('b', {'n': 2}, fn('b'), after=('a',)),
               stages.Stage('c', {'n': 3}, fn('c'))]
        return {s.name: s for s in out}


    def worker_comparison(*, workdir, fail=None):
      return FakeComparison(workdir, fail)
    ''')


@pytest.fixture
def fake_module(tmp_path, monkeypatch):
  (tmp_path / 'fake_comparison.py').write_text(FAKE_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  return 'fake_comparison'


def _stages(fake_module, workdir, fail=None):
  module = __import__(fake_module)
  return module.worker_comparison(workdir=workdir, fail=fail)


def _result(store, stage):
  with open(os.path.join(store.path(stage.name, stage.settings), 'DONE.json')) as f:
    return json.load(f)['result']


def test_stages_run_in_pinned_workers_after_their_inputs(tmp_path, fake_module):
  workdir = str(tmp_path / 'work')
  comparison = _stages(fake_module, workdir)
  todo = list(comparison.fanout_stages().values())
  lines = []
  ran = workers.run_stages(todo, store=comparison.store, jobs=2, module=fake_module,
                           kwargs={'workdir': workdir}, log=lines.append)
  assert sorted(ran) == ['a', 'b', 'c']
  results = {s.name: _result(comparison.store, s) for s in todo}
  usable = sorted(os.sched_getaffinity(0))
  for name, r in results.items():
    assert len(r['cores']) == 1 and r['cores'][0] in usable, (name, r)  # one core each
    assert r['pid'] != os.getpid()
  assert results['b']['start'] >= results['a']['end']  # b reads a: it waited
  if len(usable) >= 2:  # a and c ran at once, on different cores
    assert results['a']['cores'] != results['c']['cores']
    assert results['c']['start'] < results['a']['end']
  assert any('3 stage(s) in 2 worker process(es)' in line for line in lines)
  assert any(line.startswith('stage b: done in') for line in lines)
  log_b = open(os.path.join(workdir, 'logs', 'b.log')).read()
  assert 'working on b' in log_b and 'working on a' not in log_b
  # Done stages are not run again; the main process logs them as run here, not reused.
  assert workers.run_stages(todo, store=comparison.store, jobs=2, module=fake_module,
                            kwargs={'workdir': workdir}, log=lines.append) == []
  comparison.store.ran_elsewhere.update(ran)
  comparison.store.run(todo[0].name, todo[0].settings, todo[0].fn)
  assert comparison.store.log[-1]['reused'] is False


def test_a_stage_error_reaches_the_main_process_and_finished_stages_are_kept(tmp_path,
                                                                             fake_module):
  workdir = str(tmp_path / 'work')
  comparison = _stages(fake_module, workdir, fail='c')
  todo = list(comparison.fanout_stages().values())
  with pytest.raises(cli.UserError, match='stage c: bad input'):
    workers.run_stages(todo, store=comparison.store, jobs=1, module=fake_module,
                       kwargs={'workdir': workdir, 'fail': 'c'}, log=lambda line: None)
  # jobs=1 runs in list order: a and b finished before c failed, and are kept for the rerun.
  assert comparison.store.done('a', {'n': 1}) and comparison.store.done('b', {'n': 2})
  assert not comparison.store.done('c', {'n': 3})


def test_stages_waiting_on_a_stage_that_never_runs_fail_clearly(tmp_path, fake_module):
  comparison = _stages(fake_module, str(tmp_path / 'work'))
  orphan = stages.Stage('b', {'n': 2}, lambda d: {}, after=('b',))
  with pytest.raises(RuntimeError, match=r"never run: \['b'\]"):
    workers.run_stages([orphan], store=comparison.store, jobs=1, module=fake_module,
                       kwargs={'workdir': str(tmp_path / 'work')}, log=lambda line: None)


def test_default_jobs_one_per_core_on_cpu_none_with_an_accelerator(monkeypatch):
  from trainer import host_malloc
  monkeypatch.setattr(host_malloc, 'cpu_only', lambda: True)
  assert workers.default_jobs() == min(8, len(os.sched_getaffinity(0)))
  monkeypatch.setattr(host_malloc, 'cpu_only', lambda: False)  # e.g. a CUDA plugin installed
  assert workers.default_jobs() == 0
