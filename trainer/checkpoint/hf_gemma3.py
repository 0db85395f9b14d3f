"""Hugging Face Gemma 3 text (decoder-only) checkpoints <-> `TransformerConfig` + `Decoder` params.

  config, params = load_decoder('/ckpt/gemma-3-1b-pt')   # Gemma3ForCausalLM: config.json + safetensors
  logits = Decoder(config).apply({'params': params}, tokens)
  export_decoder(params, config, '/out/gemma-3-tiny')    # loadable by Gemma3ForCausalLM

Gemma 3 differs from Gemma 2 (`trainer.checkpoint.hf_gemma2`, whose tensor reader and per-layer
maps this reuses) by QK-norm (`use_qk_norm`), two RoPE bases (`rope_theta` for the global layers,
`local_rope_theta` for the sliding ones), an optional linear RoPE scaling of the global layers
(`rope_scaling_factor`), no attention soft-cap (HF Gemma 3 never applies `attn_logit_softcapping`)
and, usually, no final soft-cap. Extra tensors per layer:
  model.layers.{i}.self_attn.q_norm.weight [Dh]  -> layer_{i}/self_attn/q_norm/scale
  model.layers.{i}.self_attn.k_norm.weight [Dh]  -> layer_{i}/self_attn/k_norm/scale
Only text checkpoints (`model_type='gemma3_text'`, `Gemma3ForCausalLM`); a multimodal
`Gemma3ForConditionalGeneration` folder is refused with a message saying so.
"""
import dataclasses
import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from trainer.checkpoint import hf_gemma2
from trainer.checkpoint import safetensors_files
from trainer.checkpoint.hf_gemma2 import HFCheckpointError, HFConfigError
from trainer.model.config import TransformerConfig

_HF_LAYER_TYPES = {'sliding_attention': 'sliding', 'full_attention': 'global'}
_DEFAULT_THETA = {'full_attention': 1_000_000.0, 'sliding_attention': 10_000.0}


def _rope_params(hf: Mapping[str, Any], where: str) -> Dict[str, Any]:
  """-> rope_theta, local_rope_theta, rope_scaling_factor, from transformers 5's per-layer-type
  `rope_parameters` or 4.x's `rope_theta` / `rope_local_base_freq` / `rope_scaling`."""
  params = hf.get('rope_parameters')
  if isinstance(params, Mapping) and ('full_attention' in params
                                      or 'sliding_attention' in params):
    per_type = {t: dict(params.get(t) or {}) for t in _HF_LAYER_TYPES}
  else:
    full = dict(hf.get('rope_scaling') or {})
    if isinstance(params, Mapping):
      full.update(params)
    full.setdefault('rope_theta', hf.get('rope_theta', _DEFAULT_THETA['full_attention']))
    per_type = {'full_attention': full,
                'sliding_attention': {'rope_type': 'default', 'rope_theta': hf.get(
                    'rope_local_base_freq', _DEFAULT_THETA['sliding_attention'])}}
  factor = None
  for layer_type, p in per_type.items():
    rope_type = p.get('rope_type', p.get('type', 'default'))
    if rope_type == 'linear' and layer_type == 'full_attention':
      factor = float(p['factor'])
    elif rope_type != 'default':
      raise HFConfigError(f'{where}: rope_parameters.{layer_type}.rope_type={rope_type!r} is not '
                          "supported (only 'default', and 'linear' on the global layers)")
  return dict(
      rope_theta=float(per_type['full_attention'].get('rope_theta',
                                                      _DEFAULT_THETA['full_attention'])),
      local_rope_theta=float(per_type['sliding_attention'].get(
          'rope_theta', _DEFAULT_THETA['sliding_attention'])),
      rope_scaling_factor=factor)


