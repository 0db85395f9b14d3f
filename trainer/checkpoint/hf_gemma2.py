"""Hugging Face Gemma 2 (decoder-only) checkpoints <-> `TransformerConfig` + `Decoder` params.

  config, params = load_decoder('/ckpt/gemma-2-2b')     # config.json + *.safetensors (sharded too)
  logits = Decoder(config).apply({'params': params}, tokens)
  export_decoder(params, config, '/out/gemma-2-tiny')   # loadable by Gemma2ForCausalLM

Every config field that changes the maths is read from config.json; values this model does not
implement (a RoPE scaling, another activation, attention biases, untied output embeddings,
bidirectional attention) raise `HFConfigError` naming the field. Missing tensors and wrong shapes
raise `HFCheckpointError` naming the tensor. No torch needed.

Tensor mapping (torch Linear weights are [out, in]; our kernels are [in, ..., out]):
  model.embed_tokens.weight [V, D]                  -> embedder/embedding [V, D]
  model.layers.{i}.self_attn.q_proj.weight [H*Dh, D] -> layer_{i}/self_attn/q_proj/kernel [D, H, Dh]
  ... k_proj / v_proj [K*Dh, D]                     -> [D, K, Dh]
  ... o_proj [D, H*Dh]                              -> [H, Dh, D]
  model.layers.{i}.mlp.{gate,up}_proj.weight [F, D] -> layer_{i}/mlp/{gate,up}_proj/kernel [D, F]
  model.layers.{i}.mlp.down_proj.weight [D, F]      -> layer_{i}/mlp/down_proj/kernel [F, D]
  model.layers.{i}.input_layernorm.weight           -> layer_{i}/pre_attention_norm/scale
  model.layers.{i}.post_attention_layernorm.weight  -> layer_{i}/post_attention_norm/scale
  model.layers.{i}.pre_feedforward_layernorm.weight -> layer_{i}/pre_feedforward_norm/scale
  model.layers.{i}.post_feedforward_layernorm.weight-> layer_{i}/post_feedforward_norm/scale
  model.norm.weight                                 -> final_norm/scale
(HF stores the RMSNorm `w` applied as `1 + w`, as we do.)
"""
import dataclasses
import json
import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import ml_dtypes
import numpy as np

from trainer.checkpoint import safetensors_files
from trainer.model import scan_layout
from trainer.model.config import TransformerConfig


class HFConfigError(ValueError):
  """config.json asks for something this model does not compute (message names the field)."""


class HFCheckpointError(ValueError):
  """A tensor is missing or has the wrong shape (message names the tensor)."""


_HF_LAYER_TYPES = {'sliding_attention': 'sliding', 'full_attention': 'global'}
_NORMS = (('input_layernorm', 'pre_attention_norm'),
          ('post_attention_layernorm', 'post_attention_norm'),
          ('pre_feedforward_layernorm', 'pre_feedforward_norm'),
          ('post_feedforward_layernorm', 'post_feedforward_norm'))
