"""Cached decoding (`trainer.model.kv_cache`) computes the uncached forward's logits at every step.

Tiny random Gemma 2 stacks with GQA (4 query / 2 KV heads), soft-caps that bind, and a sliding
window (3) shorter than prompt + generated length, so the ring buffer wraps; scanned and unrolled
layouts; decoder-only (causal and PrefixLM) and encoder-decoder; fp32 (<= 1e-5) and bf16.
Gemma 3 (QK-norm, two RoPE bases, linear RoPE scaling on global layers, 2 local : 1 global, the
end-of-image embedding) and T5Gemma 2 (merged attention, tied embedding) likewise, in fp32 and, for
greedy decoding, bf16.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from trainer.model import kv_cache
from trainer.model import scan_layout
from trainer.model.config import EncoderDecoderConfig, TransformerConfig
from trainer.model.tied_encoder_decoder import TiedEncoderDecoder
from trainer.model.transformer import Decoder, EncoderDecoder

STEPS = 6


def _config(**kw):
  fields = dict(vocab_size=64, embed_dim=32, num_layers=4, num_heads=4, num_kv_heads=2,
                head_dim=16, mlp_dim=48, query_pre_attn_scalar=16, attn_logits_soft_cap=5.0,
                final_logit_soft_cap=8.0, sliding_window=3)
  fields.update(kw)
  return TransformerConfig(**fields)


def _randomise(params, seed):
  params = meta.unbox(params)
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [x + 0.2 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def _prompts():
  rng = np.random.RandomState(0)
  lengths = np.array([5, 2, 4], np.int32)
  tokens = np.zeros((3, 5), np.int32)
  for b, n in enumerate(lengths):
    tokens[b, :n] = rng.randint(2, 64, size=n)
  forced = rng.randint(2, 64, size=(3, STEPS)).astype(np.int32)
  return tokens, lengths, forced


def _check(logits, want, dtype):
  tol = 1e-5 if dtype == 'float32' else 0.15
  np.testing.assert_allclose(np.asarray(logits, np.float32), np.asarray(want, np.float32),
                             atol=tol, rtol=tol)


@pytest.mark.parametrize('scan,prefix_lm,dtype', [
    (False, False, 'float32'), (False, True, 'float32'), (True, False, 'float32'),
    (True, True, 'float32'), (False, False, 'bfloat16'), (True, True, 'bfloat16')])
def test_decoder_only_cached_equals_uncached(scan, prefix_lm, dtype):
  _decoder_only_case(_config(scan_layers=scan, dtype=dtype), prefix_lm, dtype)


# Gemma 3: QK-norm, no attention soft-cap, local RoPE base 10 / global 1000 scaled by 2, two local
# layers per global one (scan period 3; 2 scanned groups, 3 unrolled layers to compile less), eoi
# token 7 (its own embedding; the prompts contain it).
def _gemma3(scan, **kw):
  n = 6 if scan else 3
  fields = dict(use_qk_norm=True, attn_logits_soft_cap=None, rope_theta=1000.0,
                local_rope_theta=10.0, rope_scaling_factor=2.0, num_layers=n,
                layer_types=('sliding', 'sliding', 'global') * (n // 3), eoi_token_id=7,
                scan_layers=scan)
  fields.update(kw)
  return _config(**fields)


def _with_eoi(tokens, forced):
  tokens, forced = tokens.copy(), forced.copy()
  tokens[0, 1] = tokens[2, 0] = forced[1, 2] = 7
  return tokens, forced


@pytest.mark.parametrize('scan,prefix_lm', [(False, False), (True, True)])
def test_gemma3_decoder_cached_equals_uncached(scan, prefix_lm):
  _decoder_only_case(_gemma3(scan), prefix_lm, 'float32', eoi=True)


def _decoder_only_case(cfg, prefix_lm, dtype, eoi=False):
  scan = cfg.scan_layers
  tokens, lengths, forced = _prompts()
  if eoi:
    tokens, forced = _with_eoi(tokens, forced)
  module = Decoder(cfg)
  params = _randomise(jax.jit(module.init)(jax.random.PRNGKey(0), jnp.asarray(tokens))['params'], 1)
  max_length = tokens.shape[1] + STEPS

  prefill = jax.jit(lambda p, t, n: kv_cache.prefill(cfg, p, tokens=t, lengths=n,
                                                     max_length=max_length,
                                                     bidirectional_prompt=prefix_lm))
  step = jax.jit(lambda p, c, t, pos: kv_cache.step(cfg, p, c, tokens=t, positions=pos))
  # One uncached forward over each row's whole sequence (prompt + forced tokens, right-padded):
  # position n_b - 1 + t is what step t must predict from.
  full = np.zeros((3, max_length), np.int32)
  prefix = np.zeros_like(full)
  for b, n in enumerate(lengths):
    full[b, :n + STEPS] = np.concatenate([tokens[b, :n], forced[b]])
    prefix[b, :n] = int(prefix_lm)
  segments = (np.arange(max_length)[None] < (lengths[:, None] + STEPS)).astype(np.int32)
  want = jax.jit(lambda p, *a: module.apply({'params': p}, a[0], segment_ids=a[1], causal_attention=a[2]))(
      params, full, segments, prefix if prefix_lm else None)
  logits, cache = prefill(params, tokens, lengths)
  for t in range(STEPS + 1):
    _check(logits, want[np.arange(3), lengths - 1 + t], dtype)
    if t < STEPS:
      logits, cache = step(params, cache, forced[:, t], lengths + t)
  # Sliding layers hold only their window (3 slots); global ones prompt + generated.
  self_cache = scan_layout.unrolled({'layers': cache['self']}) if scan else cache['self']
  assert self_cache['layer_0']['k'].shape[1] == 3
  assert self_cache['layer_1']['k'].shape[1] == (3 if eoi else max_length)
  assert self_cache['layer_2']['k'].shape[1] == (max_length if eoi else 3)


_START = np.zeros((3, 1), np.int32)  # the decoder's start id 0, one per example


def _check_encoder_decoder_steps(cfg, module, params, tokens, forced):
  """Prefills the encoder and the start id, then teacher-forces `forced` one cached step at a
  time; the logits equal `module`'s uncached forward at every step. -> (last cache, jitted step)."""
  logits, cache = jax.jit(lambda p: kv_cache.prefill(
      cfg, p, tokens=_START, lengths=np.ones(3, np.int32), max_length=1 + STEPS,
      encoder_tokens=tokens))(params)
  step = jax.jit(lambda p, c, t, pos: kv_cache.step(cfg, p, c, tokens=t, positions=pos))
  want = jax.jit(module.apply)({'params': params}, tokens, np.concatenate([_START, forced], axis=1))
  for t in range(STEPS + 1):
    _check(logits, want[:, t], 'float32')
    if t < STEPS:
      logits, cache = step(params, cache, forced[:, t], np.full(3, 1 + t, np.int32))
  return cache, step


