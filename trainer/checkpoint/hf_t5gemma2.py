"""Hugging Face T5Gemma 2 checkpoints <-> `EncoderDecoderConfig(merged_attention=True)` + params.

  config, params = load_encoder_decoder('/ckpt/t5gemma-2-270m-270m')
  logits = TiedEncoderDecoder(config).apply({'params': params}, enc_tokens, dec_tokens)
  export_encoder_decoder(params, config, '/out/t5gemma2')  # T5Gemma2ForConditionalGeneration loads it

Text part only. A vision tower (`model.encoder.vision_tower.*`, `model.encoder.multi_modal_projector.*`)
in the checkpoint is skipped with a logged note. The export writes a small SigLIP vision config
(`T5Gemma2EncoderConfig` requires one) and no vision tensors, so `from_pretrained` initialises an
untrained vision tower: the exported model is for text inputs.

Tensor mapping (layer maps as `trainer.checkpoint.hf_gemma3`; torch Linear weights are [out, in]):
  model.encoder.embed_tokens.weight       [V, D]  -> encoder/embedder/embedding
  model.encoder.embed_tokens.eoi_embedding [D]    -> encoder/embedder/eoi_embedding
  model.encoder.layers.{i}.self_attn.*            -> encoder/layer_{i}/self_attn/*
  model.encoder.layers.{i}.pre_self_attn_layernorm  -> .../pre_attention_norm
  model.encoder.layers.{i}.post_self_attn_layernorm -> .../post_attention_norm
  model.encoder.layers.{i}.{pre,post}_feedforward_layernorm, mlp.* -> as Gemma 3
  model.encoder.norm.weight                       -> encoder/final_norm/scale
  (HF's in-memory names 'model.encoder.text_model.*' are accepted too)
  model.decoder.layers.{i}.* (merged attention 'self_attn') -> decoder/layer_{i}/*
  model.decoder.norm.weight                              -> decoder/final_norm/scale
  model.decoder.embed_tokens.*, lm_head.out_proj.weight  -> tied to the encoder's (checked equal)

Config: the encoder's `sliding_window` is used with `bidirectional_window='split'` (HF's
`sliding_window_mask_function(is_causal=False)`: -(w // 2) <= i - j < (w + 1) // 2);
`eoi_token_index` becomes `eoi_token_id` on both sides when it is inside the vocabulary.
"""
import json
import logging
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import numpy as np

from trainer.checkpoint import hf_gemma2
from trainer.checkpoint import hf_gemma3
from trainer.checkpoint import safetensors_files
from trainer.checkpoint.hf_gemma2 import HFCheckpointError, HFConfigError
from trainer.model import scan_layout
from trainer.model.config import EncoderDecoderConfig

_NORMS = (('pre_self_attn_layernorm', 'pre_attention_norm'),
          ('post_self_attn_layernorm', 'post_attention_norm'),
          ('pre_feedforward_layernorm', 'pre_feedforward_norm'),
          ('post_feedforward_layernorm', 'post_feedforward_norm'))
# On disk (what `save_pretrained` writes and the released checkpoints hold) the encoder's text
# tensors sit under 'model.encoder.'; in memory HF renames them to 'model.encoder.text_model.'.
# Both are read; the on-disk names are written.
_PREFIX = {'encoder': 'model.encoder.', 'decoder': 'model.decoder.'}
_IN_MEMORY_ENCODER_PREFIX = 'model.encoder.text_model.'
_VISION_PREFIXES = ('model.encoder.vision_tower.', 'model.encoder.multi_modal_projector.')
# What the export writes where HF requires a vision config (text-only use; see the docstring).
DEFAULT_VISION_CONFIG = {'model_type': 'siglip_vision_model', 'hidden_size': 16,
                         'intermediate_size': 32, 'num_hidden_layers': 1,
                         'num_attention_heads': 2, 'image_size': 28, 'patch_size': 14}
_DEFAULT_MM_TOKENS = 4  # (image_size / patch_size) ** 2 of DEFAULT_VISION_CONFIG