_ST_DTYPES = {'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16, 'F64': np.float64}


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------
def _require(hf: Mapping[str, Any], key: str):
  if key not in hf or hf[key] is None:
    raise HFConfigError(f'config.json: required field {key!r} is missing')
  return hf[key]


def _rope_theta(hf: Mapping[str, Any]) -> float:
  """rope theta from `rope_parameters` (transformers >= 5) or `rope_theta`/`rope_scaling` (4.x)."""
  params = hf.get('rope_parameters')
  if params is not None:
    rope_type = params.get('rope_type', params.get('type', 'default'))
    if rope_type != 'default':
      raise HFConfigError(
          f"config.json: rope_parameters.rope_type={rope_type!r} is not supported (only 'default')")
    return float(params.get('rope_theta', hf.get('rope_theta', 10000.0)))
  scaling = hf.get('rope_scaling')
  if scaling is not None:
    rope_type = scaling.get('rope_type', scaling.get('type', 'default'))
    if rope_type != 'default':
      raise HFConfigError(
          f'config.json: rope_scaling={scaling!r} is not supported (only default RoPE)')
  return float(hf.get('rope_theta', 10000.0))


def config_from_hf(hf: Mapping[str, Any], **overrides) -> TransformerConfig:
  """Gemma 2 config.json dict -> TransformerConfig. `overrides` set non-maths fields (dtype,
  param_dtype, dropout_rate, attention_impl, remat)."""
  model_type = hf.get('model_type')
  if model_type not in (None, 'gemma2'):
    raise HFConfigError(f"config.json: model_type={model_type!r}, expected 'gemma2'")
  activation = hf.get('hidden_activation') or hf.get('hidden_act') or 'gelu_pytorch_tanh'
  if activation != 'gelu_pytorch_tanh':
    raise HFConfigError(
        f'config.json: hidden_activation={activation!r} is not supported '
        "(only 'gelu_pytorch_tanh')")
  if hf.get('attention_bias'):
    raise HFConfigError('config.json: attention_bias=true is not supported')
  if hf.get('tie_word_embeddings') is False:
    raise HFConfigError('config.json: tie_word_embeddings=false is not supported (Gemma 2 ties '
                        'the output projection to the input embedding)')
  if hf.get('use_bidirectional_attention'):
    raise HFConfigError('config.json: use_bidirectional_attention=true is not supported by the '
                        'decoder import (use the Encoder module)')
  num_layers = int(_require(hf, 'num_hidden_layers'))
  layer_types = hf.get('layer_types')
  if layer_types is not None:
    unknown = [t for t in layer_types if t not in _HF_LAYER_TYPES]
    if unknown:
      raise HFConfigError(f'config.json: layer_types contains {unknown[0]!r}; supported: '
                          f'{sorted(_HF_LAYER_TYPES)}')
    layer_types = tuple(_HF_LAYER_TYPES[t] for t in layer_types)
  num_heads = int(_require(hf, 'num_attention_heads'))
  embed_dim = int(_require(hf, 'hidden_size'))
  head_dim = hf.get('head_dim') or embed_dim // num_heads
  sliding_window = hf.get('sliding_window')
  if layer_types is not None and 'sliding' in layer_types and sliding_window is None:
    raise HFConfigError('config.json: layer_types has sliding layers but sliding_window is null')
  fields = dict(
      vocab_size=int(_require(hf, 'vocab_size')),
      embed_dim=embed_dim,
      num_layers=num_layers,
      num_heads=num_heads,
      num_kv_heads=int(hf.get('num_key_value_heads') or num_heads),
      head_dim=int(head_dim),
      mlp_dim=int(_require(hf, 'intermediate_size')),
      query_pre_attn_scalar=float(_require(hf, 'query_pre_attn_scalar')),
      attn_logits_soft_cap=hf.get('attn_logit_softcapping'),
      final_logit_soft_cap=hf.get('final_logit_softcapping'),
      sliding_window=None if sliding_window is None else int(sliding_window),
      layer_types=layer_types,
      rope_theta=_rope_theta(hf),
      rms_norm_eps=float(hf.get('rms_norm_eps', 1e-6)),
  )
  unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TransformerConfig)})
  if unknown:
    raise ValueError(f'config override {unknown[0]!r} is not a TransformerConfig field')
  fields.update(overrides)
  return TransformerConfig(**fields)


