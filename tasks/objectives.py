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
- Each denoiser's raw chunk length is derived from the feature lengths (`raw_length`) so that its
  inputs (mode token + non-noise tokens + one sentinel per span) and targets (one sentinel per span
  + noise tokens) fit: the same computation as t5's `random_spans_helper`, which however only fits
  the inputs and assumes an EOS on both sides. Examples are checked in graph: an example that would
  exceed its length fails loudly, it is never truncated.
- Sentinel ids come from `tasks.vocab.special_tokens` (reserved pieces inside the vocabulary), not
  from `vocab_size - 1` downwards as t5's `noise_span_to_unique_sentinel` does, so the span-to-
  sentinel functions here are our own. Our noise mask follows t5's `random_spans_noise_mask`
  (same counts: round(length * density) noise tokens in round(noise / mean) spans, alternating with
  non-noise spans, starting with non-noise) but caps the number of spans at the number of
  sentinels the vocabulary has (a 768-token chunk at density 0.5, mean 3 needs 128 sentinels; Gemma
  has 96 spare): capped examples get longer spans, never a reused or out-of-table sentinel.
- Randomness uses seqio's seeds (`seqio.map_over_dataset(num_seeds=...)`), so the same seed (e.g.
  `task.get_dataset(..., seed=...)`) gives the same examples.
