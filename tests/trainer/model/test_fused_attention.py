"""Fused attention (tokamax) against the reference path, on CPU.

The Pallas kernels need a GPU; here the same tokamax entry point runs with its 'xla'
implementation, which checks what this project adds (mask -> per-query key ranges, scale,
soft-cap, GQA, the call convention) forward and backward. The kernels themselves are compared with
the reference on GPU by scripts/gpu_perf.py.
"""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.model import attention
from trainer.model import fused_attention
from trainer.model import reference_attention
from trainer.model.reference_attention import AttentionMask

pytest.importorskip('tokamax')

SEG = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 0, 0],
                [1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2]], np.int32)
PREFIX = np.array([[1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0],
                   [1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0]], bool)
# Unpacked PrefixLM rows: one prefix run from position 0.
PREFIX_UNPACKED = np.arange(16)[None, :] < np.array([[5], [9]])

CASES = {
    'decoder_packed_window': dict(q_segment_ids=SEG, kv_segment_ids=SEG, causal=True,
                                  sliding_window=3),
    'decoder_packed_global': dict(q_segment_ids=SEG, kv_segment_ids=SEG, causal=True),
    'prefix_lm_packed_window': dict(q_segment_ids=SEG, kv_segment_ids=SEG, causal=True,
                                    bidirectional=PREFIX, sliding_window=2),
    'prefix_lm_unpacked': dict(causal=True, bidirectional=PREFIX_UNPACKED),
    'encoder_packed_window': dict(q_segment_ids=SEG, kv_segment_ids=SEG, sliding_window=2),
    'causal_no_segments_window': dict(causal=True, sliding_window=4),
}


def _mask(case):
  kw = dict(CASES[case])
  for name in ('q_segment_ids', 'kv_segment_ids', 'bidirectional'):
    if name in kw:
      kw[name] = jnp.asarray(kw[name])
  return AttentionMask(**kw)


def _ranges_as_bool(mask, q_len, kv_len):
  k_start, k_end, kv_valid = fused_attention.key_ranges(mask, q_len, kv_len)
  j = np.arange(kv_len)[None, None, :]
  out = (np.asarray(k_start)[:, :, None] <= j) & (j < np.asarray(k_end)[:, :, None])
  if kv_valid is not None:
    out = out & np.asarray(kv_valid)[:, None, :]
  return out


@pytest.mark.parametrize('case', sorted(CASES))
def test_key_ranges_equal_the_reference_mask_on_rows_that_see_a_key(case):
  mask = _mask(case)
  ref = np.broadcast_to(np.asarray(mask.materialize(16, 16)), (2, 16, 16))
  got = np.broadcast_to(_ranges_as_bool(mask, 16, 16), (2, 16, 16))
  seen = ref.any(-1)
  np.testing.assert_array_equal(got[seen], ref[seen])
  # Rows that see nothing (padding queries) get a non-empty range: finite outputs.
  assert got.any(-1).all()


def test_cross_attention_key_ranges():
  dec_seg = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0]], jnp.int32)
  enc_seg = jnp.asarray([[1, 1, 2, 2, 2, 2, 0, 0, 0, 0]], jnp.int32)  # no encoder segment 3
  mask = AttentionMask(q_segment_ids=dec_seg, kv_segment_ids=enc_seg)
  got = _ranges_as_bool(mask, 8, 10)[0]
  ref = np.asarray(mask.materialize(8, 10))[0]
  seen = ref.any(-1)
  assert seen.tolist() == [True] * 5 + [False] * 3
  np.testing.assert_array_equal(got[seen], ref[seen])
  # Without query segment ids only padding keys are masked (a broadcast boolean).
  mask = AttentionMask(kv_segment_ids=jnp.asarray([[1, 1, 2, 0, 2, 0]], jnp.int32))
  np.testing.assert_array_equal(_ranges_as_bool(mask, 4, 6)[0],
                                np.broadcast_to(np.asarray(mask.materialize(4, 6))[0], (4, 6)))