def text_config_from_hf(hf: Mapping[str, Any], *, where: str = 'config.json',
                        **overrides) -> TransformerConfig:
  """A Gemma 3 text config dict (also T5Gemma 2's encoder text / decoder configs) ->
  TransformerConfig. `overrides` set non-maths fields (dtype, param_dtype, remat, ...)."""
  activation = hf.get('hidden_activation') or hf.get('hidden_act') or 'gelu_pytorch_tanh'
  if activation != 'gelu_pytorch_tanh':
    raise HFConfigError(f'{where}: hidden_activation={activation!r} is not supported '
                        "(only 'gelu_pytorch_tanh')")
  if hf.get('attention_bias'):
    raise HFConfigError(f'{where}: attention_bias=true is not supported')
  if hf.get('use_bidirectional_attention'):
    raise HFConfigError(f'{where}: use_bidirectional_attention=true is not supported by the '
                        'decoder import')

  def require(key):
    if hf.get(key) is None:
      raise HFConfigError(f'{where}: required field {key!r} is missing')
    return hf[key]

  num_layers = int(require('num_hidden_layers'))
  layer_types = hf.get('layer_types')
  if layer_types is None:  # HF default: every 6th layer global
    pattern = int(hf.get('sliding_window_pattern', 6))
    layer_types = ['sliding_attention' if (i + 1) % pattern else 'full_attention'
                   for i in range(num_layers)]
  unknown = [t for t in layer_types if t not in _HF_LAYER_TYPES]
  if unknown:
    raise HFConfigError(f'{where}: layer_types contains {unknown[0]!r}; supported: '
                        f'{sorted(_HF_LAYER_TYPES)}')
  num_heads = int(require('num_attention_heads'))
  embed_dim = int(require('hidden_size'))
  sliding_window = hf.get('sliding_window')
  if 'sliding_attention' in layer_types and sliding_window is None:
    raise HFConfigError(f'{where}: layer_types has sliding layers but sliding_window is null')
  fields = dict(
      vocab_size=int(require('vocab_size')),
      embed_dim=embed_dim,
      num_layers=num_layers,
      num_heads=num_heads,
      num_kv_heads=int(hf.get('num_key_value_heads') or num_heads),
      head_dim=int(hf.get('head_dim') or embed_dim // num_heads),
      mlp_dim=int(require('intermediate_size')),
      query_pre_attn_scalar=float(require('query_pre_attn_scalar')),
      attn_logits_soft_cap=None,  # HF Gemma 3 / T5Gemma 2 attention never soft-caps
      final_logit_soft_cap=hf.get('final_logit_softcapping'),
      sliding_window=None if sliding_window is None else int(sliding_window),
      layer_types=tuple(_HF_LAYER_TYPES[t] for t in layer_types),
      rms_norm_eps=float(hf.get('rms_norm_eps', 1e-6)),
      use_qk_norm=True,
      **_rope_params(hf, where),
  )
  unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TransformerConfig)})
  if unknown:
    raise ValueError(f'config override {unknown[0]!r} is not a TransformerConfig field')
  fields.update(overrides)
  return TransformerConfig(**fields)


def config_from_hf(hf: Mapping[str, Any], **overrides) -> TransformerConfig:
  """Gemma3ForCausalLM config.json dict -> TransformerConfig."""
  model_type = hf.get('model_type')
  if model_type == 'gemma3':
    raise HFConfigError("config.json: model_type='gemma3' is the multimodal "
                        'Gemma3ForConditionalGeneration; export its text part as '
                        "Gemma3ForCausalLM (model_type='gemma3_text') first")
  if model_type not in (None, 'gemma3_text'):
    raise HFConfigError(f"config.json: model_type={model_type!r}, expected 'gemma3_text'")
  if hf.get('tie_word_embeddings') is False:
    raise HFConfigError('config.json: tie_word_embeddings=false is not supported (Gemma 3 ties '
                        'the output projection to the input embedding)')
  return text_config_from_hf(hf, **overrides)


def _int_if_integral(x):
  return int(x) if float(x).is_integer() else x


def text_config_to_hf(config: TransformerConfig) -> Dict[str, Any]:
  """The text fields of a Gemma 3 / T5Gemma 2 config dict (transformers 5 layout)."""
  if config.attn_logits_soft_cap is not None:
    raise HFConfigError(f'attn_logits_soft_cap={config.attn_logits_soft_cap}: HF Gemma 3 / '
                        'T5Gemma 2 attention has no soft-cap; set it to None to export')
  if not config.use_qk_norm:
    raise HFConfigError('use_qk_norm=False: HF Gemma 3 / T5Gemma 2 always apply QK-norm')
  hf_types = {v: k for k, v in _HF_LAYER_TYPES.items()}
  full = {'rope_type': 'default', 'rope_theta': config.rope_theta}
  if config.rope_scaling_factor is not None:
    full = {'rope_type': 'linear', 'factor': config.rope_scaling_factor,
            'rope_theta': config.rope_theta}
  local_theta = config.rope_theta if config.local_rope_theta is None else config.local_rope_theta
  return {
      'vocab_size': config.vocab_size,
      'hidden_size': config.embed_dim,
      'intermediate_size': config.mlp_dim,
      'num_hidden_layers': config.num_layers,
      'num_attention_heads': config.num_heads,
      'num_key_value_heads': config.num_kv_heads,
      'head_dim': config.head_dim,
      'query_pre_attn_scalar': _int_if_integral(config.query_pre_attn_scalar),
      'attn_logit_softcapping': None,
      'final_logit_softcapping': config.final_logit_soft_cap,
      'sliding_window': config.sliding_window if config.sliding_window is not None else 4096,
      'layer_types': [hf_types['global' if config.layer_window(i) is None else 'sliding']
                      for i in range(config.num_layers)],
      'rope_parameters': {'full_attention': full,
                          'sliding_attention': {'rope_type': 'default',
                                                'rope_theta': local_theta}},
      'rms_norm_eps': config.rms_norm_eps,
      'hidden_activation': 'gelu_pytorch_tanh',
      'attention_bias': False,
      'attention_dropout': 0.0,
      'tie_word_embeddings': True,
      'pad_token_id': 0,
      'eos_token_id': 1,
      'bos_token_id': 2,
      'max_position_embeddings': 131072,
      'initializer_range': 0.02,
      'use_cache': True,
  }


