"""Model wrappers (T5X style): what the trainer talks to. No TensorFlow and no gin in here.

A wrapper knows its flax module, the seqio feature converter its batches come from (by name:
`trainer.training.feature_converters.for_model` builds it) and its loss. `ModelWrapper` is the
interface the training loop, evaluation, the benchmark and distillation use; the wrappers here,
`trainer.training.encoder_models.EncoderClassifierModel` and
`trainer.adaptation.distillation.DistillationModel` implement it.

Batch dicts are seqio feature-converter outputs (DESIGN.md "Feature dicts"). When a batch is not
packed (no `*_segment_ids`), padding is recovered as T5X does: segment id 1 where the token is
non-zero (encoder: input tokens; decoder: target tokens), 0 elsewhere.
"""
import math
from typing import Any, Dict, Mapping, Optional, Protocol, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import meta

from trainer.training import flops as flops_lib
from trainer.training import losses

Batch = Mapping[str, jax.Array]
BatchShapes = Mapping[str, Tuple[int, ...]]


class ModelWrapper(Protocol):
  """The interface of a model wrapper.

  * `FEATURE_CONVERTER_NAME`: the seqio feature converter class name (or
    'EncoderClassificationFeatureConverter'); `feature_converter_kwargs(pack)` its arguments
    besides `pack`.
  * `init(rng, batch) -> params`: the parameter tree *boxed* with flax `nn.Partitioned` metadata
    (logical axis names); `flax.core.meta.unbox(params)` gives plain arrays and
    `flax.core.meta.get_partition_spec(params)` the logical PartitionSpecs that
    `partitioning.Partitioner.params_sharding` maps to the mesh. Only the batch's shapes matter.
  * `loss_fn(params, batch, dropout_rng) -> (scalar_loss, metrics)`: `params` unboxed,
    `dropout_rng=None` means deterministic. `metrics` maps names to `(sum, count)` pairs (averaged
    as sum/count over steps, hosts and micro-batches) or scalars; it always has `'loss'`, whose
    count is the number of target tokens: the trainer weights gradient-accumulation micro-batches
    by it.
  * `eval_fn(params, batch) -> metrics` (deterministic).
  * `training_flops_per_example(batch_shapes)` and `tokens_per_example(batch_shapes)`, with
    `batch_shapes` a `{feature: shape}` dict (`trainer.training.flops` gives the convention).
  * `num_params(params) -> int`.
  """
  FEATURE_CONVERTER_NAME: str
  config: Any
  module: nn.Module

  def feature_converter_kwargs(self, pack: bool) -> Dict[str, Any]: ...

  def init(self, rng: jax.Array, batch: Batch) -> Any: ...

  def loss_fn(self, params, batch: Batch,
              dropout_rng: Optional[jax.Array]) -> Tuple[jax.Array, Dict[str, Any]]: ...

  def eval_fn(self, params, batch: Batch) -> Dict[str, Any]: ...

  def num_params(self, params: Any) -> int: ...

  def tokens_per_example(self, batch_shapes: BatchShapes) -> int: ...

  def training_flops_per_example(self, batch_shapes: BatchShapes) -> float: ...


def _segments_or_nonpad(batch: Batch, segment_key: str, token_key: str) -> jax.Array:
  if segment_key in batch:
    return batch[segment_key]
  return (batch[token_key] > 0).astype(jnp.int32)