@pytest.mark.parametrize('scan', [False, True])
def test_encoder_decoder_cached_equals_uncached(scan):
  enc = _config(scan_layers=scan, embed_dim=40, sliding_window=2, num_layers=2)
  cfg = EncoderDecoderConfig(encoder=enc, decoder=_config(scan_layers=scan))
  tokens, lengths, forced = _prompts()
  module = EncoderDecoder(cfg)
  params = _randomise(jax.jit(module.init)(jax.random.PRNGKey(0), jnp.asarray(tokens),
                                          jnp.asarray(_START))['params'], 2)
  _check_encoder_decoder_steps(cfg, module, params, tokens, forced)


@pytest.mark.parametrize('scan', [False, True])
def test_t5gemma2_cached_equals_uncached(scan):
  """Merged attention: each step's one softmax over the cached self K/V (ring buffer on the
  sliding layers) and the encoder K/V computed at prefill; decoder tokens embedded by, and logits
  read from, the encoder's tied embedding."""
  cfg = EncoderDecoderConfig(
      encoder=_gemma3(scan, bidirectional_window='split', sliding_window=2),
      decoder=_gemma3(scan), merged_attention=True)
  tokens, lengths, forced = _prompts()
  tokens, forced = _with_eoi(tokens, forced)
  module = TiedEncoderDecoder(cfg)
  params = _randomise(jax.jit(module.init)(jax.random.PRNGKey(0), jnp.asarray(tokens),
                                          jnp.asarray(_START))['params'], 3)
  assert 'embedder' not in params['decoder']
  cache, step = _check_encoder_decoder_steps(cfg, module, params, tokens, forced)
  # Beam search's reorder keeps rows consistent: reordered cache, reordered logits.
  idx = np.array([2, 0, 0])
  moved = kv_cache.reorder(cfg, cache, idx)
  got, _ = step(params, moved, forced[idx, 0], np.full(3, 1 + STEPS, np.int32))
  ref, _ = step(params, cache, forced[:, 0], np.full(3, 1 + STEPS, np.int32))
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref)[idx], atol=1e-6)


def test_cache_bytes_sliding_layers_are_window_sized():
  cfg = _config(sliding_window=3)
  per_slot = 2 * 2 * 16 * 4
  assert kv_cache.cache_bytes(cfg, batch=2, max_length=100) == 2 * (3 + 100 + 3 + 100) * per_slot
  glob = dataclasses.replace(cfg, sliding_window=None)
  assert kv_cache.cache_bytes(glob, batch=1, max_length=100) == 4 * 100 * per_slot


