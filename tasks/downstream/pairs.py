"""The two forms of a downstream example (text-to-text and encoder) and sentence-pair handling.

Text-to-text (encoder-decoder / decoder; T5's convention, each part labelled):
  before: {'premise': 'A man sleeps.', 'hypothesis': 'A person rests.', 'label': 0}
  after:  {'inputs': 'mnli premise: A man sleeps. hypothesis: A person rests.',
           'targets': 'entailment'}   (then tokenized, EOS appended)
  Regression (STS-B): {'score': 3.84} -> 'targets': '3.8' (rounded to 0.2 steps, one decimal, as T5).

Encoder (classification / regression / ranking head): each part tokenized alone, then
  {'inputs': first tokens + [SEP] + second tokens (+ EOS), 'label': 0}   (or 'score': 3.84)
  where [SEP] is `tasks.special_tokens.pair_separator` (the last reserved piece of the vocabulary).
  With a sequence length L the pair is cut so both parts keep tokens: budget B = L - 2 (SEP, EOS);
  if `part_budget=(n1, n2)` is declared each part is first cut to its own budget; if the pair is
  still longer than B, tokens come off the longer part first (ties: the second part), so
  kept first = min(len1, max(ceil(B / 2), B - len2)) and kept second = B - kept first.
  Each example also carries `pair_truncated` (0/1) and `pair_dropped_first` /
  `pair_dropped_second` (tokens cut); `truncation_stats` sums them for a task's split. The feature
  converter keeps only `inputs` and the targets, so they never reach the model.
"""
import functools
from typing import Dict, Mapping, Optional, Sequence, Tuple

import seqio
import tensorflow as tf

from tasks import special_tokens as special_tokens_lib
from tasks import vocab as vocab_lib

# Text-to-text task name -> its label words (targets by class id), for label-word scoring.
LABEL_WORDS: Dict[str, Tuple[str, ...]] = {}

# A part of a pair is one or more columns joined by a space, e.g. COPA's ('premise', 'question').
Part = Tuple[str, ...]


def _join(x, columns: Sequence[str]):
  if len(columns) == 1:
    return x[columns[0]]
  return tf.strings.join([x[c] for c in columns], separator=' ')


def text_to_text(dataset, *, prefix: str, fields: Sequence[Tuple[str, str]],
                 label_names: Optional[Sequence[str]], keep: Sequence[str] = ()):
  """{columns..., 'label' | 'score'} -> {'inputs': '<prefix> name: text ...', 'targets': str}.

  `fields`: (column, name in the text) pairs in order; `label_names=None` means regression on
  'score'. `keep`: columns passed through (e.g. a group id for MultiRC's metrics).
  """
  names = tf.constant(list(label_names or ['']))

  def fn(x):
    pieces = [prefix] if prefix else []
    for column, name in fields:
      pieces += [f' {name}: ' if pieces else f'{name}: ', x[column]]
    out = {'inputs': tf.strings.join(pieces)}
    if label_names:
      out['targets'] = tf.gather(names, x['label'])
    else:
      out['targets'] = tf.strings.as_string(tf.round(x['score'] * 5.0) / 5.0, precision=1)
    for k in keep:
      out[k] = x[k]
    return out

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def kept_lengths(len1, len2, budget):
  """Lengths each part keeps under longest-first truncation to `budget` tokens (tf or int)."""
  over = len1 + len2 > budget
  half_up = (budget + 1) // 2
  keep1 = tf.minimum(len1, tf.maximum(half_up, budget - len2))
  keep1 = tf.where(over, keep1, len1)
  keep2 = tf.where(over, budget - keep1, len2)
  return keep1, keep2


