"""The built-in corpora, `pydoc` and `docstrings`: no download, no data beside the interpreter.

- `pydoc`: Python's own reference documentation, `pydoc_data.topics` (the pages `help('if')`
  shows), which ships with every CPython installation (about 465k characters of English technical
  prose in 79 topics). Topics in sorted order, every 10th topic in `validation`, the rest in
  `train`.
- `docstrings`: the docstrings of the interpreter's standard library (what `help(module)` shows:
  module, class and function docstrings), read from its `.py` files with `ast`, so no module is
  imported or run; test packages, `idlelib` and `site-packages` are left out. Files in sorted order,
  every 10th file in `validation` (a module's docstrings stay on one side). The text depends on
  the Python version: CPython 3.11 gives about 1.6M characters from 525 files.

On first use a corpus is written, deterministically, as plain text to
`$GEMMA_ADAPT_DATA/<name>/{train,validation}.txt` (default `~/.cache/gemma_adapt/corpora`).
Documents are paragraphs (blank-line separated), so the train file is also a ready input for
`python -m pipelines.train_vocab --input=<that file>`.
"""
import ast
import functools
import os
import sysconfig
from typing import Dict, Iterator, Optional

from tasks import sources

DATA_ENV = 'GEMMA_ADAPT_DATA'
DEFAULT_DATA_DIR = os.path.join('~', '.cache', 'gemma_adapt', 'corpora')
VALIDATION_EVERY = 10


def data_dir() -> str:
  return os.path.expanduser(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


def pydoc_dir() -> str:
  return os.path.join(data_dir(), 'pydoc')


def pydoc_split_texts():
  """{'train': text, 'validation': text} built from `pydoc_data.topics`."""
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  parts = {'train': [], 'validation': []}
  for i, name in enumerate(sorted(topics.topics)):
    text = topics.topics[name].replace('\r\n', '\n').strip('\n')
    split = 'validation' if i % VALIDATION_EVERY == VALIDATION_EVERY - 1 else 'train'
    parts[split].append(text)
  return {split: '\n\n'.join(texts) + '\n' for split, texts in parts.items()}


# Directories of the standard library whose text is not documentation of the library.
_SKIPPED_DIRS = frozenset({'test', 'tests', 'idle_test', 'idlelib', 'site-packages',
                           'dist-packages', '__pycache__', 'lib2to3'})


def stdlib_files(root: Optional[str] = None) -> Iterator[str]:
  """The standard library's `.py` files under `root` (default: this interpreter's), sorted."""
  root = root or sysconfig.get_paths()['stdlib']
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
    for name in sorted(filenames):
      if name.endswith('.py'):
        yield os.path.join(dirpath, name)


def file_docstrings(path: str) -> list:
  """The module, class and function docstrings of one source file, in source order (cleaned as
  `inspect.cleandoc` does); [] when the file does not parse as this Python's source."""
  try:
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read(), filename=path)
  except (SyntaxError, UnicodeDecodeError, ValueError):
    return []
  kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
  nodes = sorted((n for n in ast.walk(tree) if isinstance(n, kinds)),
                 key=lambda n: getattr(n, 'lineno', 0))
  return [d for d in (ast.get_docstring(n) for n in nodes) if d and d.strip()]


def docstrings_split_texts(root: Optional[str] = None) -> Dict[str, str]:
  """{'train': text, 'validation': text} from the standard library's docstrings.

  Each docstring is one document; its own blank lines become single newlines, so documents stay
  the paragraphs of the file. Every 10th source file (that has docstrings) goes to `validation`.
  """
  parts = {'train': [], 'validation': []}
  i = 0
  for path in stdlib_files(root):
    docs = file_docstrings(path)
    if not docs:
      continue
    split = 'validation' if i % VALIDATION_EVERY == VALIDATION_EVERY - 1 else 'train'
    parts[split] += ['\n'.join(l for l in d.splitlines() if l.strip()) for d in docs]
    i += 1
  return {split: '\n\n'.join(texts) + '\n' for split, texts in parts.items()}


def _write_splits(out: str, split_texts) -> None:
  """Writes {split}.txt into directory `out` if missing (atomically; idempotent)."""
  if all(os.path.isfile(os.path.join(out, f'{s}.txt')) for s in ('train', 'validation')):
    return
  os.makedirs(out, exist_ok=True)
  for split, text in split_texts().items():
    path = os.path.join(out, f'{split}.txt')
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(text)
    os.replace(tmp, path)


def prepare_pydoc_corpus(out: str) -> None:
  """Writes the pydoc corpus files into directory `out` if missing (atomically; idempotent)."""
  _write_splits(out, pydoc_split_texts)


def prepare_docstrings_corpus(out: str) -> None:
  """Writes the docstrings corpus files into directory `out` if missing (atomically; idempotent)."""
  _write_splits(out, docstrings_split_texts)


# Each built-in corpus's writer, by name (`pipelines.prepare_corpus`, the comparison's corpus).
PREPARE = {'pydoc': prepare_pydoc_corpus, 'docstrings': prepare_docstrings_corpus}


def _corpus_spec(name: str, out: str) -> sources.CorpusSpec:
  """Built-in corpus `name` as paragraphs of out/{train,validation}.txt, written on first use."""
  return sources.CorpusSpec(
      name=name, format='text', text_mode='paragraph',
      splits={'train': os.path.join(out, 'train.txt'),
              'validation': os.path.join(out, 'validation.txt')},
      prepare=functools.partial(PREPARE[name], out))


def pydoc_corpus(directory: Optional[str] = None) -> sources.CorpusSpec:
  """The pydoc corpus, its files in `directory` (default `pydoc_dir()`), written on first use."""
  return _corpus_spec('pydoc', os.path.expanduser(directory) if directory else pydoc_dir())


def docstrings_corpus(directory: Optional[str] = None) -> sources.CorpusSpec:
  """The standard library's docstrings, files in `directory` (default
  `$GEMMA_ADAPT_DATA/docstrings`), written on first use."""
  return _corpus_spec('docstrings', os.path.expanduser(directory) if directory
                      else os.path.join(data_dir(), 'docstrings'))
