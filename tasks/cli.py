"""What every command line of the project shares: absl flags, one user-error class, quiet start-up.

An entry point parses its absl flags, calls library functions with keyword arguments, and lets a
`UserError` (bad flag, bad configuration, bad input file) end the run as ONE line on stderr with
exit status 2:

  from absl import flags
  from tasks import cli

  _N = flags.DEFINE_integer('n', 5, 'How many.')

  def main(argv):
    if _N.value < 1:
      raise cli.UserError(f'--n={_N.value}: must be >= 1')
    ...

  if __name__ == '__main__':
    cli.run(main, program='my_tool')

`--module_import=MODULE` (every entry point that reads tasks has it) imports modules by name so they
register tasks; `cli.import_modules(['tasks', 'my_tasks'])` is the library form. The current
directory is put on `sys.path` first, so a `my_tasks.py` beside you is found.

This module imports no TensorFlow, JAX or gin.
"""
import contextlib
import importlib
import os
import sys
from typing import Callable, Iterable, List, Optional, Sequence

TRACEBACK_ENV = 'GIN_TRACEBACK'
VERBOSE_TF_ENV = 'GEMMA_ADAPT_VERBOSE_TF'


class UserError(Exception):
  """A mistake the user can fix (flag, configuration, input file); printed as one line, exit 2."""


class ModuleImportError(UserError, ImportError):
  """A `--module_import` module could not be imported."""


def import_modules(names: Iterable[str]) -> List[str]:
  """Imports each dotted module name (comma-separated lists allowed); returns the names imported.

  A module that defines `register_tasks()` (as `tasks` does, for the built-in tasks) has it called
  after the import: importing a helper module registers nothing by itself.

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
        module = importlib.import_module(name)
        register = getattr(module, 'register_tasks', None)
        if callable(register):
          register()
      except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + '.')):
          raise ModuleImportError(
              f'--module_import={name}: no module named {e.name!r} (looked in the current '
              f'directory {cwd} and sys.path; pass a dotted module name, not a file path)') from e
        raise ModuleImportError(f'--module_import={name}: importing it failed: {e}') from e
      except UserError:
        raise
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
  """Sends file descriptor 2 to /dev/null for the block (native start-up lines of TF/XLA/SPM).

  Python exceptions raised in the block still reach the user: they are printed after it. Set
  GEMMA_ADAPT_VERBOSE_TF=1 to see the native lines.
  """
  if os.environ.get(VERBOSE_TF_ENV, '') not in ('', '0'):
    yield
    return
  with native_stderr_to(os.devnull):
    yield


def quiet_absl_logging() -> None:
  """Orbax, seqio and others log through absl; a command-line tool shows only its own output."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.ERROR)


def one_line(e: BaseException) -> str:
  """The first non-empty line of an exception's message (its type name when it has none)."""
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return lines[0] if lines else type(e).__name__


def show_tracebacks() -> bool:
  return os.environ.get(TRACEBACK_ENV, '') not in ('', '0')


def run(main: Callable[[List[str]], Optional[int]], *, program: str,
        argv: Optional[Sequence[str]] = None,
        rewrite_args: Optional[Callable[[List[str]], List[str]]] = None) -> int:
  """Parses absl flags, calls `main(argv)` and returns its exit status (does not exit).

  A flag error or a `UserError` becomes `PROGRAM: MESSAGE` on stderr and status 2 (set
  GIN_TRACEBACK=1 to see the traceback instead). `--help` prints the calling module's docstring and
  its flags. `rewrite_args` may rewrite argv before absl parses it (the gin entry points turn
  `--gin.NAME=VALUE` into `--gin_bindings`).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  argv = list(sys.argv if argv is None else argv)
  if rewrite_args is not None:
    argv = [argv[0]] + rewrite_args(argv[1:])
  fl = flags.FLAGS
  if any(a in ('-h', '--help', '--helpshort', '--helpfull') for a in argv[1:]):
    module = sys.modules.get(main.__module__)
    print((getattr(module, '__doc__', None) or '').strip())
    print('\nFlags:')
    print(fl.module_help(module) if module is not None else fl.main_module_help())
    return 0
  try:
    rest = fl(argv)
  except flags.Error as e:
    print(f'{program}: {e}', file=sys.stderr)
    return 2
  try:
    return main(rest) or 0
  except UserError as e:
    if show_tracebacks():
      raise
    print(f'{program}: {e}', file=sys.stderr)
    return 2


def exit_process(status: int) -> None:
  """Ends a command-line process with `status`; after a failure, without interpreter teardown.

  A failed run can leave TF/orbax background threads behind (a tf.data generator thread, orbax's
  async reads); tearing them down at interpreter exit can hang or print pages of "Event loop is
  closed" tracebacks after the one-line error. Nothing is left to flush once the error is printed,
  so a non-zero status exits at once (os._exit), after flushing stdout/stderr.
  """
  if status:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access
  sys.exit(status)


def main_exit(main: Callable[[List[str]], Optional[int]], *, program: str, **kwargs) -> None:
  """`if __name__ == '__main__': cli.main_exit(main, program=...)`: run() then exit_process."""
  exit_process(run(main, program=program, **kwargs))