class BaseModel:
  """Shared parts: param counting, the loss from logits, eval as the deterministic loss."""
  FEATURE_CONVERTER_NAME = ''

  def __init__(self, *, module: nn.Module, z_loss: float = 0.0,
               loss_chunk_size: Optional[int] = None):
    """`loss_chunk_size`: compute logits and cross-entropy this many tokens at a time
    (`trainer.training.chunked_xent`), so the [B, L, V] fp32 logits are never whole; None: at once."""
    if z_loss < 0:
      raise ValueError(f'z_loss must be >= 0, got {z_loss}')
    if loss_chunk_size is not None and (isinstance(loss_chunk_size, bool) or
                                        not isinstance(loss_chunk_size, int) or
                                        loss_chunk_size <= 0):
      raise ValueError(f'loss_chunk_size must be a positive int or None, got {loss_chunk_size!r}')
    self.module = module
    self.z_loss = z_loss
    self.loss_chunk_size = loss_chunk_size

  def feature_converter_kwargs(self, pack: bool) -> Dict[str, Any]:
    del pack
    return {}

  def num_params(self, params: Any) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(meta.unbox(params))))

  def compute_logits(self, params, batch: Batch, dropout_rng: Optional[jax.Array] = None, *,
                     return_hidden: bool = False):
    raise NotImplementedError

  def _output_embedding_and_config(self, params):
    """The tied output embedding [V, D] and the config that owns it (the decoder's)."""
    if 'decoder' in params:
      if 'embedder' not in params['decoder']:  # T5Gemma 2: tied to the encoder's embedding
        return params['encoder']['embedder']['embedding'], self.config.decoder
      return params['decoder']['embedder']['embedding'], self.config.decoder
    return params['embedder']['embedding'], self.config

  def loss_fn(self, params, batch: Batch,
              dropout_rng: Optional[jax.Array]) -> Tuple[jax.Array, Dict[str, Any]]:
    if self.loss_chunk_size is None:
      logits = self.compute_logits(params, batch, dropout_rng)
      metrics = losses.cross_entropy_with_z_loss(
          logits, batch['decoder_target_tokens'], batch['decoder_loss_weights'],
          z_loss=self.z_loss)
    else:
      from trainer.training import chunked_xent  # pylint: disable=g-import-not-at-top
      hidden = self.compute_logits(params, batch, dropout_rng, return_hidden=True)
      embedding, cfg = self._output_embedding_and_config(params)
      metrics = chunked_xent.chunked_cross_entropy_with_z_loss(
          hidden, embedding, batch['decoder_target_tokens'], batch['decoder_loss_weights'],
          z_loss=self.z_loss, final_logit_soft_cap=cfg.final_logit_soft_cap,
          dtype=cfg.compute_dtype, chunk_size=self.loss_chunk_size)
    return losses.mean_loss(metrics), metrics

  def eval_fn(self, params, batch: Batch) -> Dict[str, Any]:
    return self.loss_fn(params, batch, None)[1]

  @staticmethod
  def _rngs(dropout_rng):
    return {} if dropout_rng is None else {'dropout': dropout_rng}


class DecoderOnlyModel(BaseModel):
  """Gemma-2-style decoder-only LM (causal LM, or PrefixLM with `decoder_causal_attention`)."""

  def __init__(self, *, config, prefix_lm: bool = False, z_loss: float = 0.0,
               bidirectional_prefix: bool = True, loss_chunk_size: Optional[int] = None,
               module: Optional[nn.Module] = None):
    """`prefix_lm`: read PrefixLM features (inputs + targets, loss on targets only).

    `bidirectional_prefix=False` ignores their `decoder_causal_attention`, so the prefix is read
    causally: how a causal-LM (e.g. a distillation teacher) is scored on the same PrefixLM targets.
    """
    if module is None:
      from trainer.model import transformer  # pylint: disable=g-import-not-at-top
      module = transformer.Decoder(config)
    super().__init__(module=module, z_loss=z_loss, loss_chunk_size=loss_chunk_size)
    self.config = config
    self.prefix_lm = prefix_lm
    self.bidirectional_prefix = bidirectional_prefix
    self.FEATURE_CONVERTER_NAME = ('PrefixLMFeatureConverter' if prefix_lm
                                   else 'DecoderFeatureConverter')

  def _inputs(self, batch: Batch):
    return dict(
        positions=batch.get('decoder_positions'),
        segment_ids=_segments_or_nonpad(batch, 'decoder_segment_ids', 'decoder_target_tokens'),
        causal_attention=(batch.get('decoder_causal_attention') if self.bidirectional_prefix
                          else None))

  def init(self, rng: jax.Array, batch: Batch):
    params_rng, dropout_rng = jax.random.split(rng)
    variables = self.module.init({'params': params_rng, 'dropout': dropout_rng},
                                 batch['decoder_input_tokens'], **self._inputs(batch),
                                 deterministic=True)
    return variables['params']

  def compute_logits(self, params, batch: Batch, dropout_rng: Optional[jax.Array] = None, *,
                     return_hidden: bool = False):
    return self.module.apply({'params': params}, batch['decoder_input_tokens'],
                             **self._inputs(batch), deterministic=dropout_rng is None,
                             return_hidden=return_hidden, rngs=self._rngs(dropout_rng))

  def tokens_per_example(self, batch_shapes: Mapping[str, Tuple[int, ...]]) -> int:
    return int(batch_shapes['decoder_input_tokens'][-1])

  def training_flops_per_example(self, batch_shapes: Mapping[str, Tuple[int, ...]]) -> float:
    return flops_lib.decoder_only_training_flops(
        self.config, int(batch_shapes['decoder_input_tokens'][-1]))


