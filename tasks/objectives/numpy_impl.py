"""The pretraining objectives of `tasks.objectives`, vectorised in NumPy for the Beam cache job.

Why a second implementation. `tasks.objectives.preprocessors` are seqio preprocessors: they run per
document and per chunk in tf.data (a `scan` over documents, then a `switch_case` per chunk). That
is right for seqio on the fly, but slow for caching a corpus. Here a whole input range is one token
stream: it is cut into chunks with one vectorised draw, and every full chunk of a denoiser (they
all have the same length, so the same noise/span counts) is corrupted at once as a
`[num_chunks, chunk_length]` array.

Same objective, not the same random numbers: the counts and lengths are shared code
(`planning.span_counts`, `planning.raw_length`, `planning.plan_mixture`), the span layout,
sentinels, mode tokens and PrefixLM split follow the TF functions step by step, and
`tests/tasks/test_objectives.py` runs the same statistical tests on both implementations (stream
reassembly, noise density, span length, mode rates, sentinel cap) plus two-sample tests between
them. The random draws differ (NumPy's PCG64 instead of TF's stateless ops), so the cached examples
equal `task.get_dataset` in distribution, not byte for byte; `pipelines.cache_tasks
--objective_impl=tf` runs the TF preprocessor instead and matches `task.get_dataset(seed=...)`
exactly.

Randomness uses only the raw 64-bit output of PCG64 seeded by `numpy.random.SeedSequence` (both
specified algorithms, stable across NumPy versions), so a seed gives the same bytes everywhere.
Imports neither TensorFlow nor seqio.

  documents = [np.array([5, 6, 7, 1]), np.array([8, 9, 1])]   # tokenized, EOS (1) appended
  run_objective(objectives.span_corruption, documents, sequence_length={'inputs': 8,
                'targets': 4}, output_features=features, seed=0)
  -> [{'inputs': array([5, <s0>, 7, 1, 8, 9, 1]), 'targets': array([<s0>, 6])}]
"""
import functools
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tasks import special_tokens as special_lib
from tasks.objectives import planning

Example = Dict[str, np.ndarray]
_TWO_53 = float(2 ** 53)


class Rng:
  """Uniform draws from PCG64's raw 64-bit stream (stable across NumPy versions)."""

  def __init__(self, seed: Sequence[int]):
    entropy = [int(s) % (1 << 64) for s in seed]
    self._bits = np.random.PCG64(np.random.SeedSequence(entropy))

  def raw(self, shape) -> np.ndarray:
    size = int(np.prod(shape))
    return self._bits.random_raw(size).reshape(shape) if size else np.zeros(shape, np.uint64)

  def uniform(self, shape) -> np.ndarray:
    """float64 in [0, 1), 53 random bits each."""
    return (self.raw(shape) >> np.uint64(11)).astype(np.float64) / _TWO_53

  def below(self, bounds: np.ndarray) -> np.ndarray:
    """One int in [0, bound) per entry of `bounds` (>= 1); modulo bias < 2**-40 below 2**24."""
    bounds = np.asarray(bounds, np.uint64)
    return (self.raw(bounds.shape) % bounds).astype(np.int64)


# ------------------------------------------------------------------------------------------------
# Stream chunking.


