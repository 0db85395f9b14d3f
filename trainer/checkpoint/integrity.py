"""Damaged checkpoints: find the damage, name the step and the file in one line, move it aside.

Orbax reports a truncated array file as a bare `Exception` whose message is a page-long
TensorStore spec (the telling line, e.g. `OUT_OF_RANGE: Error reading "layer_0.mlp.kernel/0.0" in
OCDBT database at local file "/run/checkpoints/6/params/"`, is in its cause), and an empty
`_METADATA` as `Expecting value: line 1 column 1` without a file name. This module turns both into
`CorruptCheckpointError`:

  check_metadata_files('/run/checkpoints/6', step=6)
  # CorruptCheckpointError: checkpoint step 6 is damaged: /run/checkpoints/6/params/_METADATA is
  #   not valid JSON (empty file)

A size manifest is written beside each checkpoint once orbax has finalised it
(`write_manifest`: `<step>/integrity_manifest.json`, `{"files": {"params/_METADATA": 1234, ...}}`)
and checked before any array is read (`check`). This is not only faster than letting a read fail:
orbax (0.11) runs a restore on a fresh event loop that it closes as soon as one read fails, while
TensorStore still completes the other reads in flight and calls `call_soon_threadsafe` on the
closed loop, which prints "Event loop is closed" tracebacks from its threads, even after our one
clear line. A truncated or missing file is found by its size before that can happen; damage that
keeps sizes (flipped bytes) is still found by the read itself.

  check('/run/checkpoints/6/params')
  # CorruptCheckpointError: checkpoint step 6 is damaged: /run/checkpoints/6/params/ocdbt.process_0/
  #   d/8f2c has 57593 bytes, 115186 were written
"""
import json
import os
import re
import shutil
from typing import Iterable, List, Optional

# Orbax's JSON files: the step's and each item's metadata, sharding, array metadata, JSON items.
_JSON_NAMES = ('_CHECKPOINT_METADATA', '_METADATA', '_sharding', 'metadata')
_DAMAGE = re.compile(r'OUT_OF_RANGE|DATA_LOSS|Error reading|Error opening|not valid for value|'
                     r'Expecting value|Unterminated string|Extra data|Invalid control character|'
                     r'corrupt|checksum|truncated|No such file|NOT_FOUND', re.I)


MANIFEST = 'integrity_manifest.json'


class CorruptCheckpointError(ValueError):
  """A checkpoint whose files are damaged or missing; the message names the step and the file."""


def _step_of(directory: str) -> Optional[int]:
  """The step number of a step directory or of an item directory inside one."""
  for part in (os.path.basename(os.path.normpath(directory)),
               os.path.basename(os.path.dirname(os.path.normpath(directory)))):
    if part.isdigit():
      return int(part)
  return None


def _prefix(step: Optional[int], directory: str) -> str:
  step = _step_of(directory) if step is None else step
  return f'checkpoint step {step} is damaged' if step is not None else (
      f'checkpoint {directory} is damaged')


def check_metadata_files(directory: str, *, step: Optional[int] = None) -> None:
  """Raises CorruptCheckpointError naming the first empty or unparsable JSON file of a checkpoint.

  `directory`: a step directory (its items are checked too) or one item's directory.
  """
  if not os.path.isdir(directory):
    return
  dirs = [directory] + sorted(os.path.join(directory, d) for d in os.listdir(directory)
                              if os.path.isdir(os.path.join(directory, d)))
  for d in dirs:
    candidates = [os.path.join(d, n) for n in _JSON_NAMES]
    meta_dir = os.path.join(d, 'array_metadatas')
    if os.path.isdir(meta_dir):
      candidates += sorted(os.path.join(meta_dir, n) for n in os.listdir(meta_dir))
    for path in candidates:
      if not os.path.isfile(path):
        continue
      with open(path, 'rb') as f:
        raw = f.read()
      try:
        json.loads(raw)
      except ValueError as e:
        why = 'empty file' if not raw.strip() else f'{e}'
        raise CorruptCheckpointError(f'{_prefix(step, directory)}: {path} is not valid JSON '
                                     f'({why})') from None


def _file_sizes(directory: str) -> dict:
  sizes = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, directory)
      if rel not in (MANIFEST, MANIFEST + '.tmp'):
        sizes[rel.replace(os.sep, '/')] = os.path.getsize(path)
  return sizes


