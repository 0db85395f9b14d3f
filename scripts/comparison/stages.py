"""A store of finished stages, each keyed by its settings: a rerun reuses what is done.

A stage `name` with settings `s` lives in `<workdir>/<name>-<hash(s)>/`; it is done when its
`DONE.json` exists (written last, atomically, with the settings, the result and the seconds taken).
Changing a setting gives a new directory; deleting `DONE.json` redoes the stage. Paths inside
the work directory (one stage's settings name another's directory) enter the key relative to it,
so a moved or copied work directory reuses its stages.
"""
import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple


class Stage(NamedTuple):
  """A stage to run or reuse: `fn(stage_dir)` returns its JSON-able result."""
  name: str
  settings: Mapping[str, Any]
  fn: Callable[[str], Dict[str, Any]]
  after: Tuple[str, ...] = ()  # names of the stages it reads (run those first)


def _portable(value: Any, workdir: Optional[str]) -> Any:
  """`value` with every string path inside `workdir` made relative to it ('$WORKDIR/...')."""
  if isinstance(value, Mapping):
    return {k: _portable(v, workdir) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_portable(v, workdir) for v in value]
  if workdir and isinstance(value, str) and (
      value == workdir or value.startswith(workdir + os.sep)):
    return '$WORKDIR' + value[len(workdir):]
  return value


def settings_key(settings: Mapping[str, Any], workdir: Optional[str] = None) -> str:
  """10 hex digits of SHA-256 of the settings (JSON, sorted keys; `workdir` paths relative).

  >>> here = settings_key({'init': '/a/wd/pretrain-0123456789', 'steps': 60}, workdir='/a/wd')
  >>> here == settings_key({'init': '/b/wd2/pretrain-0123456789', 'steps': 60}, workdir='/b/wd2')
  True
  """
  text = json.dumps(_portable(settings, workdir), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:10]


def write_json(path: str, value: Any) -> None:
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


class StageStore:
  """Runs or reuses stages; `.log` lists what happened ({'name', 'dir', 'reused', 'seconds'})."""

  def __init__(self, workdir: str, log: Callable[[str], None] = print):
    self.workdir = os.path.abspath(workdir)
    os.makedirs(self.workdir, exist_ok=True)
    self.log = []
    self._print = log
    # Stages this invocation ran in worker processes (`scripts/comparison/workers.py`): logged
    # as run, not reused, when the main process picks up their records.
    self.ran_elsewhere = set()

  def path(self, name: str, settings: Mapping[str, Any]) -> str:
    return os.path.join(self.workdir, f'{name}-{settings_key(settings, self.workdir)}')

  def done(self, name: str, settings: Mapping[str, Any]) -> bool:
    return os.path.isfile(os.path.join(self.path(name, settings), 'DONE.json'))

  def run(self, name: str, settings: Mapping[str, Any],
          fn: Callable[[str], Dict[str, Any]]) -> Dict[str, Any]:
    """fn(stage_dir) -> a JSON-able result; returns {'dir', 'result', 'seconds', 'reused'}."""
    out = self.path(name, settings)
    done = os.path.join(out, 'DONE.json')
    if os.path.isfile(done):
      with open(done, encoding='utf-8') as f:
        record = json.load(f)
      reused = name not in self.ran_elsewhere
      if reused:
        self._print(f'stage {name}: reused ({out})')
      entry = {'name': name, 'dir': out, 'reused': reused, 'seconds': record['seconds']}
    else:
      if os.path.isdir(out):
        shutil.rmtree(out)  # an interrupted stage restarts from scratch (deterministic)
      os.makedirs(out)
      self._print(f'stage {name}: running')
      start = time.time()
      result = fn(out)
      record = {'settings': dict(settings), 'result': result,
                'seconds': round(time.time() - start, 1)}
      write_json(done, record)
      self._print(f'stage {name}: done in {record["seconds"]} s')
      entry = {'name': name, 'dir': out, 'reused': False, 'seconds': record['seconds']}
    self.log.append(entry)
    return {'dir': out, 'result': record['result'], 'seconds': record['seconds'],
            'reused': entry['reused']}
