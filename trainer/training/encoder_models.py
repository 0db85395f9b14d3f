"""Gemma Encoder (arXiv 2503.02656): a bidirectional encoder + pooler + task head, and its wrapper.

The encoder is built from a decoder-only checkpoint: `trainer.model.transformer.Encoder` uses the same
parameter names as `Decoder` (DESIGN.md "Parameter tree names"), so building it is a copy of the
decoder-only tree (`encoder_params_from_decoder`); only the attention mask changes (bidirectional).

Parameter tree of `EncoderClassifier`:
  {'encoder': {'embedder', 'layer_0', ..., 'final_norm'},   # = a decoder-only tree
   'pooler': {'query': [D]} (attention pooler only),
   'head': {'kernel': [D, C], 'bias': [C]}}

Batches (from `EncoderClassificationFeatureConverter`, see its docstring):
  encoder_input_tokens [B, L], encoder_segment_ids [B, L], encoder_positions [B, L],
  and per-segment targets [B, S]: `label` (classification / ranking relevance), `score`
  (regression), `query_id` (ranking). S = `max_segments` (1 when not packing).

No TensorFlow here: seqio (and TF) are imported only when `feature_converter()` is called.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import meta

from trainer.training import flops as flops_lib
from trainer.model import heads as heads_lib
from trainer.model import poolers as poolers_lib
from trainer.model import scan_layout
from trainer.model import transformer

Batch = Mapping[str, jax.Array]

# Keys a decoder-only (= encoder) param tree may hold at its top level.
_STACK_TOP_KEYS = ('embedder', 'final_norm')


class EncoderClassifier(nn.Module):
  """Encoder -> pooler -> dropout -> head.

  __call__(tokens [B, L], *, positions, segment_ids, deterministic)
    -> (outputs: logits [B, S, C] or scores [B, S], mask [B, S]).
  `segment_ids=None` means one segment per row: tokens != 0.
  """
  config: Any  # trainer.model.config.TransformerConfig
  head: heads_lib.HeadConfig
  pooler: str = 'mean'
  max_segments: int = 1
  pooled_dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, tokens, *, positions=None, segment_ids=None, deterministic=True):
    if not 0.0 <= self.pooled_dropout_rate < 1.0:
      raise ValueError(f'pooled_dropout_rate={self.pooled_dropout_rate} must be in [0, 1)')
    if segment_ids is None:
      segment_ids = (tokens != 0).astype(jnp.int32)
    hidden = transformer.Encoder(self.config, name='encoder')(
        tokens, positions=positions, segment_ids=segment_ids, deterministic=deterministic)
    pooled, mask = poolers_lib.Pooler(kind=self.pooler, max_segments=self.max_segments,
                                      name='pooler')(hidden, segment_ids)
    pooled = nn.Dropout(rate=self.pooled_dropout_rate)(pooled, deterministic=deterministic)
    return heads_lib.Head(self.head, name='head')(pooled), mask


def _is_stack_tree(params: Mapping[str, Any]) -> bool:
  return all(k in params for k in _STACK_TOP_KEYS) and scan_layout.is_stack(params)


def _without_cross_attention(layer: Mapping[str, Any]) -> Dict[str, Any]:
  return {k: v for k, v in layer.items() if 'cross' not in k}


def encoder_params_from_decoder(params: Mapping[str, Any]) -> Dict[str, Any]:
  """A decoder-only params tree -> the `Encoder` params tree (the same names: a copy).

  Also accepts an encoder-decoder tree (`{'encoder', 'decoder'}`) and returns its encoder, and a
  full `EncoderClassifier` tree (`{'encoder', 'pooler', 'head'}`) and returns its encoder. Cross-
  attention params never appear in the result. Either layout (`scan_layout`) is accepted and kept.
  Raises ValueError naming what is missing.
  """
  params = meta.unbox(params)
  if 'encoder' in params and isinstance(params['encoder'], Mapping):
    params = params['encoder']
  if not _is_stack_tree(params):
    raise ValueError('encoder_params_from_decoder: expected a decoder-only params tree with '
                     f"'embedder', 'layer_N' and 'final_norm'; got top-level keys "
                     f'{sorted(params)}')
  copied = jax.tree_util.tree_map(jnp.array, dict(params))
  for name, layer in copied.items():
    if name.startswith('layer_'):
      copied[name] = _without_cross_attention(layer)
    elif name == scan_layout.SCAN_KEY:  # scanned layout: layers/block_j
      copied[name] = {block: _without_cross_attention(v) for block, v in layer.items()}
  return copied


def load_pretrained_params(path: str) -> Dict[str, Any]:
  """Params to start an encoder from: an HF Gemma 2 directory or a trainer (orbax) checkpoint.

  `path` may be: an HF Gemma 2 checkpoint directory (config.json + *.safetensors, read by
  `trainer.checkpoint.hf_gemma2.load_decoder`); a trainer run's MODEL_DIR / its checkpoints dir / one step
  dir; or a params-only dir written by `checkpoints.save_params` (e.g. `trainer.adapt`). The tree
  is returned as saved (decoder-only, encoder-decoder or classifier); `EncoderClassifierModel`
  takes the encoder part with `encoder_params_from_decoder`.
  """
  import os  # pylint: disable=g-import-not-at-top
  if not isinstance(path, str) or not os.path.isdir(path):
    raise ValueError(f'pretrained checkpoint path {path!r} is not a directory')
  if os.path.isfile(os.path.join(path, 'config.json')):
    from trainer.checkpoint import hf_gemma2  # pylint: disable=g-import-not-at-top
    _, params = hf_gemma2.load_decoder(path)
    return params
  from trainer.checkpoint import checkpoints  # pylint: disable=g-import-not-at-top
  params_dir = checkpoints._params_dir(path)  # pylint: disable=protected-access
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  try:
    metadata = ocp.StandardCheckpointer().metadata(params_dir)
    tree = getattr(metadata, 'item_metadata', metadata)
    tree = getattr(tree, 'tree', tree)
    abstract = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype,
                                       sharding=jax.sharding.SingleDeviceSharding(
                                           jax.local_devices()[0])), tree)
    return ocp.StandardCheckpointer().restore(params_dir, abstract)
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise ValueError(f'cannot read params from {params_dir!r}: {e}') from e


def check_encoder_params_match(encoder_params: Mapping[str, Any],
                               expected: Mapping[str, Any]) -> None:
  """Raises ValueError naming the first path whose presence or shape differs."""
  got = {jax.tree_util.keystr(p): v.shape
         for p, v in jax.tree_util.tree_leaves_with_path(meta.unbox(encoder_params))}
  want = {jax.tree_util.keystr(p): v.shape
          for p, v in jax.tree_util.tree_leaves_with_path(meta.unbox(expected))}
  for path in sorted(set(got) | set(want)):
    if got.get(path) != want.get(path):
      raise ValueError(f'pretrained encoder param {path}: shape {got.get(path)} does not match '
                       f'the model config ({want.get(path)}); check the gin model file')


def _segments(batch: Batch) -> jax.Array:
  if 'encoder_segment_ids' in batch:
    return batch['encoder_segment_ids']
  return (batch['encoder_input_tokens'] > 0).astype(jnp.int32)


class EncoderClassifierModel:
  """Wrapper (trainer/models.py interface) for an `EncoderClassifier`.

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

  def feature_converter(self, pack: bool = False):
    return make_feature_converter(target_features=self.target_features,
                                  max_segments=self.max_segments if pack else 1, pack=pack)

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