def config_to_hf(config: TransformerConfig, *, torch_dtype: str = 'float32') -> Dict[str, Any]:
  """TransformerConfig -> Gemma 2 config.json dict (transformers 5 layout; also read by 4.4x)."""
  hf_types = {v: k for k, v in _HF_LAYER_TYPES.items()}
  return {
      'architectures': ['Gemma2ForCausalLM'],
      'model_type': 'gemma2',
      'vocab_size': config.vocab_size,
      'hidden_size': config.embed_dim,
      'intermediate_size': config.mlp_dim,
      'num_hidden_layers': config.num_layers,
      'num_attention_heads': config.num_heads,
      'num_key_value_heads': config.num_kv_heads,
      'head_dim': config.head_dim,
      # transformers types this field as int; keep integral values integral.
      'query_pre_attn_scalar': (int(config.query_pre_attn_scalar)
                                if float(config.query_pre_attn_scalar).is_integer()
                                else config.query_pre_attn_scalar),
      'attn_logit_softcapping': config.attn_logits_soft_cap,
      'final_logit_softcapping': config.final_logit_soft_cap,
      # HF needs an int window even when every layer is global.
      'sliding_window': config.sliding_window if config.sliding_window is not None else 4096,
      'layer_types': [hf_types['global' if config.layer_window(i) is None else 'sliding']
                      for i in range(config.num_layers)],
      'rope_parameters': {'rope_type': 'default', 'rope_theta': config.rope_theta},
      'rope_theta': config.rope_theta,
      'rms_norm_eps': config.rms_norm_eps,
      'hidden_activation': 'gelu_pytorch_tanh',
      'hidden_act': 'gelu_pytorch_tanh',
      'attention_bias': False,
      'attention_dropout': 0.0,
      'tie_word_embeddings': True,
      'pad_token_id': 0,
      'eos_token_id': 1,
      'bos_token_id': 2,
      'max_position_embeddings': 8192,
      'initializer_range': 0.02,
      'use_cache': True,
      'dtype': torch_dtype,
      'torch_dtype': torch_dtype,
  }


# ----------------------------------------------------------------------------------------------
# safetensors I/O
# ----------------------------------------------------------------------------------------------
def _read_safetensors_header(path: str) -> Tuple[Dict[str, Any], int]:
  with open(path, 'rb') as f:
    header_len = int.from_bytes(f.read(8), 'little')
    header = json.loads(f.read(header_len))
  return header, 8 + header_len


class _TensorReader:
  """Lazy reader over one checkpoint folder (single file or sharded with an index).

  Reads the safetensors layout (8-byte header length, JSON header, raw little-endian buffer) with a
  numpy memmap: safetensors' numpy backend cannot represent bfloat16 (the released Gemma 2 weights
  are bf16) and its flax backend would place every tensor on the default accelerator.
  """

  def __init__(self, path: str):
    index_path = os.path.join(path, 'model.safetensors.index.json')
    single_path = os.path.join(path, 'model.safetensors')
    if os.path.exists(index_path):
      with open(index_path) as f:
        weight_map = json.load(f)['weight_map']
      files = sorted(set(weight_map.values()))
    elif os.path.exists(single_path):
      files = ['model.safetensors']
    else:
      raise HFCheckpointError(
          f'{path}: neither model.safetensors nor model.safetensors.index.json found')
    self._entries = {}
    for name in files:
      file_path = os.path.join(path, name)
      if not os.path.exists(file_path):
        raise HFCheckpointError(f'{file_path}: shard listed in the index is missing')
      header, data_start = _read_safetensors_header(file_path)
      for key, info in header.items():
        if key != '__metadata__':
          self._entries[key] = (file_path, data_start, info)

  def keys(self):
    return self._entries.keys()

  def get(self, name: str, shape: Tuple[int, ...]) -> np.ndarray:
    if name not in self._entries:
      raise HFCheckpointError(f'tensor {name!r} is missing from the checkpoint')
    file_path, data_start, info = self._entries[name]
    if tuple(info['shape']) != tuple(shape):
      raise HFCheckpointError(
          f'tensor {name!r} has shape {tuple(info["shape"])}, expected {tuple(shape)}')
    if info['dtype'] not in _ST_DTYPES:
      raise HFCheckpointError(f'tensor {name!r} has unsupported dtype {info["dtype"]}')
    begin, end = info['data_offsets']
    dtype = np.dtype(_ST_DTYPES[info['dtype']])
    if int(np.prod(shape)) * dtype.itemsize != end - begin:
      raise HFCheckpointError(f'tensor {name!r}: byte size does not match its shape and dtype')
    return np.memmap(file_path, dtype=dtype, mode='r', offset=data_start + begin,
                     shape=tuple(shape))


