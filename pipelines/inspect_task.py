r"""Prints decoded examples of any registered seqio task or mixture.

  python -m pipelines.inspect_task pydoc_ul2 --n=3 --feature_lengths=inputs:128,targets:128
  python -m pipelines.inspect_task my_corpus_prefix_lm --module_import=my_tasks --split=validation

Token features are shown with their token count and decoded text in which special tokens are
visible: mode tokens as `[NLU]`/`[NLG]`/`[S2S]`, sentinels as their pieces (`<extra_id_0>`, or
`<unusedN>` in Gemma-style vocabularies), and `<eos>`/`<pad>`/`<bos>`/`<unk>`.
"""
import difflib
import os
from typing import Dict, List, Mapping, Optional, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import flags  # pylint: disable=g-import-not-at-top
from absl import logging

from tasks import cli  # pylint: disable=g-import-not-at-top

_SPLIT = flags.DEFINE_string('split', 'train', 'Split to read.')
_N = flags.DEFINE_integer('n', 5, 'Number of examples to print.')
_MODULE_IMPORT = flags.DEFINE_multi_string(
    'module_import', ['tasks'], 'Modules to import (they register tasks); repeatable, or '
    'comma-separated.')
_FEATURE_LENGTHS = flags.DEFINE_string(
    'feature_lengths', None, 'Feature lengths, e.g. inputs:512,targets:512 (default: 512 for '
    'every token feature of the task).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed for the task\'s random preprocessors.')
_VOCAB = flags.DEFINE_string(
    'vocab', None, 'SentencePiece .model for the built-in tasks (sets $GEMMA_ADAPT_VOCAB before '
    '--module_import runs).')
_SHUFFLE = flags.DEFINE_boolean('shuffle', False, 'Shuffle the examples.')

DEFAULT_LENGTH = 512


class InspectError(cli.UserError, ValueError):
  """A user error with a message meant for the command line."""


def parse_feature_lengths(text: Optional[str]) -> Optional[Dict[str, int]]:
  """'inputs:512,targets:128' -> {'inputs': 512, 'targets': 128}; None/'' -> None."""
  if not text:
    return None
  out = {}
  for part in text.split(','):
    name, sep, value = part.partition(':')
    if not sep or not name.strip() or not value.strip().isdigit() or int(value) <= 0:
      raise InspectError(f'--feature_lengths: expected name:positive_int pairs like '
                         f'inputs:512,targets:512, got {part!r} in {text!r}')
    out[name.strip()] = int(value)
  return out


def get_provider(name: str):
  """The registered task or mixture `name`; an `InspectError` listing close names otherwise."""
  import seqio  # pylint: disable=g-import-not-at-top
  names = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
  if name not in names:
    close = difflib.get_close_matches(name, names, n=8, cutoff=0.5)
    close += [n for n in names if name and name in n and n not in close][:8 - len(close)]
    hint = (f' Close names: {", ".join(close)}.' if close else
            f' {len(names)} names are registered; is the module that registers it imported '
            '(--module_import=...)?')
    raise InspectError(f'Unknown task or mixture {name!r}.{hint}')
  return seqio.get_mixture_or_task(name)


def _token_features(provider) -> List[str]:
  return [k for k, f in provider.output_features.items()
          if getattr(f, 'rank', 1) == 1 and f.dtype.is_integer and
          type(f.vocabulary).__name__ != 'PassThroughVocabulary']


def render_ids(ids: Sequence[int], vocabulary, special=None) -> str:
  """Decoded text with special tokens visible (no cut at EOS, unlike `vocabulary.decode`)."""
  sp = getattr(vocabulary, 'tokenizer', None)
  if sp is None:
    return vocabulary.decode(list(ids))
  names = {}
  for attr, label in (('pad_id', '<pad>'), ('eos_id', '<eos>'), ('bos_id', '<bos>'),
                      ('unk_id', '<unk>')):
    i = getattr(sp, attr)()
    if i is not None and i >= 0:
      names[i] = label
  if special is not None:
    names.update(special.piece_of_id)
    names.update({i: m for m, i in special.mode_ids.items()})
  out, run = [], []
  for i in ids:
    i = int(i)
    if i in names or i >= sp.get_piece_size():
      if run:
        out.append(sp.decode(run))
        run = []
      out.append(names.get(i, f'<id {i} out of vocabulary>'))
    else:
      run.append(i)
  if run:
    out.append(sp.decode(run))
  return ''.join(out)