"""
import dataclasses
import inspect
import math
from typing import Mapping, Optional, Sequence, Tuple

from absl import logging
import seqio
import tensorflow as tf

from tasks import vocab as vocab_lib

SPAN, PREFIX_LM, CAUSAL_LM = 'span', 'prefix_lm', 'causal_lm'
_KINDS = (SPAN, PREFIX_LM, CAUSAL_LM)


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """One denoising objective.

  Attributes:
    kind: `'span'` (span corruption), `'prefix_lm'` (inputs = prefix, targets = continuation) or
      `'causal_lm'` (targets only).
    mode: mode token put first in the inputs (`'[NLU]'`, `'[NLG]'`, `'[S2S]'`), or None.
    mean_span_length: mean noise span length (span only).
    noise_density: fraction of tokens that are noise (span only).
    random_split: prefix_lm only: False splits a chunk of inputs+targets tokens at the inputs
      length (equal halves when the lengths are equal); True splits a chunk of max(inputs, targets)
      tokens at a uniformly random point such that both parts fit.
  """
  kind: str = SPAN
  mode: Optional[str] = None
  mean_span_length: float = 3.0
  noise_density: float = 0.15
  random_split: bool = False

  def __post_init__(self):
    if self.kind not in _KINDS:
      raise ValueError(f'Denoiser.kind must be one of {_KINDS}, got {self.kind!r}')
    if self.mode is not None and self.mode not in vocab_lib.MODE_TOKENS:
      raise ValueError(f'Denoiser.mode must be None or one of {vocab_lib.MODE_TOKENS}, got '
                       f'{self.mode!r}')
    if self.kind == CAUSAL_LM and self.mode is not None:
      raise ValueError(f'Denoiser.mode must be None for causal_lm (no inputs), got {self.mode!r}')
    if self.kind == SPAN:
      if not 0.0 < self.noise_density < 1.0:
        raise ValueError(f'Denoiser.noise_density must be in (0, 1), got {self.noise_density!r}')
      if not self.mean_span_length >= 1.0:
        raise ValueError(f'Denoiser.mean_span_length must be >= 1, got '
                         f'{self.mean_span_length!r}')

  @property
  def name(self) -> str:
    mode = self.mode or ''
    if self.kind == SPAN:
      return f'{mode}span(mu={self.mean_span_length:g},r={self.noise_density:g})'
    return f'{mode}{self.kind}' + ('(random)' if self.random_split else '')


def r_denoiser(mean_span_length: float) -> Denoiser:
  return Denoiser(kind=SPAN, mode='[NLU]', mean_span_length=mean_span_length, noise_density=0.15)


def x_denoiser(mean_span_length: float, noise_density: float) -> Denoiser:
  return Denoiser(kind=SPAN, mode='[NLG]', mean_span_length=mean_span_length,
                  noise_density=noise_density)


S_DENOISER = Denoiser(kind=PREFIX_LM, mode='[S2S]', random_split=True)

# UL2 paper defaults: R 0.4, X 0.4, S 0.2, split evenly within each group.
UL2_DENOISERS: Tuple[Tuple[Denoiser, float], ...] = (
    (r_denoiser(3), 0.2), (r_denoiser(8), 0.2),
    (x_denoiser(3, 0.5), 0.1), (x_denoiser(8, 0.5), 0.1),
    (x_denoiser(64, 0.15), 0.1), (x_denoiser(64, 0.5), 0.1),
    (S_DENOISER, 0.2),
)
T5_SPAN_CORRUPTION = Denoiser(kind=SPAN, mode=None, mean_span_length=3.0, noise_density=0.15)


def validate_mixture(denoisers: Sequence[Tuple[Denoiser, float]]
                     ) -> Tuple[Tuple[Denoiser, float], ...]:
  """Checks a `((Denoiser, rate), ...)` list; returns it as a tuple."""
  denoisers = tuple((d, float(r)) for d, r in denoisers)
  if not denoisers:
    raise ValueError('denoisers must be a non-empty list of (Denoiser, rate)')
  for d, r in denoisers:
    if not isinstance(d, Denoiser):
      raise ValueError(f'denoisers entries must be (Denoiser, rate), got {d!r}')
    if not (r > 0 and math.isfinite(r)):
      raise ValueError(f'denoiser {d.name} rate must be > 0, got {r!r}')
  kinds = {d.kind == CAUSAL_LM for d, _ in denoisers}
  if len(kinds) > 1:
    raise ValueError('causal_lm (targets only) cannot be mixed with denoisers that have inputs')
  return denoisers


# ------------------------------------------------------------------------------------------------
# Lengths.


def span_counts(length: int, noise_density: float, mean_span_length: float,
                max_spans: int) -> Tuple[int, int]:
  """(num_noise_tokens, num_noise_spans) of a chunk of `length` tokens (mirrored in TF below).

  round(length * density) noise tokens, at least 1 and at most length - 1 (all noise when
  length == 1); round(noise / mean) spans, at least 1, at most `max_spans` (sentinels), at most the
  noise tokens and the non-noise tokens (spans alternate, non-noise first).
  """
  if length <= 0:
    return 0, 0
  num_noise = min(max(round(length * noise_density), 1), max(length - 1, 1))
  num_nonnoise = length - num_noise
  num_spans = min(round(num_noise / mean_span_length), max_spans, num_noise, max(num_nonnoise, 1))
  return num_noise, max(num_spans, 1)


def span_example_lengths(length: int, denoiser: Denoiser, max_spans: int) -> Tuple[int, int]:
  """(inputs length, targets length) of a span-corruption example made from `length` tokens."""
  noise, spans = span_counts(length, denoiser.noise_density, denoiser.mean_span_length, max_spans)
  has_mode = int(denoiser.mode is not None)
  return has_mode + (length - noise) + spans, noise + spans


def raw_length(denoiser: Denoiser, inputs_length: Optional[int], targets_length: int,
               max_spans: int) -> int:
  """Raw chunk length (tokens of the stream) for one example of `denoiser` that fits the lengths.

  span: the largest chunk whose inputs and targets fit (both grow monotonically with the chunk).
  prefix_lm: inputs+targets tokens (minus the mode token), or max of the two with random_split.
  causal_lm: targets_length.
  """
  if denoiser.kind == CAUSAL_LM:
    return targets_length
  has_mode = int(denoiser.mode is not None)
  room = inputs_length - has_mode
  if room < 1 or targets_length < 1:
    raise ValueError(f'feature lengths inputs={inputs_length}, targets={targets_length} leave no '
                     f'room for denoiser {denoiser.name}')
  if denoiser.kind == PREFIX_LM:
    return max(room, targets_length) if denoiser.random_split else room + targets_length
  n = 1
  while n < inputs_length + targets_length:
    i, t = span_example_lengths(n + 1, denoiser, max_spans)
    if i > inputs_length or t > targets_length:
      break
    n += 1
  i, t = span_example_lengths(n, denoiser, max_spans)
  if i > inputs_length or t > targets_length:
    raise ValueError(f'feature lengths inputs={inputs_length}, targets={targets_length} are too '
                     f'short for denoiser {denoiser.name}')
  return n


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
  """Bool noise mask [length] with the counts of `span_counts` (computed here in float64, as
  Python does, so the lengths `raw_length` derived hold exactly)."""
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


def require_lengths(sequence_length, keys, name):
  if not sequence_length or any(sequence_length.get(k) is None for k in keys):
    raise ValueError(f'{name} needs feature lengths for {list(keys)} (e.g. '
                     f'sequence_length={{"inputs": 512, "targets": 512}}), got {sequence_length}')
  return [int(sequence_length[k]) for k in keys]


@dataclasses.dataclass(frozen=True)
class MixturePlan:
  """What both implementations of `denoise_mixture` (TF here, NumPy in `tasks.objectives_numpy`)
  derive from the arguments before drawing anything.

  Attributes:
    denoisers: the validated `((Denoiser, rate), ...)`.
    causal: causal LM (targets only).
    inputs_length: None for causal LM.
    targets_length: the targets' feature length.
    special: the vocabulary's special tokens (None when no denoiser needs them).
    lengths: raw chunk length per denoiser (`raw_length`).
  """
  denoisers: Tuple[Tuple[Denoiser, float], ...]
  causal: bool
  inputs_length: Optional[int]
  targets_length: int
  special: Optional[vocab_lib.SpecialTokens]
  lengths: Tuple[int, ...]

  @property
  def rates(self) -> Tuple[float, ...]:
    return tuple(r for _, r in self.denoisers)

  @property
  def max_spans(self) -> int:
    return self.special.num_sentinels if self.special is not None else 1

  @property
  def sentinel_ids(self) -> Tuple[int, ...]:
    return tuple(self.special.sentinel_ids) if self.special is not None else (0,)

  def mode_id(self, denoiser: Denoiser) -> Optional[int]:
    return self.special.mode_ids[denoiser.mode] if denoiser.mode is not None else None


def plan_mixture(sequence_length: Mapping[str, int], output_features: Mapping[str, seqio.Feature],
                 denoisers: Sequence[Tuple[Denoiser, float]],
                 special: Optional[vocab_lib.SpecialTokens] = None) -> MixturePlan:
  """Validates a mixture against the feature lengths and derives its chunk lengths (warns when a
  span denoiser's chunk wants more spans than the vocabulary has sentinels)."""
  denoisers = validate_mixture(denoisers)
  causal = denoisers[0][0].kind == CAUSAL_LM
  if causal:
    (targets_length,) = require_lengths(sequence_length, ['targets'], 'causal_lm')
    inputs_length = None
  else:
    inputs_length, targets_length = require_lengths(
        sequence_length, ['inputs', 'targets'], 'denoise_mixture')
  needs_special = any(d.mode is not None or d.kind == SPAN for d, _ in denoisers)
  if special is None and needs_special:
    special = vocab_lib.special_tokens(output_features['targets'].vocabulary)
  max_spans = special.num_sentinels if special is not None else 1
  lengths = tuple(raw_length(d, inputs_length, targets_length, max_spans) for d, _ in denoisers)
  for (d, _), n in zip(denoisers, lengths):
    if d.kind == SPAN:
      wanted = round(round(n * d.noise_density) / d.mean_span_length)
      if wanted > max_spans:
        logging.warning('Denoiser %s: a %d-token chunk wants %d noise spans but the vocabulary '
                        'has %d sentinels; spans are capped (longer spans).', d.name, n, wanted,
                        max_spans)
  return MixturePlan(denoisers=denoisers, causal=causal, inputs_length=inputs_length,
                     targets_length=targets_length, special=special, lengths=lengths)


def denoise_mixture(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature],
                    denoisers: Sequence[Tuple[Denoiser, float]] = UL2_DENOISERS,
                    special: Optional[vocab_lib.SpecialTokens] = None) -> tf.data.Dataset:
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
  plan = plan_mixture(sequence_length, output_features, denoisers, special)
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


