"""Feature converters of the trainer's models (seqio, hence TensorFlow): the data side of training.

`for_model(model, pack=...)` builds the converter a model wrapper names with
`FEATURE_CONVERTER_NAME` (a seqio converter, or `EncoderClassificationFeatureConverter` below) and
`feature_converter_kwargs(pack)`.
"""
from typing import Sequence

import seqio
import tensorflow as tf

TARGET_DTYPES = {'label': 'int32', 'query_id': 'int32', 'score': 'float32'}


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
    unknown = [t for t in target_features if t not in TARGET_DTYPES]
    if unknown:
      raise ValueError(f'target_features: {unknown[0]!r} is not one of {sorted(TARGET_DTYPES)}')
    if max_segments < 1 or (not pack and max_segments != 1):
      raise ValueError(f'max_segments={max_segments} must be >= 1 (and 1 when pack=False)')
    self._targets = tuple(target_features)
    self._max_segments = max_segments
    spec = seqio.FeatureConverter.FeatureSpec
    self.MODEL_FEATURES = {
        'encoder_input_tokens': spec(dtype=tf.int32),
        'encoder_segment_ids': spec(dtype=tf.int32),
        'encoder_positions': spec(dtype=tf.int32),
        **{t: spec(dtype=getattr(tf, TARGET_DTYPES[t])) for t in self._targets}}
    super().__init__(pack=pack, **kwargs)

  def _targets_as_vectors(self, ex):
    out = {'inputs': ex['inputs']}
    for t in self._targets:
      if t not in ex:
        raise ValueError(f'EncoderClassificationFeatureConverter: the task has no feature '
                         f'{t!r} (features: {sorted(ex)})')
      value = tf.reshape(ex[t], [])
      if TARGET_DTYPES[t] == 'float32':
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
        out[t] = self._decode_target(ex[t], TARGET_DTYPES[t])
      return out

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    length = task_feature_lengths['inputs']
    return {'encoder_input_tokens': length, 'encoder_segment_ids': length,
            'encoder_positions': length, **{t: self._max_segments for t in self._targets}}


def for_model(model, *, pack: bool) -> seqio.FeatureConverter:
  """The feature converter of a model wrapper (`trainer.training.models.ModelWrapper`)."""
  name = model.FEATURE_CONVERTER_NAME
  cls = (EncoderClassificationFeatureConverter
         if name == EncoderClassificationFeatureConverter.__name__ else getattr(seqio, name))
  return cls(pack=pack, **model.feature_converter_kwargs(pack))