def write_manifest(directory: str) -> bool:
  """Records the size of every file under a finalised checkpoint directory (atomically); whether
  the directory has a manifest now."""
  if os.path.exists(os.path.join(directory, MANIFEST)):
    return True
  if not os.path.isdir(directory):
    return False
  tmp = os.path.join(directory, MANIFEST + '.tmp')
  try:
    sizes = _file_sizes(directory)
    with open(tmp, 'w') as f:
      json.dump({'files': sizes}, f, sort_keys=True)
    os.replace(tmp, os.path.join(directory, MANIFEST))
    return True
  except OSError:  # the step was removed meanwhile (keep-last-N): no manifest, nothing checked
    return False


def _manifest_of(directory: str):
  """(manifest root, {relative path: size}) for a step dir, an item dir in one, or a params dir."""
  directory = os.path.normpath(directory)
  for root in (directory, os.path.dirname(directory)):
    path = os.path.join(root, MANIFEST)
    if os.path.isfile(path):
      try:
        with open(path) as f:
          return root, dict(json.load(f)['files'])
      except (ValueError, KeyError, TypeError):
        return None, None  # a damaged manifest proves nothing: the reads themselves will tell
  return None, None


def check_manifest(directory: str, *, step: Optional[int] = None) -> None:
  """Raises CorruptCheckpointError naming the first file under `directory` that is missing or
  whose size differs from the one recorded when it was written (no-op without a manifest)."""
  root, files = _manifest_of(directory)
  if root is None:
    return
  prefix = os.path.relpath(os.path.normpath(directory), root).replace(os.sep, '/')
  prefix = '' if prefix == '.' else prefix + '/'
  for rel, size in sorted(files.items()):
    if not rel.startswith(prefix):
      continue
    path = os.path.join(root, *rel.split('/'))
    if not os.path.isfile(path):
      raise CorruptCheckpointError(f'{_prefix(step, directory)}: {path} is missing')
    have = os.path.getsize(path)
    if have != size:
      raise CorruptCheckpointError(f'{_prefix(step, directory)}: {path} has {have} bytes, '
                                   f'{size} were written')


def check(directory: str, *, step: Optional[int] = None) -> None:
  """All checks that need no array read: the JSON files (the more telling message), then file
  sizes against the manifest."""
  check_metadata_files(directory, step=step)
  check_manifest(directory, step=step)


def _chain(e: BaseException) -> List[BaseException]:
  out, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    out.append(e)
    e = e.__cause__ or e.__context__
  return out


def is_damage(e: BaseException) -> bool:
  """Whether an exception from an orbax restore says a file is damaged or missing."""
  for err in _chain(e):
    if isinstance(err, (json.JSONDecodeError, FileNotFoundError)):
      return True
    first = str(err).strip().splitlines()[0] if str(err).strip() else ''
    if type(err) is Exception and 'TensorStore' in str(err):  # pylint: disable=unidiomatic-typecheck
      return True
    if _DAMAGE.search(first):
      return True
  return False


def reason(e: BaseException) -> str:
  """The most telling line of a restore error (the deepest cause's first line, shortened)."""
  lines = []
  for err in _chain(e):
    text = str(err).strip()
    if text:
      lines.append(text.splitlines()[0])
  telling = [l for l in lines if _DAMAGE.search(l)]
  line = (telling[-1] if telling else (lines[-1] if lines else type(e).__name__))
  return line[:400]


def corrupt_error(e: BaseException, *, directory: str, step: Optional[int] = None
                  ) -> BaseException:
  """CorruptCheckpointError (one line: step, file, reason) if `e` is damage, else `e` itself."""
  if isinstance(e, CorruptCheckpointError):
    return e
  if not is_damage(e):
    return e
  return CorruptCheckpointError(f'{_prefix(step, directory)}: {reason(e)} (in {directory})')


def move_aside(checkpoint_dir: str, steps: Iterable[int]) -> str:
  """Moves damaged step directories to `<checkpoint_dir>/../corrupt_checkpoints/`; returns it."""
  target = os.path.join(os.path.dirname(os.path.normpath(checkpoint_dir)), 'corrupt_checkpoints')
  os.makedirs(target, exist_ok=True)
  for step in steps:
    src = os.path.join(checkpoint_dir, str(step))
    if not os.path.exists(src):
      continue
    dst = os.path.join(target, str(step))
    n = 1
    while os.path.exists(dst):
      dst = os.path.join(target, f'{step}.{n}')
      n += 1
    shutil.move(src, dst)
  return target