# ---------------------------------------------------------------------------------------------
# Feature converter (seqio, hence TensorFlow: built lazily).

_TARGET_DTYPES = {'label': 'int32', 'query_id': 'int32', 'score': 'float32'}


@functools.lru_cache(maxsize=None)
def _converter_class():
  import seqio  # pylint: disable=g-import-not-at-top  (lazy: seqio imports TensorFlow)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  class EncoderClassificationFeatureConverter(seqio.FeatureConverter):
    """Task features `inputs` + scalar targets -> encoder classification features.

    Task example (targets are scalars; `label` int, `score` float, `query_id` int):
      {'inputs': [7, 8, 1], 'label': 1}
    Not packed (`pack=False`, S = 1), task_feature_lengths={'inputs': 5}:
      {'encoder_input_tokens': [7, 8, 1, 0, 0], 'encoder_segment_ids': [1, 1, 1, 0, 0],
       'encoder_positions': [0, 1, 2, 0, 0], 'label': [1]}
    Packed (`pack=True`, S = max_segments = 3), two examples {'inputs': [7, 8, 1], 'label': 1},
    {'inputs': [4, 1], 'label': 0} -> one row:
      {'encoder_input_tokens': [7, 8, 1, 4, 1], 'encoder_segment_ids': [1, 1, 1, 2, 2],
       'encoder_positions': [0, 1, 2, 0, 1], 'label': [1, 0, 0]}
    Slot s of a target holds the target of segment s + 1; slots of absent segments are 0 (the
    model masks them with the segment ids). A row holds at most S examples.

    Unlike seqio's converters, segment ids and positions are emitted when not packing too, so
    the batch layout is the same either way. Packing uses seqio's `trim_and_pack_dataset` with
    each target carried as a short int32 sequence packed to length 2 * S: seqio packs int32 only
    and takes a sequence's length to be its count of non-zero values, so a label 0 (or a score
    0.0) would vanish. Each 32-bit target (floats bit-cast) travels as two non-zero halves
    [(bits >> 16) + 1, (bits & 0xFFFF) + 1] and is decoded after packing.
    """

    TASK_FEATURES = {'inputs': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)}
    PACKING_FEATURE_DTYPES = {}

    def __init__(self, *, target_features: Sequence[str] = ('label',), max_segments: int = 1,
                 pack: bool = False, **kwargs):
      unknown = [t for t in target_features if t not in _TARGET_DTYPES]
      if unknown:
        raise ValueError(f'target_features: {unknown[0]!r} is not one of {sorted(_TARGET_DTYPES)}')
      if max_segments < 1 or (not pack and max_segments != 1):
        raise ValueError(f'max_segments={max_segments} must be >= 1 (and 1 when pack=False)')
      self._targets = tuple(target_features)
      self._max_segments = max_segments
      spec = seqio.FeatureConverter.FeatureSpec
      self.MODEL_FEATURES = {
          'encoder_input_tokens': spec(dtype=tf.int32),
          'encoder_segment_ids': spec(dtype=tf.int32),
          'encoder_positions': spec(dtype=tf.int32),
          **{t: spec(dtype=getattr(tf, _TARGET_DTYPES[t])) for t in self._targets}}
      super().__init__(pack=pack, **kwargs)

    def _targets_as_vectors(self, ex):
      out = {'inputs': ex['inputs']}
      for t in self._targets:
        if t not in ex:
          raise ValueError(f'EncoderClassificationFeatureConverter: the task has no feature '
                           f'{t!r} (features: {sorted(ex)})')
        value = tf.reshape(ex[t], [])
        if _TARGET_DTYPES[t] == 'float32':
          bits = tf.bitcast(tf.cast(value, tf.float32), tf.uint32)
        else:
          bits = tf.bitcast(tf.cast(value, tf.int32), tf.uint32)
        halves = tf.stack([tf.bitwise.right_shift(bits, 16), tf.bitwise.bitwise_and(bits, 0xFFFF)])
        out[t] = tf.cast(halves, tf.int32) + 1
      return out

    @staticmethod
    def _decode_target(halves, dtype_name):
      pairs = tf.reshape(halves, [-1, 2])
      present = pairs[:, 0] > 0
      bits = tf.bitwise.bitwise_or(
          tf.bitwise.left_shift(tf.cast(pairs[:, 0] - 1, tf.uint32), 16),
          tf.cast(pairs[:, 1] - 1, tf.uint32))
      value = tf.bitcast(bits, getattr(tf, dtype_name))
      return tf.where(present, value, tf.zeros_like(value))

    def _convert_features(self, ds, task_feature_lengths):
      length = task_feature_lengths['inputs']
      ds = ds.map(self._targets_as_vectors, num_parallel_calls=tf.data.AUTOTUNE)
      lengths = {'inputs': length, **{t: 2 * self._max_segments for t in self._targets}}
      ds = self._pack_or_pad(ds, lengths)

      def convert(ex):
        tokens = ex['inputs']
        if self.pack:
          seg, pos = ex['inputs_segment_ids'], ex['inputs_positions']
        else:
          seg = tf.cast(tokens != 0, tf.int32)
          pos = tf.range(length, dtype=tf.int32) * seg
        out = {'encoder_input_tokens': tokens, 'encoder_segment_ids': seg,
               'encoder_positions': pos}
        for t in self._targets:
          out[t] = self._decode_target(ex[t], _TARGET_DTYPES[t])
        return out

      return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths):
      length = task_feature_lengths['inputs']
      return {'encoder_input_tokens': length, 'encoder_segment_ids': length,
              'encoder_positions': length, **{t: self._max_segments for t in self._targets}}

  return EncoderClassificationFeatureConverter


def make_feature_converter(*, target_features: Sequence[str] = ('label',), max_segments: int = 1,
                           pack: bool = False):
  """An `EncoderClassificationFeatureConverter` (imports seqio/TensorFlow on first use)."""
  return _converter_class()(target_features=tuple(target_features), max_segments=max_segments,
                            pack=pack)
