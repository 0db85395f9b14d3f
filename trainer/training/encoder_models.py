"""The Gemma Encoder wrapper (`EncoderClassifierModel`): a `trainer.model.encoder.EncoderClassifier`
behind the `trainer.training.models.ModelWrapper` interface.

Batches (from `trainer.training.feature_converters.EncoderClassificationFeatureConverter`):
  encoder_input_tokens [B, L], encoder_segment_ids [B, L], encoder_positions [B, L],
  and per-segment targets [B, S]: `label` (classification / ranking relevance), `score`
  (regression), `query_id` (ranking). S = `max_segments` (1 when not packing).
"""
import math
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import meta

from trainer.checkpoint import loader
from trainer.model import heads as heads_lib
from trainer.model import poolers as poolers_lib
from trainer.model import scan_layout
from trainer.model.encoder import EncoderClassifier, check_encoder_params_match, encoder_params_from_decoder
from trainer.training import flops as flops_lib

Batch = Mapping[str, jax.Array]


def load_pretrained_params(path: str) -> Dict[str, Any]:
  """Params to start an encoder from, as saved (any checkpoint path: `trainer.checkpoint.loader`).

  The tree may be decoder-only, encoder-decoder or a classifier; `EncoderClassifierModel` takes the
  encoder part with `encoder_params_from_decoder`.
  """
  return loader.load_checkpoint(path, flag='pretrained_checkpoint')[1]


def _segments(batch: Batch) -> jax.Array:
  if 'encoder_segment_ids' in batch:
    return batch['encoder_segment_ids']
  return (batch['encoder_input_tokens'] > 0).astype(jnp.int32)


