"""Attention kernel interface and mask construction, checked against brute-force loops."""
import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from trainer.model import attention
from trainer.model.reference_attention import AttentionMask
from trainer.model.config import ATTENTION_IMPLS


def _brute_mask(q_len, kv_len, *, q_seg=None, kv_seg=None, prefix=None, causal=False,
                window=None):
  out = np.zeros((q_len, kv_len), bool)
  for i, j in itertools.product(range(q_len), range(kv_len)):
    ok = True
    if kv_seg is not None:
      ok &= kv_seg[j] != 0
      if q_seg is not None:
        ok &= q_seg[i] == kv_seg[j]
    if causal:
      ok &= j <= i or (prefix is not None and prefix[i] and prefix[j])
      if window is not None:
        ok &= abs(i - j) < window
    elif window is not None:
      ok &= abs(i - j) <= window
    out[i, j] = ok
  return out


SEG = np.array([1, 1, 1, 1, 2, 2, 2, 2, 2, 0])
PREFIX = np.array([1, 1, 0, 0, 1, 1, 1, 0, 0, 0])


@pytest.mark.parametrize('causal,window,use_prefix,use_seg', [
    (True, None, False, False), (True, 3, False, True), (True, 2, True, True),
    (True, None, True, True), (False, None, False, True), (False, 2, False, True),
    (False, 3, False, False)])
def test_self_attention_mask_matches_brute_force(causal, window, use_prefix, use_seg):
  seg = SEG if use_seg else None
  prefix = PREFIX if use_prefix else None
  mask = AttentionMask(
      q_segment_ids=None if seg is None else jnp.asarray(seg[None]),
      kv_segment_ids=None if seg is None else jnp.asarray(seg[None]),
      bidirectional=None if prefix is None else jnp.asarray(prefix[None]), causal=causal,
      sliding_window=window)
  got = mask.materialize(10, 10)
  want = _brute_mask(10, 10, q_seg=seg, kv_seg=seg, prefix=prefix, causal=causal, window=window)
  np.testing.assert_array_equal(np.broadcast_to(np.asarray(got), (1, 10, 10))[0], want)


def test_mask_shapes_are_broadcast_not_per_head():
  seg = jnp.asarray(np.stack([SEG, SEG]))
  assert AttentionMask(causal=True).materialize(10, 10).shape == (1, 10, 10)
  assert AttentionMask(q_segment_ids=seg, kv_segment_ids=seg).materialize(10, 10).shape == (2, 10,
                                                                                              10)
  assert AttentionMask().materialize(10, 10) is None


def test_cross_attention_mask_pairs_segments_and_skips_encoder_padding():
  dec_seg = np.array([1, 1, 1, 2, 2, 0])
  enc_seg = np.array([1, 1, 2, 2, 2, 2, 0, 0])
  mask = AttentionMask(q_segment_ids=jnp.asarray(dec_seg[None]),
                       kv_segment_ids=jnp.asarray(enc_seg[None]))
  np.testing.assert_array_equal(np.asarray(mask.materialize(6, 8))[0],
                                _brute_mask(6, 8, q_seg=dec_seg, kv_seg=enc_seg))
  only_padding = AttentionMask(kv_segment_ids=jnp.asarray(enc_seg[None]))
  np.testing.assert_array_equal(np.broadcast_to(only_padding.materialize(6, 8), (1, 6, 8))[0],
                                np.broadcast_to(enc_seg != 0, (6, 8)))


