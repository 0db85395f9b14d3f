"""The trainer's feature converters in NumPy: the same features as seqio's, without TensorFlow.

`for_model(model, pack=...)` mirrors `trainer.training.feature_converters.for_model`: the converter
of the class a model wrapper names (`FEATURE_CONVERTER_NAME`: `EncDecFeatureConverter`,
`DecoderFeatureConverter`, `PrefixLMFeatureConverter`, `EncoderClassificationFeatureConverter`)
with its `feature_converter_kwargs(pack)`. A converter turns a *chunk* of consecutive task examples
into model rows: `converter(examples) -> [row, ...]`, each row a dict of 1-D arrays, or
`convert(examples) -> {name: [rows, length]}`; in two steps (what the Grain loader does),
`chunk = plan(examples)` then `finish(chunk.rows(a, b))` for rows [a, b).

Packing follows seqio's `trim_and_pack_dataset` (without custom ops) exactly, so the rows are
identical to seqio's, packed or not (tests compare them on the same examples): the example stream
is cut into chunks of `converter.chunk_size` = max(packed lengths) consecutive examples (seqio's
`padded_batch`), each packed greedily on its own (the rule: `trainer.training.numpy_packing`).
Not packed, `chunk_size` is 1 and each example is trimmed and zero-padded.

E.g. decoder-only, packed, lengths {targets: 8}, chunk [{'targets': [5, 6, 1]}, {'targets': [7, 1]}]:
  [{'decoder_target_tokens': [5, 6, 1, 7, 1, 0, 0, 0],
    'decoder_input_tokens':  [0, 5, 6, 0, 7, 0, 0, 0],
    'decoder_loss_weights':  [1, 1, 1, 1, 1, 0, 0, 0],
    'decoder_segment_ids':   [1, 1, 1, 2, 2, 0, 0, 0],
    'decoder_positions':     [0, 1, 2, 0, 1, 0, 0, 0]}]
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import numpy as np

from trainer.training.numpy_packing import Fill, pack, trim_and_pad  # noqa: F401  (re-exported)
from trainer.training import numpy_packing

Example = Mapping[str, np.ndarray]
Row = Dict[str, np.ndarray]
TARGET_DTYPES = {'label': 'int32', 'query_id': 'int32', 'score': 'float32'}


def autoregressive_inputs(targets: np.ndarray, segment_ids=None, bos_id: int = 0) -> np.ndarray:
  """seqio's `make_autoregressive_inputs` along the last axis: targets shifted right (BOS first,
  and per segment)."""
  inputs = np.empty_like(targets)
  inputs[..., 0] = bos_id
  inputs[..., 1:] = targets[..., :-1]
  if segment_ids is not None:
    first = np.empty(segment_ids.shape, bool)
    first[..., 0] = segment_ids[..., 0] != 0
    np.not_equal(segment_ids[..., 1:], segment_ids[..., :-1], out=first[..., 1:])
    inputs[first] = bos_id
  return inputs


class Converter:
  """Base: `chunk_size`, `task_features`, `convert(examples) -> rows stacked`, `__call__`."""
  name = ''

  def __init__(self, *, pack: bool, bos_id: int = 0):
    self.pack = pack
    self.bos_id = bos_id
    self.lengths: Dict[str, int] = {}

  def packed_lengths(self, task_feature_lengths: Mapping[str, int]) -> Dict[str, int]:
    return dict(task_feature_lengths)

  def configure(self, task_feature_lengths: Mapping[str, int]) -> 'Converter':
    self.task_feature_lengths = dict(task_feature_lengths)
    self.lengths = self.packed_lengths(task_feature_lengths)
    return self

  @property
  def chunk_size(self) -> int:
    return max(self.lengths.values()) if self.pack else 1

  positions_of = None  # The packed features whose positions / segment ids `finish` reads.

  def prepare(self, example: Example) -> Example:
    return example

  def finish(self, rows: Row) -> Row:
    """Packed or padded features (`[rows, length]`) -> the model's features."""
    raise NotImplementedError

  def plan(self, examples: Sequence[Example]):
    """A chunk of examples -> its rows, not yet written: a `numpy_packing.PackedChunk` (or
    `PaddedChunk`); `finish(chunk.rows(a, b))` gives the model features of rows [a, b)."""
    prepared = [self.prepare(ex) for ex in examples]
    if self.pack:
      return numpy_packing.plan_packing(prepared, self.lengths, self.positions_of)
    return numpy_packing.PaddedChunk(prepared, self.lengths)

  def convert(self, examples: Sequence[Example]) -> Row:
    """A chunk of examples -> the model features of its rows, stacked: `{name: [rows, length]}`."""
    return self.finish(self.plan(examples).rows())

  def __call__(self, examples: Sequence[Example]) -> List[Row]:
    """`convert`, one dict per row."""
    rows = self.convert(examples)
    return [{k: v[i] for k, v in rows.items()} for i in range(len(next(iter(rows.values()))))]


