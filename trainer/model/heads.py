"""Task heads on pooled encoder vectors: classification, regression, ranking.

A head maps pooled [B, S, D] (one vector per packed segment, see trainer.model.poolers) to outputs and
scores them against per-segment targets with a mask [B, S] (True where the segment exists):

  kind            outputs        target (per segment)         loss
  classification  logits [B,S,C] `label` int in [0, C)        softmax cross-entropy
  regression      score  [B,S]   `score` float                mean squared error
  ranking         score  [B,S]   `label` relevance >= 0,      'pointwise': sigmoid cross-entropy
                                 `query_id` int (candidates     on (label > 0);
                                 of one query share it)        'listwise': softmax over the
                                                               candidates of each query (ListNet:
                                                               target = label / sum of labels)

Losses are means over existing segments (listwise: over queries with a positive candidate) and come
with (sum, count) metrics so they aggregate across batches. Pure jnp: no TensorFlow.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

HEAD_KINDS = ('classification', 'regression', 'ranking')
RANKING_LOSSES = ('pointwise', 'listwise')


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """What head to put on the pooled vector.

  Attributes:
    kind: 'classification' | 'regression' | 'ranking'.
    num_classes: classes for 'classification' (>= 2); ignored otherwise.
    ranking_loss: 'pointwise' | 'listwise' for 'ranking'.
  """
  kind: str = 'classification'
  num_classes: int = 2
  ranking_loss: str = 'listwise'

  def __post_init__(self):
    if self.kind not in HEAD_KINDS:
      raise ValueError(f'HeadConfig.kind={self.kind!r} is not one of {HEAD_KINDS}')
    if self.kind == 'classification' and self.num_classes < 2:
      raise ValueError(f'HeadConfig.num_classes={self.num_classes} must be >= 2')
    if self.ranking_loss not in RANKING_LOSSES:
      raise ValueError(f'HeadConfig.ranking_loss={self.ranking_loss!r} is not one of '
                       f'{RANKING_LOSSES}')

  @property
  def output_dim(self) -> int:
    return self.num_classes if self.kind == 'classification' else 1


class Head(nn.Module):
  """Dense projection of pooled [B, S, D] -> logits [B, S, C] or scores [B, S] (float32)."""
  config: HeadConfig

  @nn.compact
  def __call__(self, pooled: jax.Array) -> jax.Array:
    kernel = self.param(
        'kernel', nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02),
                                               ('embed', None)),
        (pooled.shape[-1], self.config.output_dim), jnp.float32)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                      (self.config.output_dim,), jnp.float32)
    out = jnp.einsum('bsd,dc->bsc', pooled.astype(jnp.float32), kernel) + bias
    return out if self.config.kind == 'classification' else out[..., 0]


def _masked_mean(values: jax.Array, mask: jax.Array) -> Tuple[jax.Array, jax.Array, jax.Array]:
  weights = mask.astype(jnp.float32)
  total = jnp.sum(values * weights)
  count = jnp.sum(weights)
  return total / jnp.maximum(count, 1.0), total, count


def classification_loss(logits: jax.Array, labels: jax.Array,
                        mask: jax.Array) -> Tuple[jax.Array, Dict[str, Tuple[jax.Array, jax.Array]]]:
  """Softmax cross-entropy; logits [B, S, C], labels int [B, S], mask [B, S]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  safe_labels = jnp.where(mask, labels, 0).astype(jnp.int32)
  nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
  loss, total, count = _masked_mean(nll, mask)
  correct = (jnp.argmax(logits, axis=-1) == safe_labels).astype(jnp.float32)
  _, n_correct, _ = _masked_mean(correct, mask)
  return loss, {'loss': (total, count), 'accuracy': (n_correct, count)}


def regression_loss(scores: jax.Array, targets: jax.Array,
                    mask: jax.Array) -> Tuple[jax.Array, Dict[str, Tuple[jax.Array, jax.Array]]]:
  """Mean squared error; scores and targets float [B, S]."""
  sq = jnp.square(scores.astype(jnp.float32) - targets.astype(jnp.float32))
  loss, total, count = _masked_mean(sq, mask)
  return loss, {'loss': (total, count), 'mse': (total, count)}


def pointwise_ranking_loss(scores: jax.Array, labels: jax.Array, mask: jax.Array
                           ) -> Tuple[jax.Array, Dict[str, Tuple[jax.Array, jax.Array]]]:
  """Sigmoid cross-entropy of each candidate's score against relevance (label > 0)."""
  relevant = (labels > 0).astype(jnp.float32)
  x = scores.astype(jnp.float32)
  # log(1 + exp(-x)) for positives, log(1 + exp(x)) for negatives, stably.
  bce = jnp.maximum(x, 0.0) - x * relevant + jnp.log1p(jnp.exp(-jnp.abs(x)))
  loss, total, count = _masked_mean(bce, mask)
  return loss, {'loss': (total, count)}


def listwise_ranking_loss(scores: jax.Array, labels: jax.Array, query_ids: jax.Array,
                          mask: jax.Array
                          ) -> Tuple[jax.Array, Dict[str, Tuple[jax.Array, jax.Array]]]:
  """Softmax over each query's candidates (anywhere in the batch), ListNet targets.

  For query q with candidates i: loss_q = -sum_i t_i log softmax(s)_i, t_i = label_i / sum label.
  Queries without a positive candidate contribute nothing. The loss is the mean over queries.
  """
  s = scores.reshape(-1).astype(jnp.float32)
  rel = jnp.maximum(labels.reshape(-1).astype(jnp.float32), 0.0)
  valid = mask.reshape(-1)
  q = query_ids.reshape(-1)
  same = (q[:, None] == q[None, :]) & valid[:, None] & valid[None, :]
  masked = jnp.where(same, s[None, :], -jnp.inf)
  row_max = jnp.max(masked, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  lse = row_max[:, 0] + jnp.log(jnp.sum(jnp.where(same, jnp.exp(masked - row_max), 0.0), -1)
                                + (~valid).astype(jnp.float32))
  group_rel = jnp.sum(jnp.where(same, rel[None, :], 0.0), axis=-1)
  target = jnp.where(valid & (group_rel > 0), rel / jnp.where(group_rel > 0, group_rel, 1.0), 0.0)
  per_item = -target * (s - lse)
  # Each query counted once: the items of a query with a positive have targets summing to 1.
  n_queries = jnp.sum(target)
  total = jnp.sum(per_item)
  return total / jnp.maximum(n_queries, 1.0), {'loss': (total, n_queries)}


def head_loss(config: HeadConfig, outputs: jax.Array, batch: Dict[str, jax.Array],
              mask: jax.Array) -> Tuple[jax.Array, Dict[str, Tuple[jax.Array, jax.Array]]]:
  """Dispatches to the loss of `config.kind`; `batch` holds per-segment targets [B, S]."""
  def need(name):
    if name not in batch:
      raise KeyError(f'{config.kind} head needs feature {name!r}; batch has {sorted(batch)}')
    return batch[name]
  if config.kind == 'classification':
    return classification_loss(outputs, need('label'), mask)
  if config.kind == 'regression':
    return regression_loss(outputs, need('score'), mask)
  if config.ranking_loss == 'pointwise':
    return pointwise_ranking_loss(outputs, need('label'), mask)
  return listwise_ranking_loss(outputs, need('label'), need('query_id'), mask)


def predictions(config: HeadConfig, outputs: jax.Array) -> jax.Array:
  """Class ids [B, S] for classification; the scores [B, S] for regression and ranking."""
  if config.kind == 'classification':
    return jnp.argmax(outputs, axis=-1)
  return outputs
