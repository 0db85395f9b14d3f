"""Pretraining objectives as seqio preprocessors: PrefixLM, UL2 mixture of denoisers, T5 span
corruption, causal LM.

All four run after `tokenize` and `append_eos` in a task's preprocessors, and are the last
preprocessor (no `CacheDatasetPlaceholder` before them is needed; the Beam cache job runs the whole
list). They take a dataset of tokenized documents and return fixed-budget examples:

  before: {'targets': int32[doc_len]}  (one document, EOS appended; other features are dropped)
  after:  {'inputs': int32[<= inputs_length], 'targets': int32[<= targets_length]}
          (`causal_lm`: {'targets': int32[<= targets_length]})

How (and why not t5.data.preprocessors end to end):
- The documents are concatenated into one token stream and cut into chunks by `_chunk_stream`, a
  `tf.data` scan. t5's `reduce_concat_tokens` + `split_tokens` leave a partial chunk after every
  batch of documents and cut every chunk to one length; UL2 needs a different raw length per
  denoiser, chosen per example, so each chunk's length is that of the denoiser sampled for it. Every
  chunk is full except the last one of the stream (flushed, never dropped): no corpus token is lost
  or duplicated.
- Each denoiser's raw chunk length comes from `planning.raw_length` (shared with the NumPy twins
  in `tasks.objectives.numpy_impl`). Examples are checked in graph: an example that would exceed
  its length fails loudly, it is never truncated.
- Sentinel ids come from `tasks.vocab.special_tokens` (reserved pieces inside the vocabulary), not
  from `vocab_size - 1` downwards as t5's `noise_span_to_unique_sentinel` does, so the span-to-
  sentinel functions here are our own. The noise mask has the counts of `planning.span_counts`.
- Randomness uses seqio's seeds (`seqio.map_over_dataset(num_seeds=...)`), so the same seed (e.g.
  `task.get_dataset(..., seed=...)`) gives the same examples.
"""
from typing import Mapping, Optional, Sequence, Tuple

import seqio
import tensorflow as tf

from tasks import special_tokens as special_lib
from tasks.objectives import planning
from tasks.objectives.planning import Denoiser
from tasks.objectives.planning import PREFIX_LM
from tasks.objectives.planning import SPAN
from tasks.objectives.planning import UL2_DENOISERS

# ------------------------------------------------------------------------------------------------
# Stream chunking with a per-chunk denoiser choice.


@seqio.map_over_dataset(num_seeds=1)
def _attach_seed(x, seed):
  return {'tokens': tf.cast(x['targets'], tf.int32), 'seed': seed, 'final': tf.constant(False)}


def _chunk_stream(dataset: tf.data.Dataset, lengths: Sequence[int],
                  rates: Sequence[float]) -> tf.data.Dataset:
  """Concatenates documents and cuts the stream into chunks, one denoiser sampled per chunk.

  before: {'targets': int32[doc_len]} per document
  after:  {'chunk': int32[lengths[d]] (the last chunk of the stream may be shorter),
           'denoiser': int32 d}, d drawn from `rates` independently per chunk.
  """
  num = len(lengths)
  lengths_t = tf.constant(list(lengths), tf.int32)
  min_length = min(lengths)
  logits = tf.math.log(tf.constant([list(rates)], tf.float64) / sum(rates))

  def sample(seed, count):
    """`count` denoiser indices drawn from `rates` (deterministic in `seed`)."""
    if num == 1:
      return tf.zeros([count], tf.int32)
    return tf.cast(tf.random.stateless_categorical(logits, count, seed=seed)[0], tf.int32)

  # Vectorized per document (no per-chunk loop): draw enough denoisers for every chunk this
  # document can complete, after the pending one carried from the previous document.
  def scan_fn(state, x):
    carry, pending = state
    buf = tf.concat([carry, x['tokens']], axis=0)
    size = tf.size(buf)
    count = size // min_length + 1
    drawn = sample(x['seed'], count)
    choices = tf.concat([tf.where(pending < 0, drawn[:1], [pending]), drawn[1:]], axis=0)
    ends = tf.cumsum(tf.gather(lengths_t, choices))
    full = tf.reduce_sum(tf.cast(ends <= size, tf.int32))  # < count: ends[-1] > size.
    lens = tf.gather(lengths_t, choices[:full])
    pos = tf.reduce_sum(lens)
    pending = choices[full]
    # At the end of the stream, the rest (shorter than its chunk length) is one more chunk.
    flush = tf.logical_and(x['final'], size > pos)
    rows = full + tf.cast(flush, tf.int32)
    lens = tf.concat([lens, [size - pos]], axis=0)[:rows]
    ds = tf.concat([choices[:full], [pending]], axis=0)[:rows]
    end = tf.where(flush, size, pos)
    return (buf[end:], pending), (buf[:end], lens, ds)

  docs = _attach_seed(dataset)
  final = tf.data.Dataset.from_tensors({
      'tokens': tf.zeros([0], tf.int32), 'seed': tf.zeros([2], tf.int64),
      'final': tf.constant(True)})
  docs = docs.map(lambda x: {**x, 'seed': tf.cast(x['seed'], tf.int64)})
  chunks = docs.concatenate(final).scan((tf.zeros([0], tf.int32), tf.constant(-1)), scan_fn)

  def unbatch(values, lens, ds):
    starts = tf.cumsum(lens, exclusive=True)
    return tf.data.Dataset.range(tf.size(lens, out_type=tf.int64)).map(
        lambda i: {'chunk': values[starts[i]:starts[i] + lens[i]], 'denoiser': ds[i]})

  return chunks.flat_map(unbatch)


