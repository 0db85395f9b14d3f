"""The built-in corpus, `pydoc`: needs no download and no data beside the checkout.

Its text is Python's own reference documentation, `pydoc_data.topics` (the pages `help('if')`
shows), which ships with every CPython installation (about 465k characters of English technical
prose in 79 topics). On first use the topics are written, deterministically, as plain text to
`$GEMMA_ADAPT_DATA/pydoc/{train,validation}.txt` (default `~/.cache/gemma_adapt/corpora`): topics in
sorted order, every 10th topic in `validation`, the rest in `train`. Documents are paragraphs
(blank-line separated), so the train file is also a ready input for
`python -m pipelines.train_vocab --input=<that file>`.
"""
import functools
import os
from typing import Optional

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


def prepare_pydoc_corpus(out: str) -> None:
  """Writes the pydoc corpus files into directory `out` if missing (atomically; idempotent)."""
  if all(os.path.isfile(os.path.join(out, f'{s}.txt')) for s in ('train', 'validation')):
    return
  os.makedirs(out, exist_ok=True)
  for split, text in pydoc_split_texts().items():
    path = os.path.join(out, f'{split}.txt')
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(text)
    os.replace(tmp, path)


def pydoc_corpus(directory: Optional[str] = None) -> sources.CorpusSpec:
  """The pydoc corpus, its files in `directory` (default `pydoc_dir()`), written on first use."""
  out = os.path.expanduser(directory) if directory else pydoc_dir()
  return sources.CorpusSpec(
      name='pydoc', format='text', text_mode='paragraph',
      splits={'train': os.path.join(out, 'train.txt'),
              'validation': os.path.join(out, 'validation.txt')},
      prepare=functools.partial(prepare_pydoc_corpus, out))
