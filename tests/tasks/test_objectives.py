"""Objectives over many examples: stream reassembly, noise statistics, sentinels, mixture rates,
seeds and lengths; each statistical test runs on both implementations (the seqio/TF preprocessors
of tasks.objectives.preprocessors and their NumPy twins in tasks.objectives.numpy_impl, used by the cache job), and
two-sample tests compare the two."""
import collections
import functools

import numpy as np
import pytest
import scipy.stats
import seqio
import tensorflow as tf

from tasks import objectives
from tasks.objectives import numpy_impl as objectives_numpy
from tasks import vocab as vocab_lib

IMPLS = ("tf", "numpy")

# corpus_file: a tinyshakespeare slice (tests/conftest.py).


@pytest.fixture(scope="module")
def vocab(corpus_file, tmp_path_factory):
  model, _ = vocab_lib.train_vocabulary(
      input_files=[corpus_file], vocab_size=600,
      output_prefix=str(tmp_path_factory.mktemp("own") / "spm"))
  return vocab_lib.get_vocabulary(model)


@pytest.fixture(scope="module")
def gemma_vocab(corpus_file, tmp_path_factory):
  """Gemma-like: only 8 reserved pieces -> 5 sentinels, to exercise the sentinel cap."""
  model, _ = vocab_lib.train_vocabulary(
      input_files=[corpus_file], vocab_size=600, reserved_pieces=8,
      output_prefix=str(tmp_path_factory.mktemp("gemma") / "spm"))
  return vocab_lib.get_vocabulary(model)


@pytest.fixture(scope="module")
def documents(corpus_file, vocab):
  """Paragraphs of Shakespeare, tokenized, EOS appended (what the objectives receive)."""
  with open(corpus_file, encoding="utf-8", errors="ignore") as f:
    paragraphs = [p for p in f.read().split("\n\n") if p.strip()]
  return [vocab.encode(p) + [vocab.eos_id] for p in paragraphs]


def _dataset(docs):
  return tf.data.Dataset.from_generator(
      lambda: iter(docs), output_signature=tf.TensorSpec([None], tf.int32)).map(
          lambda t: {"targets": t})


def _features(vocab, keys=("inputs", "targets")):
  return {k: seqio.Feature(vocab, add_eos=True) for k in keys}