def _special_tokens(vocabulary):
  from tasks import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  try:
    return vocab_lib.special_tokens(vocabulary)
  except (ValueError, AttributeError, TypeError):
    return None


def format_examples(task_name: str, *, split: str = 'train', n: int = 5,
                    feature_lengths: Optional[Mapping[str, int]] = None, seed: int = 0,
                    shuffle: bool = False) -> str:
  """Text showing the first `n` examples of `task_name` (a registered task or mixture)."""
  provider = get_provider(task_name)
  token_features = _token_features(provider)
  lengths = dict(feature_lengths or {k: DEFAULT_LENGTH for k in token_features})
  unknown = sorted(set(lengths) - set(provider.output_features))
  if unknown:
    raise InspectError(f'--feature_lengths names {unknown}, which {task_name!r} does not have; '
                       f'its features: {sorted(provider.output_features)}')
  if split not in provider.splits:
    raise InspectError(f'{task_name!r} has no split {split!r}; splits: {list(provider.splits)}')
  ds = provider.get_dataset(lengths, split=split, shuffle=shuffle, seed=seed, num_epochs=1)
  vocabs = {k: provider.output_features[k].vocabulary for k in token_features}
  specials = {k: _special_tokens(v) for k, v in vocabs.items()}
  lines = [f'{task_name} [{split}] feature lengths {lengths}']
  legend = next((s for s in specials.values() if s is not None), None)
  if legend is not None and legend.style != 'extra_id':
    lines.append('  special tokens: ' + ', '.join(
        f'{m}={legend.mode_pieces[m]}' for m in legend.mode_ids) +
                 f'; sentinel i = {legend.sentinel_pieces[0][:-2]}{{i+3}}>')
  count = 0
  for count, ex in enumerate(ds.take(n).as_numpy_iterator(), start=1):
    lines.append(f'--- example {count}')
    for key, value in ex.items():
      if key in vocabs:
        ids = value.tolist()
        lines.append(f'  {key} ({len(ids)} tokens): {render_ids(ids, vocabs[key], specials[key])}')
      elif isinstance(value, bytes):
        lines.append(f'  {key}: {value.decode("utf-8", "backslashreplace")}')
      else:
        lines.append(f'  {key}: {value.tolist() if hasattr(value, "tolist") else value}')
  if count == 0:
    lines.append('  (no examples)')
  return '\n'.join(lines)


def main(argv):
  if len(argv) != 2:
    raise cli.UserError('usage: python -m pipelines.inspect_task TASK [--split=train] [--n=5] '
                        '[--module_import=MODULE] [--feature_lengths=inputs:N,targets:M]')
  logging.set_verbosity(logging.ERROR)
  if _VOCAB.value:
    os.environ['GEMMA_ADAPT_VOCAB'] = os.path.abspath(os.path.expanduser(_VOCAB.value))
  try:
    with cli.quiet_native_stderr():
      cli.import_modules(_MODULE_IMPORT.value)
      text = format_examples(argv[1], split=_SPLIT.value, n=_N.value,
                             feature_lengths=parse_feature_lengths(_FEATURE_LENGTHS.value),
                             seed=_SEED.value, shuffle=_SHUFFLE.value)
  except cli.UserError:
    raise
  except (FileNotFoundError, ValueError) as e:
    raise cli.UserError(str(e)) from e
  print(text)
  return 0


if __name__ == '__main__':
  cli.main_exit(main, program='inspect_task')