def _prefix_lm_denoisers(random_split):
  return ((Denoiser(kind=PREFIX_LM, random_split=random_split), 1.0),)


def _span_corruption_denoisers(mean_span_length, noise_density):
  return ((Denoiser(kind=SPAN, mean_span_length=mean_span_length, noise_density=noise_density),
           1.0),)


_CAUSAL_LM_DENOISERS = ((Denoiser(kind=CAUSAL_LM), 1.0),)


def prefix_lm(dataset, sequence_length, output_features, random_split: bool = False):
  """PrefixLM (T5Gemma): stream chunks split into prefix -> inputs, continuation -> targets.

  before: {'targets': int32[doc_len]}
  after:  {'inputs': chunk[:split], 'targets': chunk[split:]}, chunk = inputs_length +
          targets_length stream tokens split at inputs_length (random_split=False), or
          max(inputs_length, targets_length) tokens split uniformly at random so both fit.
  Concatenating inputs + targets of consecutive examples gives back the token stream.
  """
  return denoise_mixture(dataset, sequence_length, output_features,
                         denoisers=_prefix_lm_denoisers(random_split))


def span_corruption(dataset, sequence_length, output_features,
                    mean_span_length: float = 3.0, noise_density: float = 0.15):
  """T5 span corruption (mu=3, r=0.15), no mode token.

  before: {'targets': int32[doc_len]}
  after:  {'inputs': `The <s0> sat on <s1> .`, 'targets': `<s0> cat <s1> the mat`}
  """
  return denoise_mixture(dataset, sequence_length, output_features,
                         denoisers=_span_corruption_denoisers(mean_span_length, noise_density))


