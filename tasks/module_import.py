"""`--module_import` for every entry point: import modules by name so they register tasks.

  from tasks import module_import
  module_import.import_modules(['tasks', 'my_tasks'])

The current directory is put on `sys.path` first, so a `my_tasks.py` beside you is found.
"""
import contextlib
import importlib
import os
import sys
from typing import Iterable, List


class ModuleImportError(ImportError):
  """A `--module_import` module could not be imported."""


def import_modules(names: Iterable[str]) -> List[str]:
  """Imports each dotted module name (comma-separated lists allowed); returns the names imported.

  Raises:
    ModuleImportError: naming the module and the reason (not found, or its own import error).
  """
  cwd = os.getcwd()
  if cwd not in sys.path:
    sys.path.insert(0, cwd)
  done = []
  for entry in names or ():
    for name in (n.strip() for n in entry.split(',')):
      if not name:
        continue
      try:
        importlib.import_module(name)
      except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + '.')):
          raise ModuleImportError(
              f'--module_import={name}: no module named {e.name!r} (looked in the current '
              f'directory {cwd} and sys.path; pass a dotted module name, not a file path)') from e
        raise ModuleImportError(f'--module_import={name}: importing it failed: {e}') from e
      except Exception as e:  # pylint: disable=broad-except  (user code: report, do not crash)
        raise ModuleImportError(
            f'--module_import={name}: importing it raised {type(e).__name__}: {e}') from e
      done.append(name)
  return done


@contextlib.contextmanager
def native_stderr_to(path: str):
  """Sends file descriptor 2 (and so that of child processes started in the block) to `path`.

  Native code (TF, XLA, SentencePiece, Beam's workers) writes straight to fd 2, past Python logging;
  only redirecting the descriptor keeps it out of a tool's output.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  os.dup2(fd, 2)
  os.close(fd)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


@contextlib.contextmanager
def quiet_native_stderr():
  """Sends file descriptor 2 to /dev/null for the block.

  TF/XLA/SentencePiece C++ code writes start-up lines (CUDA probes, absl pre-init warnings,
  `normalizer.cc` notices) straight to fd 2, past Python logging. Entry points wrap imports and
  dataset construction in this; Python exceptions still reach the user (printed after the block).
  """
  with native_stderr_to(os.devnull):
    yield
