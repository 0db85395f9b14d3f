"""trainer.model.dropout: the mask's rate, scaling, determinism and shapes, and its use in models."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.model import dropout as dropout_lib
from trainer.model.config import TransformerConfig
from trainer.model.transformer import Encoder


def _apply(rate, x, key, deterministic=False):
  return dropout_lib.Dropout(rate=rate).apply({}, x, deterministic=deterministic,
                                              rngs={'dropout': key})


@pytest.mark.parametrize('rate', [0.1, 0.5])
def test_drop_fraction_and_scale(rate):
  x = jnp.full((64, 128, 129), 2.0)  # odd last axis: the pairs of draws are cut at its end
  y = np.asarray(_apply(rate, x, jax.random.key(0)))
  dropped = (y == 0).mean()
  # 1,056,768 draws: the binomial's standard deviation is <= 0.0005.
  assert abs(dropped - rate) < 0.003, dropped
  kept = y[y != 0]
  threshold = round(rate * 65536)
  np.testing.assert_allclose(kept, 2.0 * 65536 / (65536 - threshold), rtol=1e-6)
  # Unbiased: the mean of the output is the input's.
  assert abs(y.mean() - 2.0) < 0.02


def test_same_key_same_mask_other_key_other_mask():
  x = jnp.ones((8, 33))
  a = _apply(0.3, x, jax.random.key(1))
  np.testing.assert_array_equal(a, _apply(0.3, x, jax.random.key(1)))
  assert not np.array_equal(a, _apply(0.3, x, jax.random.key(2)))


def test_draws_are_independent_across_the_last_axis_pairs():
  # The two 16-bit halves of one 32-bit word land on neighbouring elements: their masks must not
  # be correlated (a shared word would make a kept element predict its neighbour).
  mask = np.asarray(dropout_lib.keep_mask(jax.random.key(3), (4096, 64), 0.5))
  even, odd = mask[:, 0::2].ravel(), mask[:, 1::2].ravel()
  both = (even & odd).mean()
  assert abs(both - 0.25) < 0.01, both
  # and no row or column pattern: every column's keep rate is near 1/2.
  assert np.all(np.abs(mask.mean(axis=0) - 0.5) < 0.05)


def test_deterministic_and_rate_zero_are_identity():
  x = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(_apply(0.4, x, jax.random.key(0), deterministic=True), x)
  np.testing.assert_array_equal(_apply(0.0, x, jax.random.key(0)), x)


def test_scalar_and_bfloat16_inputs():
  y = _apply(0.5, jnp.asarray(3.0, jnp.bfloat16), jax.random.key(0))
  assert y.dtype == jnp.bfloat16 and y.shape == ()
  assert float(y) in (0.0, 6.0)


def test_bad_rate_is_a_clear_error():
  with pytest.raises(ValueError, match=r'Dropout.rate must be in \[0, 1\), got 1.0'):
    _apply(1.0, jnp.ones(3), jax.random.key(0))


def test_encoder_uses_it_only_when_training():
  cfg = TransformerConfig(vocab_size=64, embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=1,
                          head_dim=16, mlp_dim=64, query_pre_attn_scalar=16, sliding_window=8,
                          dropout_rate=0.2)
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 64, (2, 8)), jnp.int32)
  model = Encoder(cfg)
  params = model.init(jax.random.key(0), tokens)['params']
  plain = Encoder(dataclasses.replace(cfg, dropout_rate=0.0)).apply({'params': params}, tokens)
  np.testing.assert_array_equal(model.apply({'params': params}, tokens, deterministic=True),
                                plain)
  train = model.apply({'params': params}, tokens, deterministic=False,
                      rngs={'dropout': jax.random.key(5)})
  assert not np.allclose(train, plain)
  # Same key, same output, under jit too.
  f = jax.jit(lambda p, k: model.apply({'params': p}, tokens, deterministic=False,
                                       rngs={'dropout': k}).sum())
  np.testing.assert_array_equal(f(params, jax.random.key(5)), f(params, jax.random.key(5)))