def _run(preprocessor, docs, vocab, lengths, seed=0, n=None, impl="tf", **kwargs):
  keys = ("targets",) if "inputs" not in lengths else ("inputs", "targets")
  if impl == "numpy":
    examples = objectives_numpy.run_objective(
        functools.partial(preprocessor, **kwargs), [np.asarray(d, np.int32) for d in docs],
        sequence_length=lengths, output_features=_features(vocab, keys), seed=(seed,))
    return [{k: v.tolist() for k, v in ex.items()} for ex in examples[:n]]
  with seqio.utils.map_seed_manager(seed):
    ds = preprocessor(_dataset(docs), lengths, _features(vocab, keys), **kwargs)
  if n is not None:
    ds = ds.take(n)
  return [{k: v.tolist() for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


def _stream(docs):
  return [t for d in docs for t in d]


def _fill_spans(inputs, targets, sentinel_ids):
  """Original chunk from span-corruption inputs/targets; checks sentinel order and matching."""
  sentinel_set = set(sentinel_ids)
  in_sentinels = [t for t in inputs if t in sentinel_set]
  tg_sentinels = [t for t in targets if t in sentinel_set]
  assert in_sentinels == list(sentinel_ids[:len(in_sentinels)])  # s0, s1, ... in order.
  assert tg_sentinels == in_sentinels
  assert targets and targets[0] == sentinel_ids[0]
  spans, current = {}, None
  for t in targets:
    if t in sentinel_set:
      current = t
      spans[current] = []
    else:
      spans[current].append(t)
  assert all(spans.values()), "empty noise span"
  out = []
  for t in inputs:
    out.extend(spans[t] if t in sentinel_set else [t])
  return out, len(in_sentinels), sum(len(s) for s in spans.values())


@pytest.mark.parametrize("random_split", [False, True])
@pytest.mark.parametrize("impl", IMPLS)
def test_prefix_lm_reassembles_the_stream(documents, vocab, random_split, impl):
  docs = documents[:400]
  lengths = {"inputs": 32, "targets": 48}
  examples = _run(objectives.prefix_lm, docs, vocab, lengths, random_split=random_split,
                  impl=impl)
  rebuilt = [t for ex in examples for t in ex["inputs"] + ex["targets"]]
  assert rebuilt == _stream(docs)  # No token lost or duplicated, in order.
  for ex in examples[:-1]:
    assert len(ex["inputs"]) <= 32 and len(ex["targets"]) <= 48
    if random_split:
      assert len(ex["inputs"]) + len(ex["targets"]) == 48  # max(inputs, targets) tokens.
      assert 1 <= len(ex["inputs"])
    else:
      assert (len(ex["inputs"]), len(ex["targets"])) == (32, 48)
  if random_split:
    assert len({len(ex["inputs"]) for ex in examples}) > 10  # The split point varies.


@pytest.mark.parametrize("impl", IMPLS)
def test_causal_lm_reassembles_the_stream(documents, vocab, impl):
  docs = documents[:300]
  examples = _run(objectives.causal_lm, docs, vocab, {"targets": 64}, impl=impl)
  assert [t for ex in examples for t in ex["targets"]] == _stream(docs)
  assert all(len(ex["targets"]) == 64 for ex in examples[:-1])
  assert 0 < len(examples[-1]["targets"]) <= 64
  assert set(examples[0]) == {"targets"}


@pytest.mark.parametrize("impl", IMPLS)
def test_span_corruption_statistics_and_reassembly(documents, vocab, impl):
  special = vocab_lib.special_tokens(vocab)
  lengths = {"inputs": 128, "targets": 32}
  docs = documents[:1500]
  examples = _run(objectives.span_corruption, docs, vocab, lengths, impl=impl)
  assert len(examples) > 100
  rebuilt, noise, total, spans = [], 0, 0, 0
  for ex in examples:
    assert len(ex["inputs"]) <= 128 and len(ex["targets"]) <= 32
    chunk, n_spans, n_noise = _fill_spans(ex["inputs"], ex["targets"], special.sentinel_ids)
    rebuilt += chunk
    noise += n_noise
    spans += n_spans
    total += len(chunk)
  assert rebuilt == _stream(docs)
  assert abs(noise / total - 0.15) < 0.005, noise / total  # noise density
  assert abs(noise / spans - 3.0) < 0.15, noise / spans  # mean span length
  # Every full chunk has the raw length derived from the feature lengths, so every example has
  # the same, predicted lengths, and one of them is at its limit (no budget wasted).
  n = objectives.raw_length(objectives.T5_SPAN_CORRUPTION, 128, 32, special.num_sentinels)
  want = objectives.span_example_lengths(n, objectives.T5_SPAN_CORRUPTION, special.num_sentinels)
  assert {(len(ex["inputs"]), len(ex["targets"])) for ex in examples[:-1]} == {want}
  assert want[0] == 128 or want[1] == 32


@pytest.mark.parametrize("mu, r, lengths", [
    (3, 0.15, {"inputs": 256, "targets": 64}),
    (8, 0.15, {"inputs": 256, "targets": 64}),
    (3, 0.5, {"inputs": 128, "targets": 128}),
    (8, 0.5, {"inputs": 128, "targets": 128}),
    (64, 0.5, {"inputs": 1024, "targets": 1024}),
])
@pytest.mark.parametrize("impl", IMPLS)
def test_each_span_denoiser_hits_its_density_and_span_length(documents, vocab, mu, r, lengths,
                                                             impl):
  special = vocab_lib.special_tokens(vocab)
  d = objectives.x_denoiser(mu, r)
  examples = _run(objectives.denoise_mixture, documents[:1200], vocab, lengths, impl=impl,
                  denoisers=[(d, 1.0)])
  noise = total = spans = 0
  for ex in examples[:-1]:  # The stream's last chunk is short.
    assert ex["inputs"][0] == special.mode_ids["[NLG]"]
    chunk, n_spans, n_noise = _fill_spans(ex["inputs"][1:], ex["targets"], special.sentinel_ids)
    noise, total, spans = noise + n_noise, total + len(chunk), spans + n_spans
    assert len(ex["inputs"]) <= lengths["inputs"] and len(ex["targets"]) <= lengths["targets"]
  assert abs(noise / total - r) < 0.01, noise / total
  # Mean span length: exactly what the counts give (round(n*r) noise tokens in round(noise/mu)
  # spans, as t5's random_spans_noise_mask), which is mu up to the rounding of the span count:
  # tolerance 0.5 / spans per example (relative) + 1%.
  n = objectives.raw_length(d, lengths["inputs"], lengths["targets"], special.num_sentinels)
  n_noise, n_spans = objectives.span_counts(n, r, mu, special.num_sentinels)
  assert noise / spans == pytest.approx(n_noise / n_spans)
  assert abs(noise / spans - mu) / mu <= 0.5 / n_spans + 0.01, (noise / spans, n_spans)


@pytest.mark.parametrize("impl", IMPLS)
def test_ul2_mixture_modes_rates_lengths_and_reassembly(documents, vocab, impl):
  special = vocab_lib.special_tokens(vocab)
  lengths = {"inputs": 48, "targets": 48}
  docs = documents[:2500]
  examples = _run(objectives.ul2, docs, vocab, lengths, seed=3, impl=impl)
  assert len(examples) > 1500
  mode_of = {i: m for m, i in special.mode_ids.items()}
  counts = {m: 0 for m in vocab_lib.MODE_TOKENS}
  rebuilt = []
  for ex in examples:
    assert len(ex["inputs"]) <= 48 and len(ex["targets"]) <= 48
    mode = mode_of[ex["inputs"][0]]  # The mode token is the first input token.
    counts[mode] += 1
    if mode == "[S2S]":
      assert not set(ex["inputs"][1:] + ex["targets"]) & set(special.sentinel_ids)
      rebuilt += ex["inputs"][1:] + ex["targets"]
    else:
      rebuilt += _fill_spans(ex["inputs"][1:], ex["targets"], special.sentinel_ids)[0]
  assert rebuilt == _stream(docs)
  # Chi-square goodness of fit of the mode frequencies to R 0.4 / X 0.4 / S 0.2.
  observed = [counts["[NLU]"], counts["[NLG]"], counts["[S2S]"]]
  expected = [0.4 * len(examples), 0.4 * len(examples), 0.2 * len(examples)]
  assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3, observed


@pytest.mark.parametrize("impl", IMPLS)
def test_same_seed_same_examples(documents, vocab, impl):
  lengths = {"inputs": 48, "targets": 48}
  a = _run(objectives.ul2, documents[:100], vocab, lengths, seed=11, impl=impl)
  b = _run(objectives.ul2, documents[:100], vocab, lengths, seed=11, impl=impl)
  c = _run(objectives.ul2, documents[:100], vocab, lengths, seed=12, impl=impl)
  assert len(a) > 20
  assert a == b
  assert a != c


@pytest.mark.parametrize("impl", IMPLS)
def test_gemma_style_sentinels_and_the_sentinel_cap(corpus_file, gemma_vocab, impl):
  special = vocab_lib.special_tokens(gemma_vocab)
  assert special.num_sentinels == 5
  with open(corpus_file, encoding="utf-8", errors="ignore") as f:
    paragraphs = [p for p in f.read().split("\n\n") if p.strip()][:400]
  docs = [gemma_vocab.encode(p) + [gemma_vocab.eos_id] for p in paragraphs]
  lengths = {"inputs": 64, "targets": 64}
  # (3, 0.5) on ~90 tokens wants ~15 spans; the vocabulary has 5 sentinels.
  d = objectives.x_denoiser(3, 0.5)
  examples = _run(objectives.denoise_mixture, docs, gemma_vocab, lengths, denoisers=[(d, 1.0)],
                  impl=impl)
  rebuilt = []
  for ex in examples:
    assert ex["inputs"][0] == special.mode_ids["[NLG]"]
    assert max(ex["inputs"] + ex["targets"]) < gemma_vocab.vocab_size
    chunk, n_spans, _ = _fill_spans(ex["inputs"][1:], ex["targets"], special.sentinel_ids)
    assert n_spans <= 5
    assert len(ex["inputs"]) <= 64 and len(ex["targets"]) <= 64
    rebuilt += chunk
  assert rebuilt == _stream(docs)
  assert gemma_vocab.tokenizer.id_to_piece(special.sentinel_ids[0]) == "<unused3>"


@pytest.mark.parametrize("inputs_length, targets_length",
                         [(32, 32), (512, 512), (512, 128), (1024, 256), (2048, 512)])
def test_raw_length_is_the_largest_chunk_that_fits(inputs_length, targets_length):
  for d, _ in objectives.UL2_DENOISERS + ((objectives.T5_SPAN_CORRUPTION, 1.0),):
    for max_spans in (100, 5):
      n = objectives.raw_length(d, inputs_length, targets_length, max_spans)
      if d.kind != objectives.SPAN:
        continue
      i, t = objectives.span_example_lengths(n, d, max_spans)
      assert i <= inputs_length and t <= targets_length
      i2, t2 = objectives.span_example_lengths(n + 1, d, max_spans)
      assert i2 > inputs_length or t2 > targets_length or n + 1 >= inputs_length + targets_length
      # Every shorter chunk (the stream's last one) fits too.
      for m in range(1, n, max(1, n // 50)):
        i3, t3 = objectives.span_example_lengths(m, d, max_spans)
        assert i3 <= inputs_length and t3 <= targets_length


def test_mixture_and_denoiser_validation():
  with pytest.raises(ValueError, match="noise_density"):
    objectives.Denoiser(noise_density=1.5)
  with pytest.raises(ValueError, match="Denoiser.mode"):
    objectives.Denoiser(mode="[XYZ]")
  with pytest.raises(ValueError, match="rate must be > 0"):
    objectives.validate_mixture([(objectives.S_DENOISER, 0.0)])
  with pytest.raises(ValueError, match="cannot be mixed"):
    objectives.validate_mixture([(objectives.Denoiser(kind="causal_lm"), 1.0),
                                 (objectives.S_DENOISER, 1.0)])


def test_missing_lengths_is_a_clear_error(vocab):
  with pytest.raises(ValueError, match="needs feature lengths"):
    objectives.ul2(_dataset([[5, 6, 1]]), None, _features(vocab))


# ------------------------------------------------------------------------------------------------
# The two implementations against each other (same documents, same lengths, different draws).


def _span_lengths(ex, sentinel_ids, mode):
  """(noise span lengths, non-noise run lengths) of one span-corruption example."""
  sentinels = set(sentinel_ids)
  inputs = ex["inputs"][1:] if mode else ex["inputs"]
  noise, run, runs = [], 0, []
  for t in ex["targets"]:
    if t in sentinels:
      noise.append(0)
    else:
      noise[-1] += 1
  for t in inputs:
    if t in sentinels:
      runs.append(run)
      run = 0
    else:
      run += 1
  runs.append(run)
  return noise, runs


def _same_distribution(a, b, min_count=5):
  """Chi-square test of homogeneity of two samples of small integers (rare values pooled)."""
  ca, cb = collections.Counter(a), collections.Counter(b)
  keys = sorted(set(ca) | set(cb))
  table, pooled = [], [0, 0]
  for k in keys:
    if ca[k] + cb[k] >= min_count:
      table.append([ca[k], cb[k]])
    else:
      pooled[0] += ca[k]
      pooled[1] += cb[k]
  if sum(pooled):
    table.append(pooled)
  return scipy.stats.chi2_contingency(np.array(table).T)[1]


@pytest.mark.parametrize("mu, r, lengths", [
    (3, 0.15, {"inputs": 128, "targets": 32}),
    (8, 0.5, {"inputs": 96, "targets": 96}),
])
def test_numpy_and_tf_span_layouts_have_the_same_distribution(documents, vocab, mu, r, lengths):
  special = vocab_lib.special_tokens(vocab)
  d = objectives.x_denoiser(mu, r)
  got = {impl: _run(objectives.denoise_mixture, documents[:1500], vocab, lengths, impl=impl,
                    denoisers=[(d, 1.0)])[:-1] for impl in IMPLS}
  # Deterministic parts: the example lengths of full chunks are the same.
  assert ({(len(e["inputs"]), len(e["targets"])) for e in got["tf"]}
          == {(len(e["inputs"]), len(e["targets"])) for e in got["numpy"]})
  noise = {impl: [] for impl in IMPLS}
  runs = {impl: [] for impl in IMPLS}
  first_runs = {impl: [] for impl in IMPLS}
  for impl, examples in got.items():
    for ex in examples:
      n, r_ = _span_lengths(ex, special.sentinel_ids, mode=True)
      noise[impl] += n
      runs[impl] += r_[1:]
      first_runs[impl].append(r_[0])
  assert min(first_runs["numpy"]) >= 1 and min(first_runs["tf"]) >= 1  # non-noise first.
  assert _same_distribution(noise["tf"], noise["numpy"]) > 1e-3
  assert _same_distribution(runs["tf"], runs["numpy"]) > 1e-3
  assert _same_distribution(first_runs["tf"], first_runs["numpy"]) > 1e-3
  # And the test can tell different layouts apart: mu=3 vs mu=8 at the same density differ.
  other = _run(objectives.denoise_mixture, documents[:1500], vocab, lengths, impl="numpy",
               denoisers=[(objectives.x_denoiser(3 if mu != 3 else 8, r), 1.0)])[:-1]
  other_noise = [n for ex in other for n in _span_lengths(ex, special.sentinel_ids, True)[0]]
  assert _same_distribution(noise["tf"], other_noise) < 1e-6


def test_numpy_and_tf_mixtures_have_the_same_modes_and_splits(documents, vocab):
  special = vocab_lib.special_tokens(vocab)
  mode_of = {i: m for m, i in special.mode_ids.items()}
  lengths = {"inputs": 48, "targets": 48}
  modes, s2s_splits = {}, {}
  for impl in IMPLS:
    examples = _run(objectives.ul2, documents[:2500], vocab, lengths, seed=5, impl=impl)[:-1]
    modes[impl] = [mode_of[ex["inputs"][0]] for ex in examples]
    s2s_splits[impl] = [len(ex["inputs"]) for ex in examples if mode_of[ex["inputs"][0]] == "[S2S]"]
  assert _same_distribution(modes["tf"], modes["numpy"]) > 1e-3
  assert _same_distribution(s2s_splits["tf"], s2s_splits["numpy"]) > 1e-3
  prefix = {impl: [len(ex["inputs"]) for ex in _run(
      objectives.prefix_lm, documents[:1500], vocab, lengths, random_split=True, impl=impl)[:-1]]
            for impl in IMPLS}
  assert _same_distribution(prefix["tf"], prefix["numpy"]) > 1e-3


def test_numpy_twin_is_found_for_each_objective_and_only_for_them():
  for fn in (objectives.ul2, objectives.prefix_lm, objectives.span_corruption,
             objectives.causal_lm, functools.partial(objectives.prefix_lm, random_split=True),
             functools.partial(objectives.denoise_mixture,
                               denoisers=[(objectives.S_DENOISER, 1.0)])):
    assert objectives_numpy.numpy_objective(fn) is not None, fn
  assert objectives_numpy.numpy_objective(seqio.preprocessors.append_eos) is None
  twin = objectives_numpy.numpy_objective(
      functools.partial(objectives.span_corruption, mean_span_length=8.0, noise_density=0.5))
  assert twin.keywords["denoisers"][0][0] == objectives.Denoiser(mean_span_length=8.0,
                                                                  noise_density=0.5)


def test_numpy_seed_gives_the_same_bytes_and_is_stable():
  """PCG64 raw output and SeedSequence are specified: pinned values guard against drift."""
  a = objectives_numpy.Rng((7, 3)).raw([4])
  b = objectives_numpy.Rng((7, 3)).raw([4])
  assert a.tolist() == b.tolist()
  assert a[:2].tolist() == [17986194428743177670, 16317385439118320161]  # numpy 2.x, Nov 2026.
  assert objectives_numpy.Rng((7, 4)).raw([4]).tolist() != a.tolist()



@pytest.mark.parametrize("impl", IMPLS)
def test_short_streams_make_one_example_that_reassembles(vocab, impl):
  """A stream shorter than any chunk (1..9 tokens) is one flushed example, for every denoiser."""
  special = vocab_lib.special_tokens(vocab)
  denoisers = [d for d, _ in objectives.UL2_DENOISERS]
  if impl == "tf":  # ~1-4 s per run (graph tracing): one R, one X and the S denoiser.
    denoisers = [denoisers[0], denoisers[5], denoisers[6]]
  for d in denoisers:
    for n in ((1, 2, 3, 9) if impl == "numpy" else (1, 3)):
      doc = list(range(300, 300 + n))  # Not special ids (sentinels start at 7).
      (ex,) = _run(objectives.denoise_mixture, [doc], vocab, {"inputs": 48, "targets": 48},
                   impl=impl, denoisers=[(d, 1.0)])
      assert ex["inputs"][0] == special.mode_ids[d.mode]
      if d.kind == objectives.SPAN:
        chunk = _fill_spans(ex["inputs"][1:], ex["targets"], special.sentinel_ids)[0]
      else:
        chunk = ex["inputs"][1:] + ex["targets"]
      assert chunk == doc, (d.name, n, ex)
