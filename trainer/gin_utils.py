"""Gin at the edge: flag parsing for entry points, and bad configuration as ONE clear message.

Entry points accept (T5X conventions):
  --gin_file=PATH            (repeatable; resolved against --gin_search_paths, the current directory
                              and this repository's root, so `gin/models/x.gin` works from anywhere)
  --gin.NAME=VALUE           (repeatable; a binding, e.g. --gin.MODEL_DIR="'/tmp/run'" or
                              --gin.models.DecoderOnlyModel.z_loss=0.0)
  --gin_bindings=BINDING     (repeatable; same, T5X's older spelling)
  --gin_search_paths=A,B     (comma-separated directories)
  --module_import=MODULE     (repeatable; imported before the gin files, e.g. to register tasks)

Gin files use `from __gin__ import dynamic_registration` (T5X style), so library functions carry no
gin decorators. Errors caught here and printed as one line, without a traceback (set
GIN_TRACEBACK=1 to see it): an unknown configurable or parameter, a binding of a macro that no gin
file defines (a typo such as --gin.TRAN_STEPS=5), a `%gin.REQUIRED` macro left unset, a value of the
wrong type or range (our configs validate and name the field), a missing gin file.
"""
import dataclasses
import importlib
import os
import re
import sys
from typing import Callable, List, Optional, Sequence

import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigError(Exception):
  """Bad configuration or flags; its message is shown to the user as is."""


@dataclasses.dataclass
class Flags:
  gin_files: List[str] = dataclasses.field(default_factory=list)
  gin_bindings: List[str] = dataclasses.field(default_factory=list)
  gin_search_paths: List[str] = dataclasses.field(default_factory=list)
  module_imports: List[str] = dataclasses.field(default_factory=list)
  extra: dict = dataclasses.field(default_factory=dict)


def parse_flags(argv: Sequence[str], *, extra_flags: Sequence[str] = ()) -> Flags:
  """Parses the gin flags (and `--NAME=VALUE` for NAME in `extra_flags`)."""
  flags = Flags()
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    if not arg.startswith('--'):
      raise ConfigError(f'unexpected argument {arg!r} (flags look like --gin_file=PATH)')
    name, eq, value = arg[2:].partition('=')
    if not eq:
      if i + 1 < len(args) and not args[i + 1].startswith('--'):
        value = args[i + 1]
        i += 1
      else:
        raise ConfigError(f'flag --{name} needs a value (--{name}=VALUE)')
    i += 1
    if name.startswith('gin.'):
      flags.gin_bindings.append(f'{name[4:]}={value}')
    elif name in ('gin_bindings', 'gin_binding'):
      flags.gin_bindings.append(value)
    elif name == 'gin_file':
      flags.gin_files.append(value)
    elif name == 'gin_search_paths':
      flags.gin_search_paths.extend(p for p in value.split(',') if p)
    elif name == 'module_import':
      flags.module_imports.append(value)
    elif name in extra_flags:
      flags.extra[name] = value
    else:
      known = ['--gin_file', '--gin.NAME', '--gin_bindings', '--gin_search_paths',
               '--module_import'] + [f'--{f}' for f in extra_flags]
      raise ConfigError(f'unknown flag --{name} (known: {", ".join(known)})')
  return flags


_MACRO_BINDING = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=')
_REQUIRED = re.compile(r'^(\S+)/macro\.value set to `%gin\.REQUIRED`')


def _macro_defined(name: str) -> bool:
  try:
    gin.query_parameter(f'%{name}')
    return True
  except ValueError:
    return False


def _one_line(e: BaseException) -> str:
  message = str(e).strip() or type(e).__name__
  lines = [l.strip() for l in message.splitlines() if l.strip()]
  first = lines[0]
  if first.startswith('in user code') or first.startswith('in converted code'):
    # TF autograph: the real error is the last line that is not a gin context line.
    body = [l for l in lines if not l.startswith('In call to configurable') and
            not l.startswith('File "')]
    first = body[-1]
  required = _REQUIRED.match(first)
  if required:
    name = required.group(1)
    return f'required gin macro {name} is not set: pass --gin.{name}=VALUE'
  if first.startswith('Required bindings for'):
    return first
  context = [l for l in lines[1:] if l.startswith('In call to configurable') or
             l.startswith('In bindings string') or l.startswith('In file')]
  return first + (f' ({context[0]})' if context else '')