# ------------------------------------------------------------------------------------------------
# Noise masks and sentinels (TF).


def _random_segmentation(total, parts, seed):
  """`parts` positive int32 lengths summing to `total` (all compositions equally likely).

  `total == 0` with `parts == 1` gives [0].
  """
  cuts = seqio.utils.stateless_shuffle(tf.range(1, tf.maximum(total, 1)), seed)[:parts - 1]
  bounds = tf.concat([[0], tf.sort(cuts), [total]], axis=0)
  return bounds[1:] - bounds[:-1]


def random_spans_mask(length, noise_density: float, mean_span_length: float, max_spans: int,
                      seeds):
  """Bool noise mask [length] with the counts of `planning.span_counts` (computed here in float64, as
  Python does, so the lengths `planning.raw_length` derived hold exactly)."""
  lf = tf.cast(length, tf.float64)
  num_noise = tf.cast(tf.round(lf * noise_density), tf.int32)
  num_noise = tf.minimum(tf.maximum(num_noise, 1), tf.maximum(length - 1, 1))
  num_nonnoise = length - num_noise
  num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float64) / mean_span_length), tf.int32)
  num_spans = tf.reduce_min(tf.stack([num_spans, max_spans, num_noise,
                                      tf.maximum(num_nonnoise, 1)]))
  num_spans = tf.maximum(num_spans, 1)
  noise_lens = _random_segmentation(num_noise, num_spans, seeds[0])
  nonnoise_lens = _random_segmentation(num_nonnoise, num_spans, seeds[1])
  span_lens = tf.reshape(tf.stack([nonnoise_lens, noise_lens], axis=1), [-1])
  is_noise = tf.tile([False, True], [num_spans])
  return tf.repeat(is_noise, span_lens)


def _replace_spans(tokens, keep, sentinel_ids, mark_first_of):
  """Tokens where `keep`, with sentinel i put before the i-th run of `mark_first_of` positions.

  inputs:  keep = ~mask, mark_first_of = mask  ->  a <s0> c d <s1> ...
  targets: keep = mask,  mark_first_of = mask  ->  <s0> b <s1> e ...
  """
  prev = tf.pad(mark_first_of[:-1], [[1, 0]])
  first = tf.logical_and(mark_first_of, tf.logical_not(prev))
  span_index = tf.cumsum(tf.cast(first, tf.int32)) - 1
  sentinel = tf.gather(sentinel_ids, tf.maximum(span_index, 0))
  pairs = tf.stack([tf.where(first, sentinel, -1), tf.where(keep, tokens, -1)], axis=1)
  flat = tf.reshape(pairs, [-1])
  return tf.boolean_mask(flat, flat >= 0)


def _span_example(tokens, denoiser: Denoiser, mode_id, sentinel_ids, seeds):
  length = tf.size(tokens)
  mask = random_spans_mask(length, denoiser.noise_density, denoiser.mean_span_length,
                           int(sentinel_ids.shape[0]), seeds)
  inputs = _replace_spans(tokens, tf.logical_not(mask), sentinel_ids, mask)
  targets = _replace_spans(tokens, mask, sentinel_ids, mask)
  if mode_id is not None:
    inputs = tf.concat([[mode_id], inputs], axis=0)
  return inputs, targets


def _prefix_example(tokens, denoiser: Denoiser, mode_id, inputs_length, targets_length, seed):
  n = tf.size(tokens)
  room = inputs_length - int(mode_id is not None)
  if denoiser.random_split:
    lo = tf.maximum(1, n - targets_length)
    hi = tf.minimum(room, n - 1)
    offset = tf.random.stateless_uniform([], seed=seed, minval=0,
                                         maxval=tf.maximum(hi - lo + 1, 1), dtype=tf.int32)
    split = tf.minimum(lo + offset, n)
  else:
    # The full chunk splits at `room`; a shorter (last) chunk in the same proportion.
    split = (n * room) // (room + targets_length)
  inputs = tokens[:split]
  if mode_id is not None:
    inputs = tf.concat([[mode_id], inputs], axis=0)
  return inputs, tokens[split:]


# ------------------------------------------------------------------------------------------------
# The preprocessors.