def causal_lm(dataset, sequence_length, output_features):
  """Causal LM: the stream cut into targets_length chunks.

  before: {'targets': int32[doc_len]}
  after:  {'targets': int32[targets_length]} (the last chunk of the stream may be shorter)
  """
  return denoise_mixture(dataset, sequence_length, output_features,
                         denoisers=_CAUSAL_LM_DENOISERS)


# Each preprocessor above -> the denoisers it runs, from its keyword arguments (defaults from its
# own signature). `tasks.objectives_numpy` finds a preprocessor's NumPy twin through this.
_DENOISERS_OF = {
    denoise_mixture: lambda denoisers: denoisers,
    ul2: lambda denoisers: denoisers,
    prefix_lm: _prefix_lm_denoisers,
    span_corruption: _span_corruption_denoisers,
    causal_lm: lambda: _CAUSAL_LM_DENOISERS,
}


def denoisers_of(fn, keywords: Mapping[str, object]
                 ) -> Optional[Tuple[Tuple[Denoiser, float], ...]]:
  """The `((Denoiser, rate), ...)` that preprocessor `fn` of this module runs when called with
  `keywords` (its other keyword arguments at their defaults); None if `fn` is not one of them.

  e.g. `denoisers_of(span_corruption, {'noise_density': 0.5})` -> ((Denoiser(kind='span',
  mean_span_length=3.0, noise_density=0.5), 1.0),)
  """
  build = _DENOISERS_OF.get(fn)
  if build is None:
    return None
  wanted = inspect.signature(build).parameters
  arguments = {name: keywords.get(name, param.default)
               for name, param in inspect.signature(fn).parameters.items() if name in wanted}
  return validate_mixture(build(**arguments))