def config_to_hf(config: TransformerConfig, *, torch_dtype: str = 'float32') -> Dict[str, Any]:
  """TransformerConfig -> Gemma3ForCausalLM config.json dict."""
  out = {'architectures': ['Gemma3ForCausalLM'], 'model_type': 'gemma3_text'}
  out.update(text_config_to_hf(config))
  out.update({'use_bidirectional_attention': False, 'dtype': torch_dtype,
              'torch_dtype': torch_dtype})
  return out


# ----------------------------------------------------------------------------------------------
# Parameter mapping (public: T5Gemma 2 reuses the per-layer maps)
# ----------------------------------------------------------------------------------------------
NORMS = hf_gemma2._NORMS  # pylint: disable=protected-access


def layer_from_hf(get, prefix: str, config: TransformerConfig, *, norm_names=NORMS):
  """One HF Gemma 3 layer -> our layer tree (the Gemma 2 map plus q_norm / k_norm)."""
  layer = hf_gemma2.layer_from_hf(get, prefix, config, norm_names=norm_names)
  for name in ('q_norm', 'k_norm'):
    layer['self_attn'][name] = {'scale': get(f'{prefix}self_attn.{name}.weight',
                                             (config.head_dim,))}
  return layer


def layer_to_hf(layer: Mapping[str, Any], prefix: str, *, norm_names=NORMS):
  out = hf_gemma2.layer_to_hf(layer, prefix, norm_names=norm_names)
  for name in ('q_norm', 'k_norm'):
    out[f'{prefix}self_attn.{name}.weight'] = np.asarray(layer['self_attn'][name]['scale'])
  return out


def params_from_hf(get, config: TransformerConfig) -> Dict[str, Any]:
  """HF Gemma 3 tensors -> `Decoder` params (numpy; scanned layout when `config.scan_layers`)."""
  return hf_gemma2.params_from_hf(get, config, layer_fn=layer_from_hf)


def params_to_hf(params: Mapping[str, Any], config: TransformerConfig) -> Dict[str, np.ndarray]:
  """`Decoder` params (unrolled or scanned) -> {HF Gemma 3 tensor name: array} (tied lm_head)."""
  return hf_gemma2.params_to_hf(params, config, layer_fn=layer_to_hf)


def read_config(path: str) -> Dict[str, Any]:
  config_path = os.path.join(path, 'config.json')
  if not os.path.exists(config_path):
    raise HFCheckpointError(f'{config_path} not found')
  with open(config_path) as f:
    return json.load(f)


def load_decoder(path: str, *, param_dtype: Optional[str] = None,
                 **overrides) -> Tuple[TransformerConfig, Dict[str, Any]]:
  """Loads an HF Gemma3ForCausalLM folder -> (TransformerConfig, Decoder params as numpy).
  An `lm_head.weight` in the checkpoint must equal the embedding (tied)."""
  hf = read_config(path)
  param_dtype = param_dtype or 'float32'
  config = config_from_hf(hf, param_dtype=param_dtype, **overrides)
  params = hf_gemma2.read_decoder_params(path, config, params_from_hf)
  return config, params


def export_decoder(params: Mapping[str, Any], config: TransformerConfig, out_dir: str, *,
                   dtype: Optional[str] = None, max_shard_size=None) -> None:
  """Writes `Decoder` params as an HF Gemma3ForCausalLM checkpoint (config.json + safetensors)."""
  hf_config = config_to_hf(config)  # validates before anything is written
  dtype = safetensors_files.write_cast(params_to_hf(params, config), out_dir, dtype=dtype,
                                       max_shard_size=max_shard_size)
  hf_config.update(dtype=dtype, torch_dtype=dtype)
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    json.dump(hf_config, f, indent=2)