def _qkv(dtype, *, q_len=16, kv_len=16, heads=4, kv_heads=2, head_dim=32, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  q = 2.0 * jax.random.normal(keys[0], (2, q_len, heads, head_dim), jnp.float32)
  k = 2.0 * jax.random.normal(keys[1], (2, kv_len, kv_heads, head_dim), jnp.float32)
  v = jax.random.normal(keys[2], (2, kv_len, kv_heads, head_dim), jnp.float32)
  return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def _compare(mask, q, k, v, *, atol, rtol, soft_cap=5.0, scale=32**-0.5):
  """Forward and gradients (of a weighted sum over rows that see a key) fused vs reference."""
  bool_mask = np.broadcast_to(np.asarray(mask.materialize(q.shape[1], k.shape[1])),
                              (q.shape[0], q.shape[1], k.shape[1]))
  rows = jnp.asarray(bool_mask.any(-1), jnp.float32)[:, :, None, None]
  w = jax.random.normal(jax.random.PRNGKey(7), q.shape, jnp.float32)

  def run(fn):
    def loss(q, k, v):
      out = fn(q, k, v, mask=mask, scale=scale, soft_cap=soft_cap)
      return jnp.sum(out.astype(jnp.float32) * w * rows), out
    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads

  def fused(q, k, v, **kw):
    return fused_attention.tokamax_attention(q, k, v, implementation=('xla',), **kw)

  ref_out, ref_grads = run(reference_attention.reference_attention)
  out, grads = run(fused)
  assert out.dtype == q.dtype and out.shape == q.shape
  r = np.asarray(rows[..., 0, 0], bool)
  np.testing.assert_allclose(np.asarray(out, np.float32)[r], np.asarray(ref_out, np.float32)[r],
                             atol=atol, rtol=rtol)
  for name, g, rg in zip('qkv', grads, ref_grads):
    g, rg = np.asarray(g, np.float32), np.asarray(rg, np.float32)
    assert np.abs(rg).max() > 1e-3, name  # the gradient is not trivially zero
    np.testing.assert_allclose(g, rg, atol=atol * max(1.0, np.abs(rg).max()), rtol=rtol,
                               err_msg=f'd/d{name}')


@pytest.mark.parametrize('case', sorted(CASES))
def test_fused_matches_reference_fp32_forward_and_gradients(case):
  _compare(_mask(case), *_qkv(jnp.float32), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize('case', ['decoder_packed_window', 'prefix_lm_packed_window'])
def test_fused_matches_reference_bf16(case):
  _compare(_mask(case), *_qkv(jnp.bfloat16), atol=3e-2, rtol=3e-2)


def test_fused_matches_reference_cross_attention():
  dec_seg = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 2, 2, 2, 2]], jnp.int32)
  enc_seg = jnp.asarray([[1, 1, 1, 1, 2, 2, 0, 0, 0, 0], [1, 1, 2, 2, 2, 2, 2, 2, 2, 0]],
                        jnp.int32)
  q, k, v = _qkv(jnp.float32, q_len=8, kv_len=10)
  _compare(AttentionMask(q_segment_ids=dec_seg, kv_segment_ids=enc_seg), q, k, v,
           atol=2e-5, rtol=2e-5)
  _compare(AttentionMask(kv_segment_ids=enc_seg), q, k, v, atol=2e-5, rtol=2e-5)


def test_cpu_falls_back_to_the_reference_with_one_message(caplog):
  fused_attention._WARNED.clear()
  mask = _mask('decoder_packed_window')
  q, k, v = _qkv(jnp.float32)
  with caplog.at_level(logging.WARNING):
    out1 = fused_attention.fused_attention(q, k, v, mask=mask, scale=0.2, soft_cap=5.0)
    out2 = jax.jit(lambda q, k, v: fused_attention.fused_attention(
        q, k, v, mask=mask, scale=0.2, soft_cap=5.0))(q, k, v)
  messages = [r.getMessage() for r in caplog.records if 'attention_impl=fused' in r.getMessage()]
  assert len(messages) == 1 and 'reference attention' in messages[0], messages
  ref = reference_attention.reference_attention(q, k, v, mask=mask, scale=0.2, soft_cap=5.0)
  np.testing.assert_array_equal(np.asarray(out1), np.asarray(ref))
  np.testing.assert_allclose(np.asarray(out2), np.asarray(ref), atol=1e-6)


def test_unsupported_implementation_falls_back_too(caplog):
  fused_attention._WARNED.clear()
  q, k, v = _qkv(jnp.float32)
  with caplog.at_level(logging.WARNING):
    out = fused_attention.fused_attention(q, k, v, mask=None, scale=0.2, soft_cap=None,
                                          implementation=('triton',))  # CPU: not supported
  assert any('cannot run' in r.getMessage() for r in caplog.records)
  np.testing.assert_array_equal(
      np.asarray(out),
      np.asarray(reference_attention.reference_attention(q, k, v, mask=None, scale=0.2, soft_cap=None)))


def test_decoder_logits_through_the_fused_path(monkeypatch):
  """The model's own q/k/v through tokamax (the wiring the lead applies: one _IMPLS entry)."""
  from trainer.model import config as config_lib
  from trainer.model import transformer
  cfg = config_lib.TransformerConfig(
      vocab_size=64, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
      mlp_dim=64, query_pre_attn_scalar=16, sliding_window=3)
  tokens = jnp.asarray(np.random.RandomState(0).randint(1, 64, size=SEG.shape), jnp.int32)
  seg = jnp.asarray(SEG)
  tokens = tokens * (seg > 0)
  model = transformer.Decoder(cfg)
  kw = dict(segment_ids=seg, causal_attention=jnp.asarray(PREFIX, jnp.int32))
  params = model.init(jax.random.PRNGKey(0), tokens, **kw)
  ref = model.apply(params, tokens, **kw)
  calls = []

  def fused(q, k, v, **kwargs):
    calls.append(q.shape)
    return fused_attention.tokamax_attention(q, k, v, implementation=('xla',), **kwargs)

  monkeypatch.setitem(attention.KERNELS, 'reference', fused)
  got = model.apply(params, tokens, **kw)
  assert len(calls) == 2
  real = np.asarray(seg) > 0
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(ref)[real], atol=1e-4, rtol=1e-4)
