r"""Writes a built-in corpus as plain-text files, for stages that read files (e.g. train_vocab).

  python -m pipelines.prepare_corpus --corpus=pydoc --output_dir=/tmp/corpora
  python -m pipelines.prepare_corpus --corpus=docstrings --output_dir=/tmp/corpora

writes OUTPUT_DIR/<corpus>/{train,validation}.txt (blank-line-separated paragraphs; see
`tasks.builtin`) and prints their paths and sizes. Idempotent: existing files are kept.
"""
import os
from typing import Sequence

from absl import flags

from tasks import builtin
from tasks import cli

CORPORA = tuple(builtin.PREPARE)

_CORPUS = flags.DEFINE_string('corpus', 'pydoc', f'one of {CORPORA}')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', builtin.data_dir(),
                                  f'default ${builtin.DATA_ENV} or {builtin.DEFAULT_DATA_DIR}')


def prepare(*, corpus: str, output_dir: str) -> dict:
  """Writes `corpus` under output_dir/<corpus>/ and returns {split: path}."""
  if corpus not in CORPORA:
    raise cli.UserError(f'--corpus must be one of {CORPORA}, got {corpus!r}')
  out = os.path.join(os.path.abspath(os.path.expanduser(output_dir)), corpus)
  builtin.PREPARE[corpus](out)
  return {split: os.path.join(out, f'{split}.txt') for split in ('train', 'validation')}


def main(argv: Sequence[str]) -> int:
  del argv
  try:
    paths = prepare(corpus=_CORPUS.value, output_dir=_OUTPUT_DIR.value)
  except OSError as e:
    raise cli.UserError(f'--output_dir: {e}') from e
  for split, path in paths.items():
    with open(path, encoding='utf-8') as f:
      text = f.read()
    docs = sum(1 for p in text.split('\n\n') if p.strip())
    print(f'{split:10s} {path}  ({len(text):,} characters, {docs:,} paragraphs)')
  return 0


if __name__ == '__main__':
  cli.main_exit(main, program='prepare_corpus')
