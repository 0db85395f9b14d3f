"""Registers pretraining tasks and mixtures for a corpus: `<corpus>_<objective>`.

  from tasks import pretraining, sources
  pretraining.register_corpus_tasks(
      corpus=sources.CorpusSpec(name='mywiki', format='jsonl', splits={'train': '/data/*.jsonl'}),
      vocabulary='/vocab/spm.model')

registers `mywiki_prefix_lm`, `mywiki_ul2`, `mywiki_span_corruption`, `mywiki_causal_lm` in
`seqio.TaskRegistry` and `mywiki_ul2_prefix_lm` (UL2 and PrefixLM, half each) in
`seqio.MixtureRegistry`.

Every task's preprocessors are, in order:
  rekey(text -> targets), tokenize, append_eos, <objective>
  before: {'text': str}   after: {'inputs': int32[...], 'targets': int32[...]} ({'targets'} for
  causal_lm); see `tasks.objectives`. The objective is last and there is no
  `CacheDatasetPlaceholder`: the Beam cache job runs the whole list itself.
"""
import functools
from typing import Dict, Mapping, Sequence, Tuple, Union

import seqio

from tasks import objectives
from tasks import sources
from tasks import vocab as vocab_lib

OBJECTIVES = ('prefix_lm', 'ul2', 'span_corruption', 'causal_lm')
DEFAULT_MIXTURES: Mapping[str, Mapping[str, float]] = {
    'ul2_prefix_lm': {'ul2': 0.5, 'prefix_lm': 0.5},
}

VocabLike = Union[None, str, seqio.Vocabulary]
# Corpora registered by `register_corpus_tasks`, by name (e.g. for `pipelines.train_vocab --corpus`).
CORPORA: Dict[str, sources.CorpusSpec] = {}


def as_vocabulary(vocabulary: VocabLike) -> seqio.Vocabulary:
  """A vocabulary from a vocabulary, a `.model` path, or None (the default path); never loads."""
  if vocabulary is None or isinstance(vocabulary, str):
    return vocab_lib.get_vocabulary(vocabulary, lazy=True)
  if not isinstance(vocabulary, seqio.Vocabulary):
    raise TypeError(f'vocabulary must be a seqio.Vocabulary, a .model path or None, got '
                    f'{vocabulary!r}')
  return vocabulary


def pretraining_features(vocabulary: seqio.Vocabulary, objective: str
                         ) -> Mapping[str, seqio.Feature]:
  """Output features; `add_eos=True` because `append_eos` ends every document with EOS."""
  targets = seqio.Feature(vocabulary=vocabulary, add_eos=True)
  if objective == 'causal_lm':
    return {'targets': targets}
  return {'inputs': seqio.Feature(vocabulary=vocabulary, add_eos=True), 'targets': targets}


def objective_preprocessor(objective: str, *, prefix_lm_random_split: bool = False,
                           ul2_denoisers: Sequence[Tuple[objectives.Denoiser, float]] = (
                               objectives.UL2_DENOISERS)):
  if objective == 'prefix_lm':
    return functools.partial(objectives.prefix_lm, random_split=prefix_lm_random_split)
  if objective == 'ul2':
    return functools.partial(objectives.ul2, denoisers=tuple(ul2_denoisers))
  if objective == 'span_corruption':
    return objectives.span_corruption
  if objective == 'causal_lm':
    return objectives.causal_lm
  raise ValueError(f'objective must be one of {OBJECTIVES}, got {objective!r}')


def register_corpus_tasks(
    corpus: sources.CorpusSpec,
    vocabulary: VocabLike = None,
    *,
    objectives_to_register: Sequence[str] = OBJECTIVES,
    mixtures: Mapping[str, Mapping[str, float]] = DEFAULT_MIXTURES,
    prefix_lm_random_split: bool = False,
    ul2_denoisers: Sequence[Tuple[objectives.Denoiser, float]] = objectives.UL2_DENOISERS,
    overwrite: bool = True,
) -> Tuple[str, ...]:
  """Registers `<corpus.name>_<objective>` tasks and `<corpus.name>_<mixture>` mixtures.

  Nothing is read here: a missing corpus or vocabulary raises a clear error when a task is used.

  Args:
    corpus: the corpus.
    vocabulary: a seqio vocabulary, a SentencePiece `.model` path, or None for
      `tasks.vocab.default_vocab_path()` ($GEMMA_ADAPT_VOCAB).
    objectives_to_register: subset of `OBJECTIVES`.
    mixtures: mixture suffix -> {objective: rate}; objectives must be registered here.
    prefix_lm_random_split: PrefixLM splits at a uniformly random point (else at inputs length).
    ul2_denoisers: UL2's `((Denoiser, rate), ...)`.
    overwrite: replace tasks/mixtures of the same name (re-registration is idempotent).

  Returns:
    The names registered (tasks, then mixtures).
  """
  if not isinstance(corpus, sources.CorpusSpec):
    raise TypeError(f'corpus must be a tasks.sources.CorpusSpec, got {corpus!r}')
  unknown = [o for o in objectives_to_register if o not in OBJECTIVES]
  if unknown:
    raise ValueError(f'objectives_to_register: unknown {unknown}; known: {list(OBJECTIVES)}')
  objectives.validate_mixture(ul2_denoisers)
  vocabulary = as_vocabulary(vocabulary)
  source = corpus.data_source()
  CORPORA[corpus.name] = corpus
  names = []
  for objective in objectives_to_register:
    name = f'{corpus.name}_{objective}'
    if overwrite:
      seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[
            functools.partial(seqio.preprocessors.rekey, key_map={'targets': 'text'}),
            functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
            seqio.preprocessors.append_eos,
            objective_preprocessor(objective, prefix_lm_random_split=prefix_lm_random_split,
                                   ul2_denoisers=ul2_denoisers),
        ],
        output_features=pretraining_features(vocabulary, objective),
        metric_fns=[],
    )
    names.append(name)
  for suffix, rates in mixtures.items():
    missing = [o for o in rates if o not in objectives_to_register]
    if missing:
      raise ValueError(f'mixtures[{suffix!r}] uses objectives {missing} that are not in '
                       f'objectives_to_register={list(objectives_to_register)}')
    if 'causal_lm' in rates and len(rates) > 1:
      raise ValueError(f'mixtures[{suffix!r}]: causal_lm has no inputs and cannot be mixed with '
                       f'{[o for o in rates if o != "causal_lm"]}')
    name = f'{corpus.name}_{suffix}'
    if overwrite:
      seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, [(f'{corpus.name}_{o}', float(r)) for o, r in rates.items()])
    names.append(name)
  return tuple(names)
