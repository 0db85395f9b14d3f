"""The trainer's feature converters in NumPy: the same features as seqio's, without TensorFlow.

`for_model(model, pack=...)` mirrors `trainer.training.feature_converters.for_model`: the converter
of the class a model wrapper names (`FEATURE_CONVERTER_NAME`: `EncDecFeatureConverter`,
`DecoderFeatureConverter`, `PrefixLMFeatureConverter`, `EncoderClassificationFeatureConverter`)
with its `feature_converter_kwargs(pack)`. A converter turns a *chunk* of consecutive task examples
into model rows: `converter(examples) -> [row, ...]`, each row a dict of 1-D arrays.

Packing follows seqio's `trim_and_pack_dataset` (without custom ops) exactly, so the rows are
identical to seqio's, packed or not (tests compare them on the same examples):
  * the example stream is cut into chunks of `converter.chunk_size` = max(packed lengths)
    consecutive examples (seqio's `padded_batch`); packing never crosses a chunk;
  * within a chunk, greedily: each feature is trimmed to its length and then to its count of
    non-zero values; an example that does not fit every feature of the current row closes it;
    the last row of a chunk is closed at the chunk's end;
  * `<f>_positions` restart at 0 per example; `<f>_segment_ids` = cumsum(positions == 0) *
    (tokens != 0).
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

Example = Mapping[str, np.ndarray]
Row = Dict[str, np.ndarray]
TARGET_DTYPES = {'label': 'int32', 'query_id': 'int32', 'score': 'float32'}


def trim_and_pad(example: Example, lengths: Mapping[str, int]) -> Row:
  """seqio's `trim_and_pad_dataset` on one example (features in `lengths` only)."""
  out = {}
  for k, length in lengths.items():
    v = np.asarray(example[k])[:length]
    out[k] = np.pad(v, (0, length - len(v)))
  return out


def pack(examples: Sequence[Example], lengths: Mapping[str, int]) -> List[Row]:
  """seqio's `_pack_with_tf_ops` on one chunk: rows with `<f>`, `<f>_positions`, `<f>_segment_ids`."""
  keys = list(lengths)
  rows: List[Row] = []
  parts = {k: [] for k in keys}
  used = {k: 0 for k in keys}

  def close():
    row = {}
    for k in keys:
      length = lengths[k]
      tokens = np.zeros(length, np.int32)
      positions = np.zeros(length, np.int32)
      at = 0
      for seq in parts[k]:
        tokens[at:at + len(seq)] = seq
        positions[at:at + len(seq)] = np.arange(len(seq), dtype=np.int32)
        at += len(seq)
      row[k] = tokens
      row[f'{k}_positions'] = positions
      row[f'{k}_segment_ids'] = (np.cumsum(positions == 0, dtype=np.int32) *
                                 (tokens != 0)).astype(np.int32)
      parts[k] = []
      used[k] = 0
    rows.append(row)

  for ex in examples:
    one = {}
    for k in keys:
      v = np.asarray(ex[k])[:lengths[k]].astype(np.int32)
      one[k] = v[:np.count_nonzero(v)]
    if not all(used[k] + len(one[k]) <= lengths[k] for k in keys):
      close()
    for k in keys:
      parts[k].append(one[k])
      used[k] += len(one[k])
  close()
  return rows


def autoregressive_inputs(targets: np.ndarray, segment_ids=None, bos_id: int = 0) -> np.ndarray:
  """seqio's `make_autoregressive_inputs`: targets shifted right (BOS first, and per segment)."""
  inputs = np.concatenate([np.full(1, bos_id, targets.dtype), targets[:-1]])
  if segment_ids is not None:
    shifted = np.concatenate([np.zeros(1, segment_ids.dtype), segment_ids[:-1]])
    not_first = (segment_ids == shifted).astype(targets.dtype)
    inputs = inputs * not_first + (1 - not_first) * bos_id
  return inputs.astype(targets.dtype)


class Converter:
  """Base: `chunk_size`, `task_features`, `__call__(examples) -> rows`."""
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

  def prepare(self, example: Example) -> Example:
    return example

  def finish(self, row: Row) -> Row:
    raise NotImplementedError

  def __call__(self, examples: Sequence[Example]) -> List[Row]:
    prepared = [self.prepare(ex) for ex in examples]
    if self.pack:
      rows = pack(prepared, self.lengths)
    else:
      rows = [trim_and_pad(ex, self.lengths) for ex in prepared]
    return [self.finish(r) for r in rows]


class EncDec(Converter):
  """seqio.EncDecFeatureConverter."""
  name = 'EncDecFeatureConverter'

  def finish(self, row):
    seg = row.get('targets_segment_ids') if self.pack else None
    targets = row['targets'].astype(np.int32)
    out = {'encoder_input_tokens': row['inputs'].astype(np.int32),
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

  def finish(self, row):
    seg = row.get('targets_segment_ids') if self.pack else None
    targets = row['targets'].astype(np.int32)
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
    inputs = np.asarray(example['inputs']).astype(np.int32)
    targets = np.asarray(example['targets']).astype(np.int32)
    if not len(targets):
      targets = np.zeros(1, np.int32)
    width = len(inputs)
    n = width + len(targets)
    # seqio swaps a 0 width for -1 around packing (packing drops zeros).
    return {'targets': np.concatenate([inputs, targets]),
            'inputs_width': np.full(n, width if width else -1, np.int32),
            'inputs_width_add_pos': np.full(n, width + 1, np.int32)}

  def finish(self, row):
    out = super().finish(row)
    inputs_width = np.where(row['inputs_width'] == -1, 0, row['inputs_width'])
    length = len(row['targets'])
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

  def finish(self, row):
    tokens = row['inputs'].astype(np.int32)
    if self.pack:
      seg, pos = row['inputs_segment_ids'], row['inputs_positions']
    else:
      seg = (tokens != 0).astype(np.int32)
      pos = np.arange(len(tokens), dtype=np.int32) * seg
    out = {'encoder_input_tokens': tokens, 'encoder_segment_ids': seg, 'encoder_positions': pos}
    for t in self.targets:
      pairs = row[t].astype(np.int64).reshape(-1, 2)
      present = pairs[:, 0] > 0
      bits = (((pairs[:, 0] - 1) << 16) | (pairs[:, 1] - 1)).astype(np.uint32)
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