class EncoderDecoderModel(BaseModel):
  """T5Gemma-style encoder-decoder (bidirectional encoder, causal decoder + cross-attention)."""
  FEATURE_CONVERTER_NAME = 'EncDecFeatureConverter'

  def __init__(self, *, config, z_loss: float = 0.0, loss_chunk_size: Optional[int] = None,
               module: Optional[nn.Module] = None):
    if module is None:
      if getattr(config, 'merged_attention', False):  # T5Gemma 2
        from trainer.model import tied_encoder_decoder  # pylint: disable=g-import-not-at-top
        module = tied_encoder_decoder.TiedEncoderDecoder(config)
      else:
        from trainer.model import transformer  # pylint: disable=g-import-not-at-top
        module = transformer.EncoderDecoder(config)
    super().__init__(module=module, z_loss=z_loss, loss_chunk_size=loss_chunk_size)
    self.config = config

  def _inputs(self, batch: Batch):
    return dict(
        encoder_positions=batch.get('encoder_positions'),
        encoder_segment_ids=_segments_or_nonpad(batch, 'encoder_segment_ids',
                                                'encoder_input_tokens'),
        decoder_positions=batch.get('decoder_positions'),
        decoder_segment_ids=_segments_or_nonpad(batch, 'decoder_segment_ids',
                                                'decoder_target_tokens'))

  def init(self, rng: jax.Array, batch: Batch):
    params_rng, dropout_rng = jax.random.split(rng)
    variables = self.module.init({'params': params_rng, 'dropout': dropout_rng},
                                 batch['encoder_input_tokens'], batch['decoder_input_tokens'],
                                 **self._inputs(batch), deterministic=True)
    return variables['params']

  def compute_logits(self, params, batch: Batch, dropout_rng: Optional[jax.Array] = None, *,
                     return_hidden: bool = False):
    return self.module.apply({'params': params}, batch['encoder_input_tokens'],
                             batch['decoder_input_tokens'], **self._inputs(batch),
                             deterministic=dropout_rng is None, return_hidden=return_hidden,
                             rngs=self._rngs(dropout_rng))

  def tokens_per_example(self, batch_shapes: Mapping[str, Tuple[int, ...]]) -> int:
    return int(batch_shapes['encoder_input_tokens'][-1] + batch_shapes['decoder_input_tokens'][-1])

  def training_flops_per_example(self, batch_shapes: Mapping[str, Tuple[int, ...]]) -> float:
    return flops_lib.encoder_decoder_training_flops(
        self.config, int(batch_shapes['encoder_input_tokens'][-1]),
        int(batch_shapes['decoder_input_tokens'][-1]))