def setup_gin(flags: Flags, *, finalize: bool = True, prelude: Sequence[str] = ()) -> None:
  """Imports modules, parses gin files, checks macro bindings, then parses the bindings.

  `prelude`: gin lines an entry point parses after the files and before the flag bindings.
  """
  for module in flags.module_imports:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise ConfigError(f'--module_import={module}: cannot import it ({e})') from e
  for path in [REPO_ROOT, os.getcwd()] + list(flags.gin_search_paths):
    gin.add_config_file_search_path(path)
  if not flags.gin_files:
    raise ConfigError('no --gin_file given (e.g. --gin_file=gin/models/gemma2_tiny.gin '
                      '--gin_file=gin/runs/pretrain.gin)')
  for path in flags.gin_files:
    found = os.path.exists(path) or any(
        os.path.exists(os.path.join(p, path)) for p in [REPO_ROOT] + list(flags.gin_search_paths))
    if not found:
      raise ConfigError(f'--gin_file={path}: file not found (searched ., {REPO_ROOT} and '
                        f'--gin_search_paths)')
  try:
    gin.parse_config_files_and_bindings(flags.gin_files, None, finalize_config=False)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'gin file error: {_one_line(e)}') from e
  if prelude:
    gin.parse_config('\n'.join(prelude))
  for binding in flags.gin_bindings:
    macro = _MACRO_BINDING.match(binding)
    if macro and '.' not in macro.group(1) and not _macro_defined(macro.group(1)):
      raise ConfigError(f'--gin.{binding}: unknown gin macro {macro.group(1)!r}; no gin file '
                        f'defines it ({", ".join(flags.gin_files)})')
    try:
      gin.parse_config(binding)
    except Exception as e:  # pylint: disable=broad-except
      raise ConfigError(f'--gin.{binding}: {_one_line(e)}') from e
  if finalize:
    try:
      gin.finalize()
    except Exception as e:  # pylint: disable=broad-except
      raise ConfigError(_one_line(e)) from e


def split_gin_bindings(argv: Sequence[str]):
  """(bindings, rest): `--gin.NAME=VALUE` flags as gin binding strings, and the other arguments.

  For argparse entry points (adapt, export_hf) that accept T5X-style bindings for gin model files.
  """
  bindings = [a[len('--gin.'):].replace('=', ' = ', 1) for a in argv if a.startswith('--gin.')]
  return bindings, [a for a in argv if not a.startswith('--gin.')]


def quiet_absl_logging() -> None:
  """Orbax and others log warnings through absl; a command-line tool shows only its own output."""
  try:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.set_verbosity(absl_logging.ERROR)
  except ImportError:
    pass


def help_text(main: Callable[[Flags], int], *, extra_flags: Sequence[str] = ()) -> str:
  """`--help`: the entry point's module docstring, then the flags every gin entry point takes."""
  module_doc = (sys.modules.get(main.__module__).__doc__ or '').strip()
  flags_doc = __doc__.split('Entry points accept (T5X conventions):', 1)[1]
  flags_doc = flags_doc.split('\n\n', 1)[0].rstrip()
  extra = ''.join(f'\n  --{name}=VALUE' for name in extra_flags)
  return f'{module_doc}\n\nFlags:{flags_doc}{extra}\n  --help                     (this text)'


def run(main: Callable[[Flags], int], argv: Optional[Sequence[str]] = None, *,
        extra_flags: Sequence[str] = (), program: str = '', prelude: Sequence[str] = ()) -> int:
  """Parses flags + gin and calls `main(flags)`; configuration errors become one line on stderr.

  Errors of configuration (gin, our configs' validation: ValueError/TypeError raised while gin
  builds and calls the configured objects, missing files) exit with status 2.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  argv = sys.argv[1:] if argv is None else argv
  if any(a in ('-h', '--help', '--helpfull') for a in argv):
    print(help_text(main, extra_flags=extra_flags))
    return 0
  show_traceback = os.environ.get('GIN_TRACEBACK', '') not in ('', '0')
  try:
    flags = parse_flags(argv, extra_flags=extra_flags)
    setup_gin(flags, prelude=prelude)
    return main(flags) or 0
  except ConfigError as e:
    if show_traceback:
      raise
    print(f'{program or "error"}: {e}', file=sys.stderr)
    return 2
  except (ValueError, TypeError, FileNotFoundError) as e:
    if show_traceback:
      raise
    print(f'{program or "error"}: {_one_line(e)}  [GIN_TRACEBACK=1 shows the traceback]',
          file=sys.stderr)
    return 2