class EncDec(Converter):
  """seqio.EncDecFeatureConverter."""
  name = 'EncDecFeatureConverter'

  def finish(self, row):
    seg = row.get('targets_segment_ids') if self.pack else None
    targets = row['targets'].astype(np.int32, copy=False)
    out = {'encoder_input_tokens': row['inputs'].astype(np.int32, copy=False),
           'decoder_target_tokens': targets,
           'decoder_input_tokens': autoregressive_inputs(targets, seg, self.bos_id),
           'decoder_loss_weights': (targets != 0).astype(np.int32)}
    if self.pack:
      out.update(encoder_segment_ids=row['inputs_segment_ids'],
                 decoder_segment_ids=row['targets_segment_ids'],
                 encoder_positions=row['inputs_positions'],
                 decoder_positions=row['targets_positions'])
    return out


class LM(Converter):
  """seqio.LMFeatureConverter (DecoderFeatureConverter on a task with `targets` only)."""
  name = 'LMFeatureConverter'
  positions_of = ('targets',)

  def finish(self, row):
    seg = row.get('targets_segment_ids') if self.pack else None
    targets = row['targets'].astype(np.int32, copy=False)
    out = {'decoder_target_tokens': targets,
           'decoder_input_tokens': autoregressive_inputs(targets, seg, self.bos_id),
           'decoder_loss_weights': (targets != 0).astype(np.int32)}
    if self.pack:
      out.update(decoder_segment_ids=row['targets_segment_ids'],
                 decoder_positions=row['targets_positions'])
    return out


class PrefixLM(LM):
  """seqio.PrefixLMFeatureConverter: `inputs` + `targets` concatenated, bidirectional prefix."""
  name = 'PrefixLMFeatureConverter'

  def __init__(self, *, loss_on_targets_only: bool = True, **kwargs):
    super().__init__(**kwargs)
    self.loss_on_targets_only = loss_on_targets_only

  def packed_lengths(self, task_feature_lengths):
    total = sum(task_feature_lengths.values())
    return {'targets': total, 'inputs_width': total, 'inputs_width_add_pos': total}

  def prepare(self, example):
    inputs = np.asarray(example['inputs'])
    targets = np.asarray(example['targets'])
    if not len(targets):
      targets = np.zeros(1, np.int32)
    width = len(inputs)
    n = width + len(targets)
    # seqio swaps a 0 width for -1 around packing (packing drops zeros). The widths are one value
    # per token: `Fill`s, written straight into the packed rows.
    return {'targets': np.concatenate([inputs, targets]).astype(np.int32, copy=False),
            'inputs_width': Fill(width if width else -1, n),
            'inputs_width_add_pos': Fill(width + 1, n)}

  def finish(self, row):
    out = super().finish(row)
    inputs_width = np.where(row['inputs_width'] == -1, 0, row['inputs_width'])
    length = row['targets'].shape[-1]
    positions = row['targets_positions'] if self.pack else np.arange(length, dtype=np.int32)
    out['decoder_causal_attention'] = (positions < row['inputs_width_add_pos']).astype(np.int32)
    if self.loss_on_targets_only:
      in_inputs = positions < inputs_width
      out['decoder_loss_weights'] = np.logical_xor(
          in_inputs, out['decoder_loss_weights'].astype(bool)).astype(np.int32)
    return out


