"""Gemma Encoder (arXiv 2503.02656): a bidirectional encoder + pooler + task head (flax).

The encoder is built from a decoder-only checkpoint: `trainer.model.transformer.Encoder` uses the
same parameter names as `Decoder` (DESIGN.md "Parameter tree names"), so building it is a copy of
the decoder-only tree (`encoder_params_from_decoder`); only the attention mask changes
(bidirectional).

Parameter tree of `EncoderClassifier`:
  {'encoder': {'embedder', 'layer_0', ..., 'final_norm'},   # = a decoder-only tree
   'pooler': {'query': [D]} (attention pooler only),
   'head': {'kernel': [D, C], 'bias': [C]}}
"""
from typing import Any, Dict, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import meta

from trainer.model import dropout as dropout_lib
from trainer.model import heads as heads_lib
from trainer.model import poolers as poolers_lib
from trainer.model import scan_layout
from trainer.model import transformer

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
    pooled = dropout_lib.Dropout(rate=self.pooled_dropout_rate)(pooled, deterministic=deterministic)
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
