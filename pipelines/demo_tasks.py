"""Tasks for `python -m pipelines.demo` on a corpus you give it: `demo_<objective>`.

Loaded with `--module_import=pipelines.demo_tasks`. The corpus comes from environment variables
(set by the demo, so every stage's command sees the same tasks):

  GEMMA_ADAPT_DEMO_TRAIN        glob(s) of the training files (comma separated)
  GEMMA_ADAPT_DEMO_VALIDATION   glob(s) of the held-out files
  GEMMA_ADAPT_DEMO_FORMAT       'text' (one document a line), 'paragraphs' (blank-line separated)
                                or 'jsonl'
  GEMMA_ADAPT_DEMO_TEXT_FIELD   the JSONL field holding the text (default 'text')

and the vocabulary from `$GEMMA_ADAPT_VOCAB` (see `tasks.vocab`). It registers `demo_prefix_lm`,
`demo_ul2`, `demo_span_corruption`, `demo_causal_lm` and the mixture `demo_ul2_prefix_lm`, exactly as
`tasks.pretraining.register_corpus_tasks` does for any corpus.
"""
import os

from tasks import pretraining
from tasks import sources

_FORMATS = {
    'text': dict(format='text', text_mode='line'),
    'paragraphs': dict(format='text', text_mode='paragraph'),
    'jsonl': dict(format='jsonl'),
}


def demo_corpus() -> sources.CorpusSpec:
  """The corpus named by the GEMMA_ADAPT_DEMO_* variables."""
  train = os.environ.get('GEMMA_ADAPT_DEMO_TRAIN')
  validation = os.environ.get('GEMMA_ADAPT_DEMO_VALIDATION')
  fmt = os.environ.get('GEMMA_ADAPT_DEMO_FORMAT', 'text')
  if not train or not validation:
    raise ValueError('pipelines.demo_tasks needs GEMMA_ADAPT_DEMO_TRAIN and '
                     'GEMMA_ADAPT_DEMO_VALIDATION (globs of text/JSONL files)')
  if fmt not in _FORMATS:
    raise ValueError(f'GEMMA_ADAPT_DEMO_FORMAT must be one of {sorted(_FORMATS)}, got {fmt!r}')
  return sources.CorpusSpec(
      name='demo',
      splits={'train': tuple(train.split(',')), 'validation': tuple(validation.split(','))},
      text_field=os.environ.get('GEMMA_ADAPT_DEMO_TEXT_FIELD', 'text'),
      **_FORMATS[fmt])


pretraining.register_corpus_tasks(corpus=demo_corpus())