def config_from_hf(hf: Mapping[str, Any], **overrides) -> EncoderDecoderConfig:
  """T5Gemma2ForConditionalGeneration config.json dict -> EncoderDecoderConfig (merged attention).
  `overrides` set non-maths fields of both sides (dtype, param_dtype, remat, scan_layers, ...)."""
  if hf.get('model_type') not in (None, 't5gemma2'):
    raise HFConfigError(f"config.json: model_type={hf.get('model_type')!r}, expected 't5gemma2'")
  encoder = hf.get('encoder') or {}
  enc_text, dec = encoder.get('text_config'), hf.get('decoder')
  if not isinstance(enc_text, Mapping) or not isinstance(dec, Mapping):
    raise HFConfigError('config.json: expected encoder.text_config and decoder objects')
  if hf.get('tie_word_embeddings') is False:
    raise HFConfigError('config.json: tie_word_embeddings=false is not supported (T5Gemma 2 ties '
                        'encoder input, decoder input and output embeddings)')
  eoi = hf.get('eoi_token_index', encoder.get('eoi_token_index'))
  vocab = dec.get('vocab_size')
  eoi_token_id = int(eoi) if eoi is not None and vocab is not None and eoi < vocab else None
  enc_cfg = hf_gemma3.text_config_from_hf(
      enc_text, where='config.json:encoder.text_config', bidirectional_window='split',
      eoi_token_id=eoi_token_id, **overrides)
  dec_cfg = hf_gemma3.text_config_from_hf(dec, where='config.json:decoder',
                                          eoi_token_id=eoi_token_id, **overrides)
  return EncoderDecoderConfig(encoder=enc_cfg, decoder=dec_cfg, merged_attention=True)


def config_to_hf(config: EncoderDecoderConfig, *, torch_dtype: str = 'float32') -> Dict[str, Any]:
  """EncoderDecoderConfig (merged attention) -> T5Gemma2 config.json dict."""
  if not config.merged_attention:
    raise HFConfigError('EncoderDecoderConfig.merged_attention=False is T5Gemma (export with '
                        'trainer.checkpoint.hf_t5gemma), not T5Gemma 2')
  if config.causal_encoder:
    raise HFConfigError('EncoderDecoderConfig.causal_encoder=True: HF T5Gemma 2\'s encoder is '
                        'always bidirectional (a causal encoder is an ablation, not exported)')
  if config.encoder.bidirectional_window != 'split':
    raise HFConfigError(f'encoder.bidirectional_window={config.encoder.bidirectional_window!r}: '
                        "HF T5Gemma 2's encoder window is 'split'")
  eoi = (config.decoder.eoi_token_id if config.decoder.eoi_token_id is not None
         else config.decoder.vocab_size)  # outside the vocabulary: never matches a token
  enc_text = dict(hf_gemma3.text_config_to_hf(config.encoder), model_type='t5gemma2_text',
                  dropout_rate=0.0)
  dec = dict(hf_gemma3.text_config_to_hf(config.decoder), model_type='t5gemma2_decoder',
             dropout_rate=0.0)
  return {
      'architectures': ['T5Gemma2ForConditionalGeneration'],
      'model_type': 't5gemma2',
      'encoder': {'model_type': 't5gemma2_encoder', 'text_config': enc_text,
                  'vision_config': dict(DEFAULT_VISION_CONFIG),
                  'mm_tokens_per_image': _DEFAULT_MM_TOKENS, 'boi_token_index': eoi + 1,
                  'eoi_token_index': eoi, 'image_token_index': eoi + 2,
                  'tie_word_embeddings': True},
      'decoder': dec,
      'eoi_token_index': eoi,
      'image_token_index': eoi + 2,
      'is_encoder_decoder': True,
      'tie_word_embeddings': True,
      'dropout_rate': 0.0,
      'attention_dropout': 0.0,
      'vocab_size': config.decoder.vocab_size,
      'pad_token_id': 0,
      'eos_token_id': 1,
      'bos_token_id': 2,
      'dtype': torch_dtype,
      'torch_dtype': torch_dtype,
  }


def params_from_hf(get, config: EncoderDecoderConfig) -> Dict[str, Any]:
  """HF T5Gemma 2 tensors (text part) -> `TiedEncoderDecoder` params (numpy)."""
  enc = config.encoder
  embedder = {'embedding': get(_PREFIX['encoder'] + 'embed_tokens.weight',
                               (enc.vocab_size, enc.embed_dim))}
  if enc.eoi_token_id is not None:
    embedder['eoi_embedding'] = get(_PREFIX['encoder'] + 'embed_tokens.eoi_embedding',
                                    (enc.embed_dim,))
  params = {}
  for side, cfg in (('encoder', enc), ('decoder', config.decoder)):
    stack = {'final_norm': {'scale': get(_PREFIX[side] + 'norm.weight', (cfg.embed_dim,))}}
    for i in range(cfg.num_layers):
      stack[f'layer_{i}'] = hf_gemma3.layer_from_hf(get, f'{_PREFIX[side]}layers.{i}.', cfg,
                                                    norm_names=_NORMS)
    params[side] = stack
  params['encoder']['embedder'] = embedder
  return scan_layout.for_config(params, config)


