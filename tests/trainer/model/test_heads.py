"""Heads: losses against hand-computed values, masking, and a few learning steps."""
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainer.model import heads


def test_config_validation_names_field():
  with pytest.raises(ValueError, match="kind='tagging'"):
    heads.HeadConfig(kind='tagging')
  with pytest.raises(ValueError, match='num_classes=1'):
    heads.HeadConfig(num_classes=1)
  with pytest.raises(ValueError, match="ranking_loss='pairwise'"):
    heads.HeadConfig(kind='ranking', ranking_loss='pairwise')


def test_head_output_shapes():
  pooled = jnp.ones((2, 3, 5))
  for kind, shape in [('classification', (2, 3, 4)), ('regression', (2, 3)),
                      ('ranking', (2, 3))]:
    head = heads.Head(heads.HeadConfig(kind=kind, num_classes=4))
    params = head.init(jax.random.PRNGKey(0), pooled)
    assert head.apply(params, pooled).shape == shape


def test_classification_loss_matches_hand_value_and_ignores_masked():
  logits = jnp.array([[[2.0, 0.0], [0.0, 1.0], [50.0, -50.0]]])
  labels = jnp.array([[0, 0, 1]])
  mask = jnp.array([[True, True, False]])  # third slot (badly wrong) is absent
  loss, metrics = heads.classification_loss(logits, labels, mask)
  expect = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(1.0))) / 2
  np.testing.assert_allclose(loss, expect, rtol=1e-6)
  np.testing.assert_allclose(metrics['accuracy'], (1.0, 2.0))


def test_regression_loss():
  loss, metrics = heads.regression_loss(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 5.0]]),
                                        jnp.array([[True, False]]))
  np.testing.assert_allclose(loss, 1.0)
  np.testing.assert_allclose(metrics['mse'], (1.0, 1.0))


def test_pointwise_ranking_loss():
  scores = jnp.array([[0.5, -1.0]])
  labels = jnp.array([[1, 0]])
  loss, _ = heads.pointwise_ranking_loss(scores, labels, jnp.ones((1, 2), bool))
  expect = (np.log1p(np.exp(-0.5)) + np.log1p(np.exp(-1.0))) / 2
  np.testing.assert_allclose(loss, expect, rtol=1e-6)


def test_listwise_groups_by_query_across_rows_and_slots():
  # Query 7: candidates (row0 slot0, row1 slot0), positive = row1 slot0.
  # Query 9: candidates (row0 slot1, row1 slot1, row1 slot2 masked), positive = row0 slot1.
  scores = jnp.array([[1.0, 0.0, 0.0], [2.0, 3.0, 40.0]])
  labels = jnp.array([[0, 1, 0], [1, 0, 1]])
  qids = jnp.array([[7, 9, 0], [7, 9, 9]])
  mask = jnp.array([[True, True, False], [True, True, False]])
  loss, metrics = heads.listwise_ranking_loss(scores, labels, qids, mask)
  q7 = -(2.0 - np.log(np.exp(1.0) + np.exp(2.0)))
  q9 = -(0.0 - np.log(np.exp(0.0) + np.exp(3.0)))
  np.testing.assert_allclose(loss, (q7 + q9) / 2, rtol=1e-6)
  np.testing.assert_allclose(metrics['loss'][1], 2.0)


@pytest.mark.parametrize('kind,ranking_loss', [('classification', 'listwise'),
                                               ('regression', 'listwise'),
                                               ('ranking', 'pointwise'),
                                               ('ranking', 'listwise')])
def test_head_learns_a_separable_toy_problem(kind, ranking_loss):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 1, 4)).astype(np.float32)
  y = (x[:, :, 0] > 0).astype(np.int32)
  batch = {'label': jnp.asarray(y), 'score': jnp.asarray(x[:, :, 0] * 2.0),
           'query_id': jnp.asarray(np.arange(16) // 4)[:, None]}
  config = heads.HeadConfig(kind=kind, ranking_loss=ranking_loss)
  head = heads.Head(config)
  params = head.init(jax.random.PRNGKey(0), jnp.asarray(x))
  mask = jnp.ones((16, 1), bool)

  def loss_fn(p):
    return heads.head_loss(config, head.apply(p, jnp.asarray(x)), batch, mask)[0]

  opt = optax.adam(0.1)
  state = opt.init(params)
  first = float(loss_fn(params))
  for _ in range(30):
    grads = jax.grad(loss_fn)(params)
    updates, state = opt.update(grads, state)
    params = optax.apply_updates(params, updates)
  assert float(loss_fn(params)) < 0.5 * first


def test_missing_target_feature_is_named():
  config = heads.HeadConfig(kind='regression')
  with pytest.raises(KeyError, match="'score'"):
    heads.head_loss(config, jnp.zeros((1, 1)), {'label': jnp.zeros((1, 1))}, jnp.ones((1, 1)))