class EncoderClassification(Converter):
  """trainer.training.feature_converters.EncoderClassificationFeatureConverter.

  Each 32-bit target travels through packing as two non-zero 16-bit halves (as the seqio
  converter does), so packing decides exactly as there.
  """
  name = 'EncoderClassificationFeatureConverter'

  def __init__(self, *, target_features: Sequence[str] = ('label',), max_segments: int = 1,
               **kwargs):
    super().__init__(**kwargs)
    unknown = [t for t in target_features if t not in TARGET_DTYPES]
    if unknown:
      raise ValueError(f'target_features: {unknown[0]!r} is not one of {sorted(TARGET_DTYPES)}')
    if max_segments < 1 or (not self.pack and max_segments != 1):
      raise ValueError(f'max_segments={max_segments} must be >= 1 (and 1 when pack=False)')
    self.targets = tuple(target_features)
    self.max_segments = max_segments

  def packed_lengths(self, task_feature_lengths):
    return {'inputs': task_feature_lengths['inputs'],
            **{t: 2 * self.max_segments for t in self.targets}}

  def prepare(self, example):
    out = {'inputs': np.asarray(example['inputs']).astype(np.int32)}
    for t in self.targets:
      if t not in example:
        raise ValueError(f'EncoderClassificationFeatureConverter: the task has no feature '
                         f'{t!r} (features: {sorted(example)})')
      value = np.asarray(example[t]).reshape(())
      bits = value.astype(TARGET_DTYPES[t]).reshape(1).view(np.uint32)[0]
      out[t] = np.array([(bits >> 16) + 1, (bits & 0xFFFF) + 1], np.int64).astype(np.int32)
    return out

  positions_of = ('inputs',)

  def finish(self, row):
    tokens = row['inputs'].astype(np.int32, copy=False)
    if self.pack:
      seg, pos = row['inputs_segment_ids'], row['inputs_positions']
    else:
      seg = (tokens != 0).astype(np.int32)
      pos = np.arange(tokens.shape[-1], dtype=np.int32) * seg
    out = {'encoder_input_tokens': tokens, 'encoder_segment_ids': seg, 'encoder_positions': pos}
    for t in self.targets:
      pairs = row[t].astype(np.int64).reshape(row[t].shape[:-1] + (-1, 2))
      present = pairs[..., 0] > 0
      bits = (((pairs[..., 0] - 1) << 16) | (pairs[..., 1] - 1)).astype(np.uint32)
      value = bits.view(TARGET_DTYPES[t])
      out[t] = np.where(present, value, np.zeros_like(value))
    return out


_CLASSES = {'EncDecFeatureConverter': EncDec, 'PrefixLMFeatureConverter': PrefixLM,
            'LMFeatureConverter': LM,
            'EncoderClassificationFeatureConverter': EncoderClassification}


def make(name: str, *, pack: bool, task_feature_lengths: Mapping[str, int], **kwargs
         ) -> Converter:
  """The NumPy twin of seqio converter `name`; `DecoderFeatureConverter` dispatches as seqio's
  (PrefixLM when the task has `inputs`, LM otherwise)."""
  if name == 'DecoderFeatureConverter':
    if 'inputs' in task_feature_lengths:
      return PrefixLM(pack=pack, **kwargs).configure(task_feature_lengths)
    kwargs.pop('loss_on_targets_only', None)
    return LM(pack=pack, **kwargs).configure(task_feature_lengths)
  if name not in _CLASSES:
    raise ValueError(f'no NumPy feature converter for {name!r} (known: '
                     f'{sorted(_CLASSES) + ["DecoderFeatureConverter"]}); use '
                     "DATA_LOADER = 'seqio'")
  return _CLASSES[name](pack=pack, **kwargs).configure(task_feature_lengths)


def for_model(model, *, pack: bool, task_feature_lengths: Mapping[str, int]) -> Converter:
  """The converter of a model wrapper, as `feature_converters.for_model` but without TF."""
  return make(model.FEATURE_CONVERTER_NAME, pack=pack, task_feature_lengths=task_feature_lengths,
              **model.feature_converter_kwargs(pack))