def encoder_pair(dataset, sequence_length=None, output_features=None, *, first: Part,
                 second: Part = (), targets: Sequence[str] = ('label',),
                 part_budget: Optional[Tuple[int, int]] = None):
  """{columns..., targets} -> {'inputs': int32 tokens (no EOS yet), targets, pair_* counts}.

  `second=()` makes a single-text example (no separator). Run it after the cache point: it needs
  `sequence_length['inputs']` (seqio passes it) to truncate; without one nothing is cut.
  """
  vocab = output_features['inputs'].vocabulary
  sep_id = special_tokens_lib.pair_separator(vocab_lib.special_tokens(vocab))[1] if second else 0
  length = (sequence_length or {}).get('inputs')
  if second:
    encoder_check_length(sequence_length)
  add_eos = output_features['inputs'].add_eos

  def fn(x):
    a = tf.cast(vocab.encode_tf(_join(x, first)), tf.int32)
    out = {t: x[t] for t in targets}
    if not second:
      out['inputs'] = a
      return out
    b = tf.cast(vocab.encode_tf(_join(x, second)), tf.int32)
    la, lb = tf.size(a), tf.size(b)
    ka, kb = la, lb
    if part_budget:
      ka, kb = tf.minimum(ka, part_budget[0]), tf.minimum(kb, part_budget[1])
    if length:
      budget = length - 1 - int(add_eos)
      ka, kb = kept_lengths(ka, kb, tf.constant(budget, tf.int32))
    out['inputs'] = tf.concat([a[:ka], [sep_id], b[:kb]], axis=0)
    out['pair_truncated'] = tf.cast((ka < la) | (kb < lb), tf.int32)
    out['pair_dropped_first'] = la - ka
    out['pair_dropped_second'] = lb - kb
    return out

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def encoder_check_length(sequence_length):
  if sequence_length and sequence_length.get('inputs', 4) < 4:
    raise ValueError(f"a sentence-pair task needs an inputs length >= 4 (two parts, the "
                     f"separator and EOS), got {sequence_length['inputs']}")


def truncation_stats(task_name: str, *, split: str, sequence_length: Mapping[str, int]
                     ) -> Dict[str, int]:
  """Examples, truncated pairs and tokens cut per part of a registered encoder pair task."""
  encoder_check_length(sequence_length)
  ds = seqio.get_mixture_or_task(task_name).get_dataset(
      dict(sequence_length), split=split, shuffle=False, num_epochs=1)
  out = {'examples': 0, 'truncated_pairs': 0, 'dropped_tokens_first': 0,
         'dropped_tokens_second': 0}
  for ex in ds.as_numpy_iterator():
    out['examples'] += 1
    out['truncated_pairs'] += int(ex.get('pair_truncated', 0))
    out['dropped_tokens_first'] += int(ex.get('pair_dropped_first', 0))
    out['dropped_tokens_second'] += int(ex.get('pair_dropped_second', 0))
  return out


def register_forms(*, name: str, source, vocabulary, prefix: str,
                   fields: Sequence[Tuple[str, str]], first: Part, second: Part,
                   label_names: Optional[Sequence[str]], t2t_postprocess, t2t_metrics,
                   encoder_metrics, part_budget: Optional[Tuple[int, int]] = None,
                   keep: Sequence[str] = (), encoder_targets: Sequence[str] = (),
                   overwrite: bool = True, forms: Sequence[str] = ('text_to_text', 'encoder'),
                   encoder_suffix: str = 'classification') -> Tuple[str, ...]:
  """Registers `<name>_text_to_text` and `<name>_<encoder_suffix>` on one seqio source."""
  regression = label_names is None
  names = []
  if 'text_to_text' in forms:
    t2t = f'{name}_text_to_text'
    if overwrite:
      seqio.TaskRegistry.remove(t2t)
    seqio.TaskRegistry.add(
        t2t, source=source,
        preprocessors=[
            functools.partial(text_to_text, prefix=prefix, fields=list(fields),
                              label_names=None if regression else list(label_names),
                              keep=list(keep)),
            seqio.preprocessors.tokenize,
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features={'inputs': seqio.Feature(vocabulary, add_eos=True),
                         'targets': seqio.Feature(vocabulary, add_eos=True)},
        postprocess_fn=t2t_postprocess, metric_fns=list(t2t_metrics))
    if regression:
      LABEL_WORDS.pop(t2t, None)
    else:
      LABEL_WORDS[t2t] = tuple(label_names)
    names.append(t2t)
  if 'encoder' in forms:
    cls = f'{name}_{encoder_suffix}' if encoder_suffix else name
    targets = tuple(encoder_targets) or (('score',) if regression else ('label',))
    if overwrite:
      seqio.TaskRegistry.remove(cls)
    target_features = {t: seqio.ContinuousFeature(
        dtype=tf.float32 if t == 'score' else tf.int32, rank=0) for t in targets}
    seqio.TaskRegistry.add(
        cls, source=source,
        preprocessors=[
            functools.partial(encoder_pair, first=tuple(first), second=tuple(second),
                              targets=targets, part_budget=part_budget),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features={'inputs': seqio.Feature(vocabulary, add_eos=True), **target_features},
        metric_fns=list(encoder_metrics))
    names.append(cls)
  return tuple(names)