# ----------------------------------------------------------------------------------------------
# Parameter mapping (public: the T5Gemma interop reuses the per-layer maps)
# ----------------------------------------------------------------------------------------------
def layer_from_hf(get: Callable[[str, Tuple[int, ...]], np.ndarray], prefix: str,
                  config: TransformerConfig, *, self_attn: str = 'self_attn',
                  norm_names=_NORMS) -> Dict[str, Any]:
  """One HF Gemma 2 layer (tensor names under `prefix`, e.g. 'model.layers.3.') -> our layer tree.
  `get(name, torch_shape)` returns the tensor or raises naming it."""
  d, h, k, dh, f = (config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim,
                    config.mlp_dim)
  attn = f'{prefix}{self_attn}.'
  layer = {
      'self_attn': {
          'q_proj': {'kernel': get(attn + 'q_proj.weight', (h * dh, d)).T.reshape(d, h, dh)},
          'k_proj': {'kernel': get(attn + 'k_proj.weight', (k * dh, d)).T.reshape(d, k, dh)},
          'v_proj': {'kernel': get(attn + 'v_proj.weight', (k * dh, d)).T.reshape(d, k, dh)},
          'o_proj': {'kernel': get(attn + 'o_proj.weight', (d, h * dh)).T.reshape(h, dh, d)},
      },
      'mlp': {
          'gate_proj': {'kernel': get(prefix + 'mlp.gate_proj.weight', (f, d)).T},
          'up_proj': {'kernel': get(prefix + 'mlp.up_proj.weight', (f, d)).T},
          'down_proj': {'kernel': get(prefix + 'mlp.down_proj.weight', (d, f)).T},
      },
  }
  for hf_name, ours in norm_names:
    layer[ours] = {'scale': get(f'{prefix}{hf_name}.weight', (d,))}
  return layer


def layer_to_hf(layer: Mapping[str, Any], prefix: str, *, self_attn: str = 'self_attn',
                norm_names=_NORMS) -> Dict[str, np.ndarray]:
  """Inverse of `layer_from_hf`: our layer tree -> {HF tensor name: [out, in] array}."""
  attn = layer['self_attn']
  out = {}
  for proj in ('q_proj', 'k_proj', 'v_proj'):
    kernel = np.asarray(attn[proj]['kernel'])
    out[f'{prefix}{self_attn}.{proj}.weight'] = kernel.reshape(kernel.shape[0], -1).T
  o_kernel = np.asarray(attn['o_proj']['kernel'])
  out[f'{prefix}{self_attn}.o_proj.weight'] = o_kernel.reshape(-1, o_kernel.shape[-1]).T
  for proj in ('gate_proj', 'up_proj', 'down_proj'):
    out[f'{prefix}mlp.{proj}.weight'] = np.asarray(layer['mlp'][proj]['kernel']).T
  for hf_name, ours in norm_names:
    out[f'{prefix}{hf_name}.weight'] = np.asarray(layer[ours]['scale'])
  return out