def params_to_hf(params: Mapping[str, Any], config: EncoderDecoderConfig) -> Dict[str, np.ndarray]:
  """`TiedEncoderDecoder` params (unrolled or scanned) -> {HF tensor name: array}. Writes the
  encoder's embedding (and eoi embedding, zeros when the config has none) once: HF ties the
  decoder's and the LM head's to it."""
  params = scan_layout.unrolled(jax.tree_util.tree_map(
      np.asarray, hf_gemma2._unbox(params)))  # pylint: disable=protected-access
  embedder = params['encoder']['embedder']
  tensors = {
      _PREFIX['encoder'] + 'embed_tokens.weight': np.asarray(embedder['embedding']),
      _PREFIX['encoder'] + 'embed_tokens.eoi_embedding': np.asarray(
          embedder.get('eoi_embedding', np.zeros(config.encoder.embed_dim,
                                                 np.asarray(embedder['embedding']).dtype))),
  }
  for side, cfg in (('encoder', config.encoder), ('decoder', config.decoder)):
    for i in range(cfg.num_layers):
      tensors.update(hf_gemma3.layer_to_hf(params[side][f'layer_{i}'],
                                           f'{_PREFIX[side]}layers.{i}.', norm_names=_NORMS))
    tensors[_PREFIX[side] + 'norm.weight'] = np.asarray(params[side]['final_norm']['scale'])
  return tensors


def load_encoder_decoder(path: str, *, param_dtype: Optional[str] = None,
                         **overrides) -> Tuple[EncoderDecoderConfig, Dict[str, Any]]:
  """Loads an HF T5Gemma2ForConditionalGeneration folder -> (config, params as numpy)."""
  hf = hf_gemma3.read_config(path)
  param_dtype = param_dtype or 'float32'
  config = config_from_hf(hf, param_dtype=param_dtype, **overrides)
  reader = hf_gemma2._TensorReader(path)  # pylint: disable=protected-access
  target = np.dtype(config.encoder.parameter_dtype)

  in_memory = any(k.startswith(_IN_MEMORY_ENCODER_PREFIX) for k in reader.keys())

  def get(name, shape):
    if in_memory and name.startswith(_PREFIX['encoder']):
      name = _IN_MEMORY_ENCODER_PREFIX + name[len(_PREFIX['encoder']):]
    return np.asarray(reader.get(name, shape)).astype(target)

  vision = [k for k in reader.keys() if k.startswith(_VISION_PREFIXES)]
  if vision:
    logging.warning('%s: skipping the vision tower (%d tensors, e.g. %s): only the text part of '
                    'T5Gemma 2 is imported', path, len(vision), vision[0])
  params = params_from_hf(get, config)
  shape = (config.encoder.vocab_size, config.encoder.embed_dim)
  embedding = get(_PREFIX['encoder'] + 'embed_tokens.weight', shape)
  for tied in ('model.decoder.embed_tokens.weight', 'lm_head.out_proj.weight'):
    if tied in reader.keys() and not np.array_equal(get(tied, shape), embedding):
      raise HFCheckpointError(f'tensor {tied!r} differs from '
                              f"'{_PREFIX['encoder']}embed_tokens.weight' (T5Gemma 2 ties them)")
  return config, params


def export_encoder_decoder(params: Mapping[str, Any], config: EncoderDecoderConfig, out_dir: str,
                           *, dtype: Optional[str] = None, max_shard_size=None) -> None:
  """Writes `TiedEncoderDecoder` params as an HF T5Gemma 2 checkpoint (config.json + safetensors)
  that `T5Gemma2ForConditionalGeneration.from_pretrained` loads (text-only; see the docstring)."""
  hf_config = config_to_hf(config)  # validates before anything is written
  dtype = safetensors_files.write_cast(params_to_hf(params, config), out_dir, dtype=dtype,
                                       max_shard_size=max_shard_size)
  hf_config.update(dtype=dtype, torch_dtype=dtype)
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    json.dump(hf_config, f, indent=2)
