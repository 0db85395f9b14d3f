"""Gin at the edge: the gin flags of every gin entry point, and bad configuration as ONE line.

Flags (absl, T5X conventions):
  --gin_file=PATH            (repeatable; resolved against --gin_search_paths, the current directory
                              and this repository's root, so `gin/models/x.gin` works from anywhere)
  --gin.NAME=VALUE           (repeatable; a binding, e.g. --gin.MODEL_DIR="'/tmp/run'" or
                              --gin.models.DecoderOnlyModel.z_loss=0.0; rewritten to --gin_bindings
                              before absl parses the command line)
  --gin_bindings=BINDING     (repeatable; same, T5X's older spelling)
  --gin_search_paths=A,B     (comma-separated directories)
  --module_import=MODULE     (repeatable; imported before the gin files, e.g. to register tasks)

Gin files use `from __gin__ import dynamic_registration` (T5X style), so library functions carry no
gin decorators; gin is imported only here and by the entry points. Errors printed as one line,
without a traceback (set GIN_TRACEBACK=1 to see it): an unknown configurable or parameter, a
binding of a macro that no gin file defines (a typo such as --gin.TRAN_STEPS=5), a `%gin.REQUIRED`
macro left unset, a value of the wrong type or range (our configs validate and name the field), a
missing gin file.
"""
import os
import re
from typing import Callable, List, Optional, Sequence

from absl import flags
import gin

from tasks import cli

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# allow_override: a test process may also import another tool that defines a flag of this name.
GIN_FILE = flags.DEFINE_multi_string(
    'gin_file', [], 'Gin file (repeatable); searched in --gin_search_paths, . and the repo root.',
    allow_override=True)
GIN_BINDINGS = flags.DEFINE_multi_string(
    'gin_bindings', [], "Gin binding (repeatable), e.g. --gin_bindings='TRAIN_STEPS = 10'; "
    'or --gin.TRAIN_STEPS=10.', allow_override=True)
GIN_SEARCH_PATHS = flags.DEFINE_list(
    'gin_search_paths', [], 'Comma-separated directories to look for gin files in.',
    allow_override=True)
MODULE_IMPORT = flags.DEFINE_multi_string(
    'module_import', [], 'Module to import first (repeatable; comma lists ok), e.g. to register '
    'tasks.', allow_override=True)


class ConfigError(cli.UserError):
  """Bad configuration or flags; its message is shown to the user as is."""


def rewrite_gin_args(args: Sequence[str]) -> List[str]:
  """`--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE`; other arguments unchanged."""
  out = []
  for arg in args:
    if arg.startswith('--gin.'):
      name, eq, value = arg[len('--gin.'):].partition('=')
      if not eq:
        raise ConfigError(f'flag --gin.{name} needs a value (--gin.{name}=VALUE)')
      arg = f'--gin_bindings={name} = {value}'
    out.append(arg)
  return out


_MACRO_BINDING = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=')
_BINDING = re.compile(r'^\s*([^=\s]+)\s*=\s*(.*)$', re.S)
_REQUIRED = re.compile(r'^(\S+)/macro\.value set to `%gin\.REQUIRED`')
_UNBOUND_MACRO = re.compile(r"^No bindings specified for '([A-Za-z_][A-Za-z0-9_.]*)/gin\.macro'")
# Macros that a model file (gin/models/*.gin) defines and run files (gin/runs/*.gin) use.
MODEL_FILE_MACROS = ('MODEL', 'Z_LOSS', 'DROPOUT_RATE', 'ACTIVATION_DTYPE', 'PARAM_DTYPE', 'REMAT',
                     'SCAN_LAYERS', 'VOCAB_SIZE')


def _as_flag(binding: str) -> str:
  m = _BINDING.match(binding)
  return f'--gin.{m.group(1)}={m.group(2)}' if m else f'--gin_bindings={binding}'


def _macro_defined(name: str) -> bool:
  try:
    gin.query_parameter(f'%{name}')
    return True
  except ValueError:
    return False


def one_line(e: BaseException) -> str:
  """The message of a gin (or TF autograph) error as one line, with gin's context if any."""
  message = str(e).strip() or type(e).__name__
  lines = [l.strip() for l in message.splitlines() if l.strip()]
  first = lines[0]
  if first.startswith('in user code') or first.startswith('in converted code'):
    # TF autograph: the real error is the last line that is not a gin context line.
    body = [l for l in lines if not l.startswith('In call to configurable') and
            not l.startswith('File "')]
    first = body[-1]
  unbound = _UNBOUND_MACRO.match(first)
  if unbound:
    name = unbound.group(1)
    if name in MODEL_FILE_MACROS:
      return (f'gin macro {name} is not defined: no model file given (add one of '
              f'gin/models/*.gin, e.g. --gin_file=gin/models/gemma2_tiny.gin, before the run file)')
    return f'gin macro {name} is not defined by any gin file: pass --gin.{name}=VALUE'
  required = _REQUIRED.match(first)
  if required:
    name = required.group(1)
    return f'required gin macro {name} is not set: pass --gin.{name}=VALUE'
  if first.startswith('Required bindings for'):
    return first
  context = [l for l in lines[1:] if l.startswith('In call to configurable') or
             l.startswith('In bindings string') or l.startswith('In file')]
  return first + (f' ({context[0]})' if context else '')


