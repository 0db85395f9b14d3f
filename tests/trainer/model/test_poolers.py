"""Poolers: exact results on hand-made hidden states, invariance to padding and packing."""
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.model import poolers

KINDS = poolers.POOLER_KINDS


def _apply(kind, hidden, segment_ids, max_segments=1, query=None):
  pooler = poolers.Pooler(kind=kind, max_segments=max_segments)
  params = pooler.init(jax.random.PRNGKey(0), hidden, segment_ids)
  if query is not None:
    params = {'params': {'query': query}}
  return pooler.apply(params, hidden, segment_ids)


def test_each_kind_on_known_values():
  # One row, 3 real tokens then 2 pads; pads carry large values that must not leak in.
  hidden = jnp.array([[[1., 2.], [3., 4.], [5., 9.], [100., 100.], [-100., 7.]]])
  seg = jnp.array([[1, 1, 1, 0, 0]])
  expect = {'first': [1., 2.], 'last': [5., 9.], 'mean': [3., 5.],
            'attention': [3., 5.]}  # zero-initialised query = uniform attention = mean
  for kind in KINDS:
    pooled, mask = _apply(kind, hidden, seg)
    assert pooled.shape == (1, 1, 2) and mask.shape == (1, 1)
    np.testing.assert_allclose(pooled[0, 0], expect[kind], rtol=1e-6, err_msg=kind)
    assert bool(mask[0, 0])


def test_attention_pooler_follows_learned_query():
  hidden = jnp.array([[[4., 0.], [0., 4.], [9., 9.]]])
  seg = jnp.array([[1, 1, 0]])
  query = jnp.array([1., -1.])  # logits = (q . h) / sqrt(2) = +-4 / sqrt(2)
  pooled, _ = _apply('attention', hidden, seg, query=query)
  w0 = 1.0 / (1.0 + np.exp(-8.0 / np.sqrt(2.0)))
  np.testing.assert_allclose(pooled[0, 0], [4 * w0, 4 * (1 - w0)], rtol=1e-6)


@pytest.mark.parametrize('kind', KINDS)
def test_unchanged_by_padding(kind):
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(size=(2, 6, 8)), jnp.float32)
  seg = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
  query = jnp.asarray(rng.normal(size=(8,)), jnp.float32)
  base, _ = _apply(kind, hidden, seg, query=query)
  # Same tokens followed by 5 more pads whose hidden states are garbage.
  extra = jnp.asarray(rng.normal(size=(2, 5, 8)) * 1e3, jnp.float32)
  padded_hidden = jnp.concatenate([hidden, extra], axis=1)
  padded_seg = jnp.concatenate([seg, jnp.zeros((2, 5), seg.dtype)], axis=1)
  padded, mask = _apply(kind, padded_hidden, padded_seg, query=query)
  np.testing.assert_allclose(padded, base, rtol=1e-6, atol=1e-6)
  assert mask.all()


@pytest.mark.parametrize('kind', KINDS)
def test_packed_segments_match_separate_rows(kind):
  rng = np.random.default_rng(1)
  a = jnp.asarray(rng.normal(size=(1, 3, 4)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(1, 5, 4)), jnp.float32)
  query = jnp.asarray(rng.normal(size=(4,)), jnp.float32)
  alone_a, _ = _apply(kind, a, jnp.ones((1, 3), jnp.int32), query=query)
  alone_b, _ = _apply(kind, b, jnp.ones((1, 5), jnp.int32), query=query)
  pad = jnp.full((1, 2, 4), 55.0)
  packed = jnp.concatenate([a, b, pad], axis=1)
  seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2, 0, 0]])
  pooled, mask = _apply(kind, packed, seg, max_segments=3, query=query)
  assert pooled.shape == (1, 3, 4)
  np.testing.assert_array_equal(mask, [[True, True, False]])
  np.testing.assert_allclose(pooled[0, 0], alone_a[0, 0], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(pooled[0, 1], alone_b[0, 0], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(pooled[0, 2], np.zeros(4))  # absent slot: zeros, no NaN


def test_bad_kind_and_shapes_are_named():
  with pytest.raises(ValueError, match="kind='max'"):
    _apply('max', jnp.zeros((1, 2, 3)), jnp.ones((1, 2), jnp.int32))
  with pytest.raises(ValueError, match='segment_ids'):
    _apply('mean', jnp.zeros((1, 2, 3)), jnp.ones((1, 3), jnp.int32))
  with pytest.raises(ValueError, match='max_segments=0'):
    _apply('mean', jnp.zeros((1, 2, 3)), jnp.ones((1, 2), jnp.int32), max_segments=0)
