r"""Writes a built-in corpus as plain-text files, for stages that read files (e.g. train_vocab).

  python -m pipelines.prepare_corpus --corpus=pydoc --output_dir=/tmp/corpora

writes OUTPUT_DIR/pydoc/{train,validation}.txt (blank-line-separated paragraphs; see
`tasks.builtin`) and prints their paths and sizes. Idempotent: existing files are kept.
"""
import argparse
import os
import sys

from tasks import builtin

CORPORA = ('pydoc',)


def prepare(*, corpus: str, output_dir: str) -> dict:
  """Writes `corpus` under output_dir/<corpus>/ and returns {split: path}."""
  if corpus not in CORPORA:
    raise ValueError(f'--corpus must be one of {CORPORA}, got {corpus!r}')
  out = os.path.join(os.path.abspath(os.path.expanduser(output_dir)), corpus)
  builtin.prepare_pydoc_corpus(out)
  return {split: os.path.join(out, f'{split}.txt') for split in ('train', 'validation')}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m pipelines.prepare_corpus',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--corpus', default='pydoc', help=f'one of {CORPORA}')
  parser.add_argument('--output_dir', default=builtin.data_dir(),
                      help=f'default ${builtin.DATA_ENV} or {builtin.DEFAULT_DATA_DIR}')
  args = parser.parse_args(argv)
  try:
    paths = prepare(corpus=args.corpus, output_dir=args.output_dir)
  except (ValueError, OSError) as e:
    print(f'ERROR: {e}', file=sys.stderr)
    return 2
  for split, path in paths.items():
    with open(path, encoding='utf-8') as f:
      text = f.read()
    docs = sum(1 for p in text.split('\n\n') if p.strip())
    print(f'{split:10s} {path}  ({len(text):,} characters, {docs:,} paragraphs)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