def _numpy_attention(q, k, v, mask, scale, cap):
  batch, q_len, heads, _ = q.shape
  groups = heads // k.shape[2]
  out = np.zeros_like(q)
  for b, h in itertools.product(range(batch), range(heads)):
    logits = q[b, :, h] @ k[b, :, h // groups].T * scale
    if cap is not None:
      logits = np.tanh(logits / cap) * cap
    if mask is not None:
      logits = np.where(mask[b], logits, -np.inf)
    with np.errstate(invalid='ignore'):  # rows that see nothing become NaN here
      logits -= logits.max(-1, keepdims=True)
      probs = np.exp(logits)
      probs /= probs.sum(-1, keepdims=True)
    out[b, :, h] = probs @ v[b, :, h // groups]
  return out


@pytest.mark.parametrize('cap', [None, 2.0])
def test_reference_attention_matches_numpy_with_gqa(cap):
  rs = np.random.RandomState(0)
  q = rs.normal(size=(2, 10, 6, 8)).astype(np.float32)
  k = rs.normal(size=(2, 10, 2, 8)).astype(np.float32)
  v = rs.normal(size=(2, 10, 2, 8)).astype(np.float32)
  seg = np.stack([SEG, np.array([1] * 10)])
  mask = AttentionMask(q_segment_ids=jnp.asarray(seg), kv_segment_ids=jnp.asarray(seg),
                       causal=True, sliding_window=3)
  got = attention.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=mask,
                                        scale=0.3, soft_cap=cap, impl='reference')
  dense = np.asarray(mask.materialize(10, 10))
  want = _numpy_attention(q, k, v, dense, 0.3, cap)
  # Padding query (row 0, position 9) sees nothing: numpy gives NaN there, we give a finite value.
  assert np.all(np.isfinite(np.asarray(got)))
  valid = np.broadcast_to(dense.any(-1)[:, :, None, None], want.shape)
  np.testing.assert_allclose(np.asarray(got)[valid], want[valid], atol=1e-5)
  assert not valid.all()


def test_soft_cap_changes_output_and_unknown_impl_is_named():
  rs = np.random.RandomState(1)
  q, k, v = (jnp.asarray(rs.normal(size=(1, 4, 2, 8)).astype(np.float32) * 3) for _ in range(3))
  capped = attention.dot_product_attention(q, k, v, mask=None, scale=1.0, soft_cap=1.0)
  free = attention.dot_product_attention(q, k, v, mask=None, scale=1.0, soft_cap=None)
  assert not np.allclose(capped, free)
  with pytest.raises(ValueError, match='flash'):
    attention.dot_product_attention(q, k, v, mask=None, scale=1.0, soft_cap=None, impl='flash')
  assert set(ATTENTION_IMPLS) == {'reference', 'fused'}


def test_fused_impl_is_wired_and_matches_reference_here():
  """'fused' dispatches to trainer.model.fused_attention (the reference path off GPU)."""
  rs = np.random.RandomState(3)
  q = jnp.asarray(rs.normal(size=(2, 10, 4, 8)).astype(np.float32))
  k, v = (jnp.asarray(rs.normal(size=(2, 10, 2, 8)).astype(np.float32)) for _ in range(2))
  seg = jnp.asarray(np.stack([SEG, np.ones(10, int)]))
  mask = AttentionMask(q_segment_ids=seg, kv_segment_ids=seg, causal=True, sliding_window=3)
  fused = attention.dot_product_attention(q, k, v, mask=mask, scale=0.3, soft_cap=2.0,
                                          impl='fused')
  reference = attention.dot_product_attention(q, k, v, mask=mask, scale=0.3, soft_cap=2.0)
  np.testing.assert_allclose(np.asarray(fused)[:, :9], np.asarray(reference)[:, :9], atol=1e-5)


def test_bfloat16_inputs_keep_dtype():
  rs = np.random.RandomState(2)
  q, k, v = (jnp.asarray(rs.normal(size=(1, 4, 2, 8)), jnp.bfloat16) for _ in range(3))
  out = attention.dot_product_attention(q, k, v, mask=AttentionMask(causal=True), scale=0.5,
                                        soft_cap=50.0)
  assert out.dtype == jnp.bfloat16
  want = _numpy_attention(*(np.asarray(x, np.float32) for x in (q, k, v)),
                          np.tril(np.ones((1, 4, 4), bool)), 0.5, 50.0)
  np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=0.05)


@pytest.mark.parametrize('q_len,kv_len,causal', [(10, 10, True), (6, 10, False)])  # self, cross
def test_heads_major_cpu_layout_agrees_with_the_einsum_form_with_gradients(q_len, kv_len, causal):
  """`reference_attention` on CPU lays q, k, v out heads-major; same values and gradients."""
  import jax  # pylint: disable=g-import-not-at-top
  from trainer.model import reference_attention  # pylint: disable=g-import-not-at-top
  rs = np.random.RandomState(3)
  q = jnp.asarray(rs.normal(size=(2, q_len, 6, 8)).astype(np.float32))
  k = jnp.asarray(rs.normal(size=(2, kv_len, 2, 8)).astype(np.float32))
  v = jnp.asarray(rs.normal(size=(2, kv_len, 2, 8)).astype(np.float32))
  seg = jnp.asarray(np.stack([SEG, np.array([1] * 10)]))
  mask = AttentionMask(q_segment_ids=seg[:, :q_len], kv_segment_ids=seg, causal=causal,
                       sliding_window=3 if causal else None)

  def loss(q, k, v):
    out = attention.dot_product_attention(q, k, v, mask=mask, scale=0.3, soft_cap=2.0)
    return jnp.sum(jnp.tanh(out) ** 2), out

  results = {}
  for heads_major in (True, False):
    with reference_attention.heads_major(heads_major):
      results[heads_major] = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  (grads_hm, out_hm), (grads, out) = results[True], results[False]
  np.testing.assert_allclose(np.asarray(out_hm), np.asarray(out), atol=1e-6)
  for a, b in zip(grads_hm, grads):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  assert float(jnp.abs(grads[1]).sum()) > 0