def setup_gin(*, gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
              gin_search_paths: Sequence[str] = (), module_imports: Sequence[str] = (),
              finalize: bool = True, prelude: Sequence[str] = ()) -> None:
  """Imports modules, parses gin files, checks macro bindings, then parses the bindings.

  `prelude`: gin lines an entry point parses after the files and before the flag bindings.
  """
  cli.import_modules(module_imports)
  for path in [REPO_ROOT, os.getcwd()] + list(gin_search_paths):
    gin.add_config_file_search_path(path)
  if not gin_files:
    raise ConfigError('no --gin_file given (e.g. --gin_file=gin/models/gemma2_tiny.gin '
                      '--gin_file=gin/runs/pretrain.gin)')
  for path in gin_files:
    found = os.path.exists(path) or any(
        os.path.exists(os.path.join(p, path)) for p in [REPO_ROOT] + list(gin_search_paths))
    if not found:
      raise ConfigError(f'--gin_file={path}: file not found (searched ., {REPO_ROOT} and '
                        f'--gin_search_paths)')
  try:
    gin.parse_config_files_and_bindings(list(gin_files), None, finalize_config=False)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'gin file error: {one_line(e)}') from e
  if prelude:
    gin.parse_config('\n'.join(prelude))
  for binding in gin_bindings:
    macro = _MACRO_BINDING.match(binding)
    if macro and '.' not in macro.group(1) and not _macro_defined(macro.group(1)):
      raise ConfigError(f'{_as_flag(binding)}: unknown gin macro {macro.group(1)!r}; no gin file '
                        f'defines it ({", ".join(gin_files)})')
    try:
      gin.parse_config(binding)
    except Exception as e:  # pylint: disable=broad-except
      raise ConfigError(f'{_as_flag(binding)}: {one_line(e)}') from e
  if finalize:
    try:
      gin.finalize()
    except Exception as e:  # pylint: disable=broad-except
      raise ConfigError(one_line(e)) from e


def setup_gin_from_flags(*, prelude: Sequence[str] = ()) -> None:
  """`setup_gin` with the parsed --gin_file/--gin_bindings/--gin_search_paths/--module_import."""
  setup_gin(gin_files=GIN_FILE.value, gin_bindings=GIN_BINDINGS.value,
            gin_search_paths=GIN_SEARCH_PATHS.value, module_imports=MODULE_IMPORT.value,
            prelude=prelude)


def configured(fn: Callable, *, hint: str) -> Callable:
  """`fn` with its gin bindings; ConfigError naming `hint` (the gin file to add) when none."""
  try:
    return gin.get_configurable(fn)
  except ValueError as e:
    raise ConfigError(hint) from e


def config_from_gin(gin_files: Sequence[str], gin_bindings: Sequence[str] = ()):
  """The model config a gin model file builds (EncoderDecoderConfig, else TransformerConfig).

  Parses into a clean gin state and clears it afterwards. `gin_bindings` like 'VOCAB_SIZE = 1000'.
  """
  from trainer.model import config as config_lib  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    setup_gin(gin_files=gin_files, gin_bindings=gin_bindings, finalize=False)
    errors = []
    for cls in (config_lib.EncoderDecoderConfig, config_lib.TransformerConfig):
      try:
        return gin.get_configurable(cls)()
      except (ValueError, TypeError) as e:
        errors.append(f'{cls.__name__}: {str(e).splitlines()[0]}')
    raise ConfigError(f'the gin files {list(gin_files)} do not build a model config '
                      f'({"; ".join(errors)})')
  finally:
    gin.clear_config()


def run(main: Callable[[List[str]], Optional[int]], *, program: str,
        argv: Optional[Sequence[str]] = None, prelude: Sequence[str] = (),
        rewrite_args: Optional[Callable[[List[str]], List[str]]] = None) -> int:
  """Parses the flags, sets gin up and calls `main(argv)`; bad configuration -> one line, exit 2.

  `argv`: the arguments without the program name (default: sys.argv[1:]). Errors of configuration
  (gin, our configs' validation: ValueError/TypeError raised while gin builds and calls the
  configured objects, missing files) exit with status 2.
  """
  import sys  # pylint: disable=g-import-not-at-top

  def gin_main(rest: List[str]) -> Optional[int]:
    if len(rest) > 1:
      raise ConfigError(f'unexpected argument {rest[1]!r} (flags look like --gin_file=PATH)')
    setup_gin_from_flags(prelude=prelude)
    try:
      return main(rest)
    except (ValueError, TypeError, FileNotFoundError) as e:
      raise ConfigError(f'{one_line(e)}  [GIN_TRACEBACK=1 shows the traceback]') from e

  gin_main.__module__ = main.__module__  # --help shows the entry point's docstring and flags

  def rewrite(args: List[str]) -> List[str]:
    return rewrite_gin_args(rewrite_args(args) if rewrite_args else args)

  args = list(sys.argv[1:] if argv is None else argv)
  try:
    args = rewrite(args)
  except ConfigError as e:
    print(f'{program}: {e}', file=sys.stderr)
    return 2
  flags.FLAGS.unparse_flags()
  return cli.run(gin_main, program=program, argv=[program] + args)
