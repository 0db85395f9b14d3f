"""The objectives' planning maths, shared by the TF preprocessors and their NumPy twins (TF-free).

What both implementations derive before drawing any random number: the denoisers (`Denoiser`, the
UL2 mixture `UL2_DENOISERS`), how many noise tokens and spans a chunk gets (`span_counts`), how
long a denoiser's raw chunk is so that its example fits the feature lengths (`raw_length`), and the
whole mixture's plan (`plan_mixture`). `denoisers_of` maps each preprocessor of
`tasks.objectives.preprocessors` (or a partial of one) to the denoisers it runs.

- Each denoiser's raw chunk length is derived from the feature lengths so that its inputs (mode
  token + non-noise tokens + one sentinel per span) and targets (one sentinel per span + noise
  tokens) fit: the same computation as t5's `random_spans_helper`, which however only fits the
  inputs and assumes an EOS on both sides.
- The noise counts follow t5's `random_spans_noise_mask` (round(length * density) noise tokens in
  round(noise / mean) spans, alternating with non-noise spans, starting with non-noise) but cap the
  number of spans at the number of sentinels the vocabulary has (a 768-token chunk at density 0.5,
  mean 3 needs 128 sentinels; Gemma has 96 spare): capped examples get longer spans, never a
  reused or out-of-table sentinel.

Too short to mean anything: a denoiser's raw chunk must hold at least `MIN_CHUNK_TOKENS` source
tokens (UL2 at inputs=targets=2 would make `[mode, token]` examples): `plan_mixture` refuses
shorter ones, naming the denoiser. A span denoiser whose chunk has fewer noise tokens than its mean
span length cannot make a span of its kind (UL2's X-denoisers at 8/8): `plan_mixture` warns,
naming those denoisers (`degenerate_denoisers`).

Imports neither TensorFlow nor seqio.
"""
import dataclasses
import inspect
import math
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

from absl import logging

from tasks import special_tokens as special_lib

SPAN, PREFIX_LM, CAUSAL_LM = 'span', 'prefix_lm', 'causal_lm'
# The fewest source tokens a denoiser's chunk may hold (see the module docstring).
MIN_CHUNK_TOKENS = 4
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
    if self.mode is not None and self.mode not in special_lib.MODE_TOKENS:
      raise ValueError(f'Denoiser.mode must be None or one of {special_lib.MODE_TOKENS}, got '
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
  """(num_noise_tokens, num_noise_spans) of a chunk of `length` tokens (mirrored in TF by
  `preprocessors.random_spans_mask`).

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


def require_lengths(sequence_length, keys, name):
  if not sequence_length or any(sequence_length.get(k) is None for k in keys):
    raise ValueError(f'{name} needs feature lengths for {list(keys)} (e.g. '
                     f'sequence_length={{"inputs": 512, "targets": 512}}), got {sequence_length}')
  return [int(sequence_length[k]) for k in keys]


@dataclasses.dataclass(frozen=True)
class MixturePlan:
  """What both implementations of `denoise_mixture` (`tasks.objectives.preprocessors` in TF,
  `tasks.objectives.numpy_impl` in NumPy) derive from the arguments before drawing anything.

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
  special: Optional[special_lib.SpecialTokens]
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


def plan_mixture(sequence_length: Mapping[str, int], output_features: Mapping[str, object],
                 denoisers: Sequence[Tuple[Denoiser, float]],
                 special: Optional[special_lib.SpecialTokens] = None) -> MixturePlan:
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
    from tasks import vocab as vocab_lib  # pylint: disable=g-import-not-at-top  (seqio: the features have it)
    special = vocab_lib.special_tokens(output_features['targets'].vocabulary)
  max_spans = special.num_sentinels if special is not None else 1
  lengths = tuple(raw_length(d, inputs_length, targets_length, max_spans) for d, _ in denoisers)
  too_short = [f'{d.name} ({n} tokens)' for (d, _), n in zip(denoisers, lengths)
               if n < MIN_CHUNK_TOKENS]
  if too_short:
    raise ValueError(f'feature lengths inputs={inputs_length}, targets={targets_length} are too '
                     f'short: a chunk must hold at least {MIN_CHUNK_TOKENS} source tokens, these '
                     f'denoisers get fewer: {", ".join(too_short)}')
  degenerate = degenerate_denoisers(denoisers, lengths)
  if degenerate:
    logging.warning('feature lengths inputs=%s, targets=%s: no span of the mean length fits the '
                    'chunk of %s; these denoisers make shorter spans than they are defined with',
                    inputs_length, targets_length, ', '.join(degenerate))
  for (d, _), n in zip(denoisers, lengths):
    if d.kind == SPAN:
      wanted = round(round(n * d.noise_density) / d.mean_span_length)
      if wanted > max_spans:
        logging.warning('Denoiser %s: a %d-token chunk wants %d noise spans but the vocabulary '
                        'has %d sentinels; spans are capped (longer spans).', d.name, n, wanted,
                        max_spans)
  return MixturePlan(denoisers=denoisers, causal=causal, inputs_length=inputs_length,
                     targets_length=targets_length, special=special, lengths=lengths)


def degenerate_denoisers(denoisers: Sequence[Tuple[Denoiser, float]],
                         lengths: Sequence[int]) -> Tuple[str, ...]:
  """Names of the span denoisers whose chunk (`lengths`, as `raw_length`) has fewer noise tokens
  than their mean span length: none of their spans can be as long as they are defined."""
  out = []
  for (d, _), n in zip(denoisers, lengths):
    if d.kind == SPAN and round(n * d.noise_density) < d.mean_span_length:
      out.append(d.name)
  return tuple(out)


def prefix_lm_denoisers(random_split: bool = False) -> Tuple[Tuple[Denoiser, float], ...]:
  return ((Denoiser(kind=PREFIX_LM, random_split=random_split), 1.0),)


def span_corruption_denoisers(mean_span_length: float = 3.0, noise_density: float = 0.15
                              ) -> Tuple[Tuple[Denoiser, float], ...]:
  return ((Denoiser(kind=SPAN, mean_span_length=mean_span_length, noise_density=noise_density),
           1.0),)


CAUSAL_LM_DENOISERS = ((Denoiser(kind=CAUSAL_LM), 1.0),)

# Each preprocessor of `tasks.objectives.preprocessors` -> a function of (some of) its keyword
# arguments that returns the denoisers it runs; filled in by that module when it is imported (a
# preprocessor function cannot exist before), read by `denoisers_of`.
_DENOISERS_OF: Dict[Callable, Callable] = {}


def register_preprocessor(fn: Callable, build: Callable) -> None:
  """Declares that preprocessor `fn` runs the denoisers `build(**its keyword arguments)`."""
  _DENOISERS_OF[fn] = build


def denoisers_of(fn, keywords: Mapping[str, object]
                 ) -> Optional[Tuple[Tuple[Denoiser, float], ...]]:
  """The `((Denoiser, rate), ...)` that objective preprocessor `fn` runs when called with
  `keywords` (its other keyword arguments at their defaults); None if `fn` is not one of them.

  e.g. `denoisers_of(preprocessors.span_corruption, {'noise_density': 0.5})` ->
  ((Denoiser(kind='span', mean_span_length=3.0, noise_density=0.5), 1.0),)
  """
  build = _DENOISERS_OF.get(fn)
  if build is None:
    return None
  wanted = inspect.signature(build).parameters
  arguments = {name: keywords.get(name, param.default)
               for name, param in inspect.signature(fn).parameters.items() if name in wanted}
  return validate_mixture(build(**arguments))