class EncoderClassifierModel:
  """`ModelWrapper` of an `EncoderClassifier`.

  Args:
    config: the encoder's TransformerConfig (same shapes as the decoder-only model it comes from).
    head: a heads.HeadConfig.
    pooler: 'first' | 'last' | 'mean' | 'attention'.
    max_segments: packed examples per row (S); 1 without packing.
    pooled_dropout_rate: dropout on the pooled vector.
    pretrained_params: optional params to start from — a decoder-only tree, an encoder-decoder tree
      (its encoder is used) or a full classifier tree. The pooler and head stay freshly
      initialised unless the tree holds them.
    pretrained_checkpoint: or a path to read them from (`load_pretrained_params`: a trainer
      checkpoint, a params-only dir, or an HF Gemma 2 directory). Gin: `%INIT_CHECKPOINT`.

  The swap happens in `init`, so `train()` places the pretrained values with the params'
  shardings; they enter `init` as constants, which suits models up to a few billion params on
  one host (for bigger ones write a full classifier tree with `checkpoints.save_params` and give
  it to `train(init_checkpoint=...)`).
  """

  FEATURE_CONVERTER_NAME = 'EncoderClassificationFeatureConverter'

  def __init__(self, *, config, head: heads_lib.HeadConfig = heads_lib.HeadConfig(),
               pooler: str = 'mean', max_segments: int = 1, pooled_dropout_rate: float = 0.0,
               pretrained_params: Optional[Mapping[str, Any]] = None,
               pretrained_checkpoint: Optional[str] = None):
    poolers_lib.validate_pooler_kind(pooler)
    if max_segments < 1:
      raise ValueError(f'max_segments={max_segments} must be >= 1')
    if not 0.0 <= pooled_dropout_rate < 1.0:
      raise ValueError(f'pooled_dropout_rate={pooled_dropout_rate} must be in [0, 1)')
    self.config = config
    self.head = head
    self.pooler = pooler
    self.max_segments = max_segments
    self.module = EncoderClassifier(config=config, head=head, pooler=pooler,
                                    max_segments=max_segments,
                                    pooled_dropout_rate=pooled_dropout_rate)
    if pretrained_params is not None and pretrained_checkpoint:
      raise ValueError('give pretrained_params or pretrained_checkpoint, not both')
    if pretrained_checkpoint:
      pretrained_params = load_pretrained_params(pretrained_checkpoint)
    self.pretrained_params = pretrained_params
    if pretrained_params is not None:
      self._pretrained_full = meta.unbox(pretrained_params)
      # In this encoder's layout (scanned or unrolled), whatever the source's.
      self._pretrained_encoder = scan_layout.for_config(
          encoder_params_from_decoder(pretrained_params), config)
    else:
      self._pretrained_full = None
      self._pretrained_encoder = None

  @property
  def target_features(self) -> Tuple[str, ...]:
    if self.head.kind == 'classification':
      return ('label',)
    if self.head.kind == 'regression':
      return ('score',)
    return ('label', 'query_id')

  def feature_converter_kwargs(self, pack: bool) -> Dict[str, Any]:
    return dict(target_features=self.target_features,
                max_segments=self.max_segments if pack else 1)

  def _inputs(self, batch: Batch):
    return dict(positions=batch.get('encoder_positions'), segment_ids=_segments(batch))

  def init(self, rng: jax.Array, batch: Batch):
    """Fresh params (boxed with logical axes); the encoder (and pooler/head if given) replaced
    by `pretrained_params` when set."""
    params_rng, dropout_rng = jax.random.split(rng)
    params = self.module.init({'params': params_rng, 'dropout': dropout_rng},
                              batch['encoder_input_tokens'], **self._inputs(batch),
                              deterministic=True)['params']
    if self._pretrained_encoder is None:
      return params
    check_encoder_params_match(self._pretrained_encoder, params['encoder'])
    # Keep the Partitioned boxes (logical axis names), swap the values.
    params = dict(params)
    params['encoder'] = jax.tree_util.tree_map(
        lambda box, value: box.replace_boxed(jnp.asarray(value, box.value.dtype))
        if isinstance(box, nn.Partitioned) else jnp.asarray(value, box.dtype),
        params['encoder'], self._pretrained_encoder,
        is_leaf=lambda x: isinstance(x, nn.Partitioned))
    for part in ('pooler', 'head'):
      full = self._pretrained_full
      if part in params and isinstance(full, Mapping) and part in full and 'decoder' not in full:
        check_encoder_params_match(full[part], params[part])
        params[part] = jax.tree_util.tree_map(
            lambda box, value: box.replace_boxed(jnp.asarray(value, box.value.dtype))
            if isinstance(box, nn.Partitioned) else jnp.asarray(value, box.dtype),
            params[part], full[part], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    return params

  def _module_for(self, batch: Batch) -> EncoderClassifier:
    # S follows the batch's targets: unpacked batches (eval) carry one slot, packed ones
    # `max_segments`. The params do not depend on S.
    width = next((batch[t].shape[-1] for t in self.target_features if t in batch),
                 self.max_segments)
    return self.module if width == self.max_segments else self.module.clone(max_segments=width)

  def compute_outputs(self, params, batch: Batch, dropout_rng: Optional[jax.Array] = None):
    rngs = {} if dropout_rng is None else {'dropout': dropout_rng}
    return self._module_for(batch).apply({'params': params}, batch['encoder_input_tokens'],
                             **self._inputs(batch), deterministic=dropout_rng is None,
                             rngs=rngs)

  def loss_fn(self, params, batch: Batch, dropout_rng: Optional[jax.Array]):
    """-> (mean loss over segments, metrics); metrics['loss'] = (sum, number of segments)."""
    outputs, mask = self.compute_outputs(params, batch, dropout_rng)
    return heads_lib.head_loss(self.head, outputs, batch, mask)

  def eval_fn(self, params, batch: Batch) -> Dict[str, Any]:
    return self.loss_fn(params, batch, None)[1]

  def predict_fn(self, params, batch: Batch) -> Tuple[jax.Array, jax.Array]:
    """-> (predictions [B, S] (class ids or scores), mask [B, S])."""
    outputs, mask = self.compute_outputs(params, batch, None)
    return heads_lib.predictions(self.head, outputs), mask

  def num_params(self, params: Any) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(meta.unbox(params))))

  def tokens_per_example(self, batch_shapes: Mapping[str, Tuple[int, ...]]) -> int:
    return int(batch_shapes['encoder_input_tokens'][-1])

  def _head_flops(self) -> float:
    # Pooling (one multiply-add per hidden value) + the head matmul, per segment, forward.
    d = self.config.embed_dim
    return 2.0 * d * self.head.output_dim

  def training_flops_per_example(self, batch_shapes: Mapping[str, Tuple[int, ...]]) -> float:
    length = int(batch_shapes['encoder_input_tokens'][-1])
    return flops_lib.encoder_training_flops(self.config, length) + 3.0 * self._head_flops()

  def inference_flops_per_example(self, length: int) -> float:
    """Forward FLOPs of one example of `length` tokens (training convention / 3, + the head)."""
    return flops_lib.encoder_training_flops(self.config, length) / 3.0 + self._head_flops()