def _unbox(tree):
  """Strips flax partitioning boxes (params straight from `model.init`)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return nn.unbox(tree)


def params_from_hf(get: Callable[[str, Tuple[int, ...]], np.ndarray],
                   config: TransformerConfig, *, layer_fn: Callable[..., Dict[str, Any]] = None
                   ) -> Dict[str, Any]:
  """HF Gemma 2 tensors -> `Decoder` params (numpy, the checkpoint's dtype; scanned layout when
  `config.scan_layers`). `layer_fn(get, prefix, config)` maps one layer (default: Gemma 2's
  `layer_from_hf`; Gemma 3 passes its own)."""
  layer_fn = layer_fn or layer_from_hf
  params = {
      'embedder': {'embedding': get('model.embed_tokens.weight',
                                    (config.vocab_size, config.embed_dim))},
      'final_norm': {'scale': get('model.norm.weight', (config.embed_dim,))},
  }
  for i in range(config.num_layers):
    params[f'layer_{i}'] = layer_fn(get, f'model.layers.{i}.', config)
  return scan_layout.for_config(params, config)


def params_to_hf(params: Mapping[str, Any], config: TransformerConfig, *,
                 layer_fn: Callable[..., Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
  """`Decoder` params (unrolled or scanned) -> {HF Gemma 2 tensor name: array} (no separate
  lm_head: tied). `layer_fn(layer, prefix)` maps one layer (default: Gemma 2's `layer_to_hf`)."""
  layer_fn = layer_fn or layer_to_hf
  params = _unbox(params)
  if scan_layout.is_scanned(params):  # unrolled on the host: HF numbers the layers
    params = scan_layout.unrolled(jax.tree_util.tree_map(np.asarray, params))
  tensors = {'model.embed_tokens.weight': np.asarray(params['embedder']['embedding'])}
  for i in range(config.num_layers):
    tensors.update(layer_fn(params[f'layer_{i}'], f'model.layers.{i}.'))
  tensors['model.norm.weight'] = np.asarray(params['final_norm']['scale'])
  return tensors


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------
def read_decoder_params(path: str, config: TransformerConfig, params_from_hf) -> Dict[str, Any]:
  """A decoder's params from an HF folder's safetensors, by `params_from_hf(get, config)` (the
  family's name mapping), cast to the config's parameter dtype. An `lm_head.weight` must equal
  the embedding (tied)."""
  reader = _TensorReader(path)
  target = np.dtype(config.parameter_dtype)

  def get(name, shape):
    return np.asarray(reader.get(name, shape)).astype(target)

  params = params_from_hf(get, config)
  if 'lm_head.weight' in reader.keys():
    shape = (config.vocab_size, config.embed_dim)
    if not np.array_equal(np.asarray(reader.get('lm_head.weight', shape)),
                          np.asarray(reader.get('model.embed_tokens.weight', shape))):
      raise HFCheckpointError("tensor 'lm_head.weight' differs from 'model.embed_tokens.weight' "
                              '(untied output embeddings are not supported)')
  return params


def load_decoder(path: str, *, param_dtype: Optional[str] = None,
                 **overrides) -> Tuple[TransformerConfig, Dict[str, Any]]:
  """Loads an HF Gemma 2 checkpoint folder -> (TransformerConfig, Decoder params).

  Args:
    path: folder with config.json and model.safetensors (or model.safetensors.index.json + shards).
    param_dtype: dtype of the returned arrays and `config.param_dtype`; default 'float32'.
    **overrides: other non-maths TransformerConfig fields (dtype, dropout_rate, remat, ...).
  Returns:
    config and a nested dict of numpy arrays matching `Decoder(config).init(...)['params']`
    (unboxed). An `lm_head.weight` in the checkpoint must equal the embedding (tied).
  """
  config_path = os.path.join(path, 'config.json')
  if not os.path.exists(config_path):
    raise HFCheckpointError(f'{config_path} not found')
  with open(config_path) as f:
    hf = json.load(f)
  param_dtype = param_dtype or 'float32'
  config = config_from_hf(hf, param_dtype=param_dtype, **overrides)
  params = read_decoder_params(path, config, params_from_hf)
  return config, params


def export_decoder(params: Mapping[str, Any], config: TransformerConfig, out_dir: str, *,
                   dtype: Optional[str] = None, max_shard_size=None) -> None:
  """Writes `Decoder` params as an HF Gemma 2 checkpoint (config.json + safetensors).

  Args:
    params: Decoder params (boxed or unboxed; jax or numpy arrays).
    config: their TransformerConfig.
    out_dir: created if missing.
    dtype: tensor dtype in the files ('float32' | 'bfloat16' | 'float16'); default: the params'.
    max_shard_size: e.g. '5GB' or bytes; when the tensors exceed it, writes numbered shards and
      model.safetensors.index.json as `save_pretrained` does.
  """
  dtype = safetensors_files.write_cast(params_to_hf(params, config), out_dir, dtype=dtype,
                                       max_shard_size=max_shard_size)
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    json.dump(config_to_hf(config, torch_dtype=dtype), f, indent=2)