# ---------------------------------------------------------------------------------------------
# bf16 decoding of the Gemma 3 family: the greedy path of the uncached forward (the model in bf16,
# run over the whole sequence at each step) is followed by the cache; at every step the cached
# logits are within BF16_TOL of the uncached ones, and the cached argmax is the uncached greedy
# token wherever the uncached top-2 margin exceeds 2 * BF16_TOL (closer margins are bf16 ties).
# Measured on XLA CPU: the cached bf16 logits equal the uncached ones exactly (max difference 0.0;
# bf16 against fp32 differs by 0.06 on logits of magnitude 5) and every step is a clear decision;
# the tolerance leaves room for backends whose kernels sum in another order.

BF16_TOL = 0.15


def _greedy_agrees(prefill, step, uncached, lengths, steps):
  """`uncached(ids)` -> logits [B, T, V] of the whole sequence; ids [B, T] right-padded."""
  rows = np.arange(len(lengths))
  ids = np.array(uncached.initial)
  logits, cache = prefill()
  margins = []
  for t in range(steps):
    want = np.asarray(uncached(ids), np.float32)[rows, lengths - 1 + t]
    got = np.asarray(logits, np.float32)
    np.testing.assert_allclose(got, want, atol=BF16_TOL, rtol=BF16_TOL)
    top2 = np.sort(want, axis=-1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    greedy = want.argmax(-1)
    clear = margin > 2 * BF16_TOL
    np.testing.assert_array_equal(got.argmax(-1)[clear], greedy[clear])
    margins.append(margin)
    ids[rows, lengths + t] = greedy
    logits, cache = step(cache, greedy, lengths + t)
  # Most steps are clear decisions, so the argmax check above is not vacuous.
  assert np.mean(np.concatenate(margins) > 2 * BF16_TOL) >= 0.5


def test_gemma3_decoder_bf16_greedy_cached_follows_uncached():
  cfg = _gemma3(False, dtype='bfloat16')
  tokens, lengths, _ = _prompts()
  tokens, _ = _with_eoi(tokens, np.zeros((3, STEPS), np.int32))
  module = Decoder(cfg)
  params = _randomise(jax.jit(module.init)(jax.random.PRNGKey(0), jnp.asarray(tokens))['params'], 4)
  max_length = tokens.shape[1] + STEPS
  forward = jax.jit(lambda p, ids: module.apply({'params': p}, ids))

  def uncached(ids):
    return forward(params, ids)  # causal: positions past the current one do not matter
  initial = np.zeros((3, max_length), np.int32)
  initial[:, :tokens.shape[1]] = tokens
  uncached.initial = initial
  prefill = jax.jit(lambda p: kv_cache.prefill(cfg, p, tokens=tokens, lengths=lengths,
                                               max_length=max_length))
  step = jax.jit(lambda p, c, t, pos: kv_cache.step(cfg, p, c, tokens=t, positions=pos))
  _greedy_agrees(lambda: prefill(params), lambda c, t, pos: step(params, c, t, pos), uncached,
                 lengths, STEPS)


def test_t5gemma2_bf16_greedy_cached_follows_uncached():
  cfg = EncoderDecoderConfig(
      encoder=_gemma3(False, bidirectional_window='split', sliding_window=2, dtype='bfloat16'),
      decoder=_gemma3(False, dtype='bfloat16'), merged_attention=True)
  tokens, _, _ = _prompts()
  tokens, _ = _with_eoi(tokens, np.zeros((3, STEPS), np.int32))
  module = TiedEncoderDecoder(cfg)
  start = np.zeros((3, 1), np.int32)
  params = _randomise(jax.jit(module.init)(jax.random.PRNGKey(0), jnp.asarray(tokens),
                                          jnp.asarray(start))['params'], 5)
  max_length = 1 + STEPS
  lengths = np.ones(3, np.int32)
  forward = jax.jit(lambda p, ids: module.apply({'params': p}, tokens, ids))

  def uncached(ids):
    return forward(params, ids)  # causal: positions past the current one do not matter
  uncached.initial = np.zeros((3, max_length), np.int32)
  prefill = jax.jit(lambda p: kv_cache.prefill(cfg, p, tokens=start, lengths=lengths,
                                               max_length=max_length, encoder_tokens=tokens))
  step = jax.jit(lambda p, c, t, pos: kv_cache.step(cfg, p, c, tokens=t, positions=pos))
  _greedy_agrees(lambda: prefill(params), lambda c, t, pos: step(params, c, t, pos), uncached,
                 lengths, STEPS)