def denoise_mixture(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature],
                    denoisers: Sequence[Tuple[Denoiser, float]] = UL2_DENOISERS,
                    special: Optional[special_lib.SpecialTokens] = None) -> tf.data.Dataset:
  """Mixture of denoisers (UL2) with a denoiser sampled per example; the general objective.

  before: {'targets': int32[doc_len]} per document (EOS appended)
  after:  {'inputs': int32[<= inputs_length], 'targets': int32[<= targets_length]}
  e.g. an X-denoiser example: inputs `[NLG] The <s0> sat <s1> .`, targets `<s0> cat <s1> on the mat`
  (`<sK>` = sentinel K's piece); an S-denoiser example: inputs `[S2S] The cat sat`, targets
  `on the mat .`.

  Args:
    dataset: tokenized documents.
    sequence_length: feature lengths; needs 'inputs' and 'targets' (only 'targets' for causal_lm).
    output_features: the task's features; special tokens come from the 'targets' vocabulary.
    denoisers: `((Denoiser, rate), ...)`; rates need not sum to 1.
    special: special tokens (default: `special_tokens(output_features['targets'].vocabulary)`).
  """
  plan = planning.plan_mixture(sequence_length, output_features, denoisers, special)
  denoisers, causal = plan.denoisers, plan.causal
  inputs_length, targets_length = plan.inputs_length, plan.targets_length
  sentinel_ids = tf.constant(plan.sentinel_ids, tf.int32)
  chunks = _chunk_stream(dataset, plan.lengths, plan.rates)

  def branch(d: Denoiser, chunk, seeds):
    mode_id = plan.mode_id(d)
    if d.kind == SPAN:
      return _span_example(chunk, d, mode_id, sentinel_ids, seeds)
    if d.kind == PREFIX_LM:
      return _prefix_example(chunk, d, mode_id, inputs_length, targets_length, seeds[0])
    return tf.zeros([0], tf.int32), chunk

  @seqio.map_over_dataset(num_seeds=2)
  def make_example(x, seeds):
    chunk = x['chunk']
    if len(denoisers) == 1:
      inputs, targets = branch(denoisers[0][0], chunk, seeds)
    else:
      inputs, targets = tf.switch_case(
          x['denoiser'], [lambda d=d: branch(d, chunk, seeds) for d, _ in denoisers])
    checks = [tf.debugging.assert_less_equal(
        tf.size(targets), targets_length,
        message=f'objective made targets longer than targets_length={targets_length}')]
    if not causal:
      checks.append(tf.debugging.assert_less_equal(
          tf.size(inputs), inputs_length,
          message=f'objective made inputs longer than inputs_length={inputs_length}'))
    with tf.control_dependencies(checks):
      targets = tf.identity(targets)
      inputs = tf.identity(inputs)
    if causal:
      return {'targets': targets}
    return {'inputs': tf.ensure_shape(inputs, [None]), 'targets': tf.ensure_shape(targets, [None])}

  return make_example(chunks)


def ul2(dataset, sequence_length, output_features,
        denoisers: Sequence[Tuple[Denoiser, float]] = UL2_DENOISERS):
  """UL2 mixture of denoisers (R/X/S with the paper's rates by default); see `denoise_mixture`.

  before: {'targets': int32[doc_len]}
  after:  {'inputs': [mode token] + corrupted text or prefix, 'targets': spans or continuation}
  """
  return denoise_mixture(dataset, sequence_length, output_features, denoisers=denoisers)


def prefix_lm(dataset, sequence_length, output_features, random_split: bool = False):
  """PrefixLM (T5Gemma): stream chunks split into prefix -> inputs, continuation -> targets.

  before: {'targets': int32[doc_len]}
  after:  {'inputs': chunk[:split], 'targets': chunk[split:]}, chunk = inputs_length +
          targets_length stream tokens split at inputs_length (random_split=False), or
          max(inputs_length, targets_length) tokens split uniformly at random so both fit.
  Concatenating inputs + targets of consecutive examples gives back the token stream.
  """
  return denoise_mixture(dataset, sequence_length, output_features,
                         denoisers=planning.prefix_lm_denoisers(random_split))


def span_corruption(dataset, sequence_length, output_features,
                    mean_span_length: float = 3.0, noise_density: float = 0.15):
  """T5 span corruption (mu=3, r=0.15), no mode token.

  before: {'targets': int32[doc_len]}
  after:  {'inputs': `The <s0> sat on <s1> .`, 'targets': `<s0> cat <s1> the mat`}
  """
  return denoise_mixture(dataset, sequence_length, output_features,
                         denoisers=planning.span_corruption_denoisers(mean_span_length,
                                                                      noise_density))


def causal_lm(dataset, sequence_length, output_features):
  """Causal LM: the stream cut into targets_length chunks.

  before: {'targets': int32[doc_len]}
  after:  {'targets': int32[targets_length]} (the last chunk of the stream may be shorter)
  """
  return denoise_mixture(dataset, sequence_length, output_features,
                         denoisers=planning.CAUSAL_LM_DENOISERS)


planning.register_preprocessor(denoise_mixture, lambda denoisers: denoisers)
planning.register_preprocessor(ul2, lambda denoisers: denoisers)
planning.register_preprocessor(prefix_lm, planning.prefix_lm_denoisers)
planning.register_preprocessor(span_corruption, planning.span_corruption_denoisers)
planning.register_preprocessor(causal_lm, lambda: planning.CAUSAL_LM_DENOISERS)