def chunk_stream(length: int, chunk_lengths: Sequence[int], rates: Sequence[float],
                 rng: Rng) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Cuts a stream of `length` tokens into chunks, one denoiser drawn from `rates` per chunk.

  Returns (starts, lengths, denoiser indices), in stream order. Every chunk has its denoiser's
  length except the last one of the stream, which takes the rest (it is flushed, never dropped),
  as `preprocessors._chunk_stream`.
  """
  chunk_lengths = np.asarray(chunk_lengths, np.int64)
  if length <= 0:
    empty = np.zeros([0], np.int64)
    return empty, empty, empty
  count = length // int(chunk_lengths.min()) + 1
  if len(chunk_lengths) == 1:
    choices = np.zeros([count], np.int64)
  else:
    cdf = np.cumsum(np.asarray(rates, np.float64))
    cdf /= cdf[-1]
    choices = np.minimum(np.searchsorted(cdf, rng.uniform([count]), side='right'),
                         len(chunk_lengths) - 1)
  ends = np.cumsum(chunk_lengths[choices])
  full = int(np.count_nonzero(ends <= length))  # < count: ends[-1] > length.
  lens = chunk_lengths[choices[:full]]
  pos = int(lens.sum())
  if length > pos:  # The rest of the stream, with the denoiser drawn for the next chunk.
    lens = np.append(lens, length - pos)
    full += 1
  starts = np.cumsum(lens) - lens
  return starts, lens, choices[:full]


# ------------------------------------------------------------------------------------------------
# Span corruption on a batch of equal-length chunks.


def random_segmentation(total: int, parts: int, rows: int, rng: Rng) -> np.ndarray:
  """[rows, parts] positive lengths summing to `total` per row (all compositions equally likely):
  `parts - 1` distinct cut points out of 1..total-1, as `preprocessors._random_segmentation`."""
  if parts == 1:
    return np.full([rows, 1], total, np.int64)
  keys = rng.raw([rows, total - 1])
  cuts = np.sort(np.argpartition(keys, parts - 2, axis=1)[:, :parts - 1], axis=1) + 1
  bounds = np.concatenate([np.zeros([rows, 1], np.int64), cuts,
                           np.full([rows, 1], total, np.int64)], axis=1)
  return np.diff(bounds, axis=1)


def random_spans_mask(rows: int, length: int, noise_density: float, mean_span_length: float,
                      max_spans: int, rng: Rng) -> np.ndarray:
  """Bool noise masks [rows, length]: non-noise span first, then alternating, with the counts of
  `planning.span_counts` (as `preprocessors.random_spans_mask`)."""
  num_noise, num_spans = planning.span_counts(length, noise_density, mean_span_length, max_spans)
  noise_lens = random_segmentation(num_noise, num_spans, rows, rng)
  nonnoise_lens = random_segmentation(length - num_noise, num_spans, rows, rng)
  span_lens = np.stack([nonnoise_lens, noise_lens], axis=2).reshape(-1)
  is_noise = np.tile(np.array([False, True]), rows * num_spans)
  return np.repeat(is_noise, span_lens).reshape(rows, length)


def _replace_spans(tokens, keep, sentinels, first, width):
  """Per row: kept tokens, with the span's sentinel before the first position of each span
  (`preprocessors._replace_spans`); every row has `width` outputs."""
  pairs = np.stack([np.where(first, sentinels, -1), np.where(keep, tokens, -1)], axis=2)
  flat = pairs.reshape(tokens.shape[0], -1)
  return flat[flat >= 0].reshape(tokens.shape[0], width)


def span_examples(chunks: np.ndarray, denoiser: planning.Denoiser, mode_id: Optional[int],
                  sentinel_ids: np.ndarray, rng: Rng) -> Tuple[np.ndarray, np.ndarray]:
  """[rows, n] chunks -> ([rows, inputs length], [rows, targets length]) span-corruption examples.

  inputs `[mode] a <s0> d <s1> g`, targets `<s0> b c <s1> e f` (`<sK>` = sentinel_ids[K]).
  """
  rows, n = chunks.shape
  mask = random_spans_mask(rows, n, denoiser.noise_density, denoiser.mean_span_length,
                           len(sentinel_ids), rng)
  first = mask & ~np.pad(mask[:, :-1], [(0, 0), (1, 0)])
  sentinels = sentinel_ids[np.maximum(np.cumsum(first, axis=1) - 1, 0)]
  num_noise, num_spans = planning.span_counts(n, denoiser.noise_density,
                                                denoiser.mean_span_length, len(sentinel_ids))
  inputs = _replace_spans(chunks, ~mask, sentinels, first, n - num_noise + num_spans)
  targets = _replace_spans(chunks, mask, sentinels, first, num_noise + num_spans)
  if mode_id is not None:
    inputs = np.concatenate([np.full([rows, 1], mode_id, inputs.dtype), inputs], axis=1)
  return inputs, targets


def prefix_splits(n: int, rows: int, denoiser: planning.Denoiser, has_mode: bool,
                  inputs_length: int, targets_length: int, rng: Rng) -> np.ndarray:
  """Split points of `rows` chunks of n tokens (as `preprocessors._prefix_example`)."""
  room = inputs_length - int(has_mode)
  if denoiser.random_split:
    lo = max(1, n - targets_length)
    hi = min(room, n - 1)
    offset = rng.below(np.full([rows], max(hi - lo + 1, 1)))
    return np.minimum(lo + offset, n)
  return np.full([rows], (n * room) // (room + targets_length), np.int64)


# ------------------------------------------------------------------------------------------------
# The objective.


def denoise_mixture(documents: Sequence[np.ndarray], *, sequence_length: Mapping[str, int],
                    output_features: Mapping[str, object],
                    denoisers: Sequence[Tuple[planning.Denoiser, float]] = (
                        planning.UL2_DENOISERS),
                    special: Optional[special_lib.SpecialTokens] = None,
                    seed: Sequence[int] = (0,)) -> List[Example]:
  """`preprocessors.denoise_mixture` on a list of tokenized documents (one stream), in NumPy.

  before: [int32[doc_len], ...] (EOS appended)
  after:  [{'inputs': int32[<= inputs_length], 'targets': int32[<= targets_length]}, ...] in
          stream order ({'targets'} only for causal_lm).
  """
  plan = planning.plan_mixture(sequence_length, output_features, denoisers, special)
  sentinel_ids = np.asarray(plan.sentinel_ids, np.int32)
  rng = Rng(seed)
  documents = [np.asarray(d, np.int32).reshape(-1) for d in documents]
  stream = np.concatenate(documents) if documents else np.zeros([0], np.int32)
  starts, lens, choices = chunk_stream(stream.size, plan.lengths, plan.rates, rng)
  out: List[Optional[Example]] = [None] * len(starts)
  # One batch per (denoiser, chunk length): the full chunks, and the stream's last chunk alone.
  for index, (d, _) in enumerate(plan.denoisers):
    mode_id = plan.mode_id(d)
    for n in np.unique(lens[choices == index]):
      rows = np.flatnonzero((choices == index) & (lens == n))
      chunks = stream[starts[rows, None] + np.arange(n)]
      if d.kind == planning.SPAN:
        inputs, targets = span_examples(chunks, d, mode_id, sentinel_ids, rng)
        for row, i, t in zip(rows, inputs, targets):
          out[row] = {'inputs': i, 'targets': t}
      elif d.kind == planning.PREFIX_LM:
        splits = prefix_splits(int(n), len(rows), d, mode_id is not None, plan.inputs_length,
                               plan.targets_length, rng)
        prefix = [] if mode_id is None else [mode_id]
        for row, chunk, split in zip(rows, chunks, splits):
          out[row] = {'inputs': np.asarray(prefix + chunk[:split].tolist(), np.int32),
                      'targets': chunk[split:]}
      else:
        for row, chunk in zip(rows, chunks):
          out[row] = {'targets': chunk}
  for ex in out:
    if ex['targets'].size > plan.targets_length or (
        not plan.causal and ex['inputs'].size > plan.inputs_length):
      raise ValueError(f'objective made an example longer than {dict(sequence_length)}')
  return out  # type: ignore[return-value]


def numpy_objective(preprocessor) -> Optional[Callable[..., List[Example]]]:
  """The NumPy twin of a `tasks.objectives.preprocessors` preprocessor (a function or a
  functools.partial of one), as `fn(documents, *, sequence_length, output_features, seed)`; None
  for anything else."""
  keywords: dict = {}
  fn = preprocessor
  while isinstance(fn, functools.partial):
    if fn.args:
      return None
    keywords = {**fn.keywords, **keywords}  # An outer partial's keywords win, as in a call.
    fn = fn.func
  denoisers = planning.denoisers_of(fn, keywords)
  if denoisers is None:
    return None
  return functools.partial(denoise_mixture, denoisers=denoisers, special=keywords.get('special'))


def run_objective(preprocessor, documents: Sequence[np.ndarray], *,
                  sequence_length: Mapping[str, int], output_features: Mapping[str, object],
                  seed: Sequence[int] = (0,)) -> List[Example]:
  """Runs the NumPy twin of `preprocessor` (error if it has none)."""
  fn = numpy_objective(preprocessor)
  if fn is None:
    raise ValueError(f'{preprocessor!r} is not one of tasks.objectives\' preprocessors')
  return fn(documents, sequence_length=sequence_length, output_features=output_features,
            seed=seed)
