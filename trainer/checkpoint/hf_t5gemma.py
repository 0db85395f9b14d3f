"""Hugging Face T5Gemma checkpoints <-> our `EncoderDecoder` params and `EncoderDecoderConfig`.

An HF T5Gemma checkpoint directory holds `config.json` (model_type `t5gemma`, with `encoder` and
`decoder` sub-configs) and `model.safetensors` (or shards listed in `model.safetensors.index.json`).
Our parameter tree (docs/DESIGN.md) names things HF-like, so the mapping is a rename plus a reshape
of the attention kernels:

  HF tensor (torch Linear weight = [out, in])                 ours
  model.{side}.embed_tokens.weight        [V, D]               {side}/embedder/embedding  [V, D]
  model.{side}.layers.i.self_attn.q_proj.weight [H*Dh, D]      {side}/layer_i/self_attn/q_proj/kernel [D, H, Dh]
  ... k_proj / v_proj                     [K*Dh, D_in]         .../k_proj/kernel [D_in, K, Dh]
  ... o_proj                              [D, H*Dh]            .../o_proj/kernel [H, Dh, D]
  ... mlp.{gate,up}_proj.weight           [F, D]               .../mlp/{gate,up}_proj/kernel [D, F]
  ... mlp.down_proj.weight                [D, F]               .../mlp/down_proj/kernel [F, D]
  ... pre_self_attn_layernorm.weight      [D]                  .../pre_attention_norm/scale
  ... post_self_attn_layernorm / pre_feedforward_layernorm / post_feedforward_layernorm
                                                               post_attention_norm / pre_feedforward_norm / post_feedforward_norm
  model.decoder.layers.i.cross_attn.*  (+ pre/post_cross_attn_layernorm)
                                                               decoder/layer_i/cross_attn/* (+ pre/post_cross_attn_norm)
  model.{side}.norm.weight                                     {side}/final_norm/scale
  lm_head.out_proj.weight (tied to the decoder embedding; not written, checked equal if present)

RMSNorm scales are stored as `w` (applied as `1 + w`) on both sides, so they copy unchanged.

Library functions (no flags): `config_to_hf`, `config_from_hf`, `params_to_hf`, `params_from_hf`,
`export_t5gemma(params, config, out_dir)`, `import_t5gemma(path) -> (config, params)`.
"""
import json
import os
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import jax
import numpy as np

from trainer.checkpoint import safetensors_files
from trainer.model import scan_layout
from trainer.model.config import EncoderDecoderConfig, TransformerConfig

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = safetensors_files.WEIGHTS_FILE
INDEX_FILE = safetensors_files.INDEX_FILE
SUPPORTED_ACTIVATIONS = ('gelu_pytorch_tanh',)
_HF_LAYER_TYPES = {'sliding': 'sliding_attention', 'global': 'full_attention'}
_OUR_LAYER_TYPES = {v: k for k, v in _HF_LAYER_TYPES.items()}
# ours -> HF norm names inside a layer.
_NORMS = {
    'pre_attention_norm': 'pre_self_attn_layernorm',
    'post_attention_norm': 'post_self_attn_layernorm',
    'pre_feedforward_norm': 'pre_feedforward_layernorm',
    'post_feedforward_norm': 'post_feedforward_layernorm',
}
_CROSS_NORMS = {
    'pre_cross_attn_norm': 'pre_cross_attn_layernorm',
    'post_cross_attn_norm': 'post_cross_attn_layernorm',
}
# Fields of an HF T5Gemma module config that we read or check; others are ignored (they do not change
# the maths: token ids, initializer_range, use_cache, max_position_embeddings, ...).


class HFConversionError(ValueError):
  """A checkpoint or config that cannot be converted; the message names the field or tensor."""


# --------------------------------------------------------------------------------------------------
# Config.


def _int_field(value: float, name: str) -> int:
  # HF's strict config dataclass types query_pre_attn_scalar as int.
  if float(value) != int(value):
    raise HFConversionError(f'HF T5Gemma stores {name} as an int; {value!r} is not integral')
  return int(value)


def _float_or_none(value: Optional[float]) -> Optional[float]:
  return None if value is None else float(value)


def _module_config_to_hf(cfg: TransformerConfig, *, side: str, is_decoder: bool,
                         cross_attention_hidden_size: Optional[int]) -> Dict[str, Any]:
  layer_types = [_HF_LAYER_TYPES[t] for t in cfg.resolved_layer_types]
  if cfg.sliding_window is None:
    layer_types = ['full_attention'] * cfg.num_layers  # our `sliding_window=None` = all global
  out = {
      'model_type': 't5_gemma_module',
      'vocab_size': cfg.vocab_size,
      'hidden_size': cfg.embed_dim,
      'intermediate_size': cfg.mlp_dim,
      'num_hidden_layers': cfg.num_layers,
      'num_attention_heads': cfg.num_heads,
      'num_key_value_heads': cfg.num_kv_heads,
      'head_dim': cfg.head_dim,
      'hidden_activation': 'gelu_pytorch_tanh',
      'max_position_embeddings': 8192,
      'rms_norm_eps': cfg.rms_norm_eps,
      'rope_parameters': {'rope_type': 'default', 'rope_theta': float(cfg.rope_theta)},
      'attention_bias': False,
      'attention_dropout': 0.0,
      'dropout_rate': cfg.dropout_rate,
      'query_pre_attn_scalar': _int_field(cfg.query_pre_attn_scalar, f'{side}.query_pre_attn_scalar'),
      'sliding_window': cfg.sliding_window,
      'layer_types': layer_types,
      'final_logit_softcapping': _float_or_none(cfg.final_logit_soft_cap),
      'attn_logit_softcapping': _float_or_none(cfg.attn_logits_soft_cap),
      'is_decoder': is_decoder,
      'tie_word_embeddings': True,
      'pad_token_id': 0,
      'eos_token_id': 1,
      'bos_token_id': 2,
  }
  if cross_attention_hidden_size is not None:
    out['cross_attention_hidden_size'] = cross_attention_hidden_size
  return out


def config_to_hf(config: EncoderDecoderConfig) -> Dict[str, Any]:
  """Our `EncoderDecoderConfig` -> the content of an HF T5Gemma `config.json`.

  Raises HFConversionError for settings HF T5Gemma cannot express (named).
  """
  enc, dec = config.encoder, config.decoder
  if config.causal_encoder:
    raise HFConversionError('EncoderDecoderConfig.causal_encoder=True: HF T5Gemma\'s encoder is '
                            'always bidirectional (a causal encoder is an ablation, not exported)')
  if enc.vocab_size != dec.vocab_size:
    raise HFConversionError(
        f'HF T5Gemma needs one vocabulary: encoder.vocab_size={enc.vocab_size} != '
        f'decoder.vocab_size={dec.vocab_size}')
  if enc.dropout_rate != dec.dropout_rate:
    raise HFConversionError(
        f'HF T5Gemma has one dropout_rate: encoder.dropout_rate={enc.dropout_rate} != '
        f'decoder.dropout_rate={dec.dropout_rate}')
  for side, cfg in (('encoder', enc), ('decoder', dec)):
    if cfg.embed_dim % cfg.num_heads:
      raise HFConversionError(
          f'HF T5Gemma requires hidden_size % num_attention_heads == 0: {side}.embed_dim='
          f'{cfg.embed_dim}, {side}.num_heads={cfg.num_heads}')
  return {
      'architectures': ['T5GemmaForConditionalGeneration'],
      'model_type': 't5gemma',
      'is_encoder_decoder': True,
      'encoder': _module_config_to_hf(enc, side='encoder', is_decoder=False, cross_attention_hidden_size=None),
      'decoder': _module_config_to_hf(dec, side='decoder', is_decoder=True, cross_attention_hidden_size=enc.embed_dim),
      'dropout_rate': dec.dropout_rate,
      'attention_dropout': 0.0,
      'classifier_dropout_rate': 0.0,
      'tie_word_embeddings': True,
      'vocab_size': dec.vocab_size,
      'pad_token_id': 0,
      'eos_token_id': 1,
      'bos_token_id': 2,
      'dtype': 'float32',
  }


def _get(cfg: Mapping[str, Any], field: str, where: str, default: Any = KeyError) -> Any:
  if field in cfg and cfg[field] is not None:
    return cfg[field]
  if default is KeyError:
    raise HFConversionError(f'{where}.{field} is missing from the T5Gemma config')
  return default


def _module_config_from_hf(cfg: Mapping[str, Any], where: str, *, dropout_rate: float,
                           param_dtype: str) -> TransformerConfig:
  if not isinstance(cfg, Mapping):
    raise HFConversionError(f'{where} must be a dict (a T5Gemma module config), got {type(cfg).__name__}')
  activation = _get(cfg, 'hidden_activation', where, 'gelu_pytorch_tanh')
  if activation not in SUPPORTED_ACTIVATIONS:
    raise HFConversionError(
        f'{where}.hidden_activation={activation!r} is not supported (only {SUPPORTED_ACTIVATIONS})')
  if cfg.get('attention_bias'):
    raise HFConversionError(f'{where}.attention_bias=true is not supported (Gemma projections have no bias)')
  if float(cfg.get('attention_dropout') or 0.0) != 0.0:
    raise HFConversionError(
        f'{where}.attention_dropout={cfg["attention_dropout"]} is not supported (no dropout on attention '
        'probabilities in our model); set it to 0.0')
  if cfg.get('tie_word_embeddings') is False:
    raise HFConversionError(f'{where}.tie_word_embeddings=false is not supported (tied output embedding)')
  rope_theta = 10000.0
  rope = cfg.get('rope_parameters')
  if rope is not None:
    if not isinstance(rope, Mapping):
      raise HFConversionError(f'{where}.rope_parameters must be a dict, got {rope!r}')
    rope_type = rope.get('rope_type', rope.get('type', 'default'))
    if rope_type != 'default':
      raise HFConversionError(f'{where}.rope_parameters.rope_type={rope_type!r} is not supported (only "default")')
    rope_theta = float(rope.get('rope_theta', rope_theta))
  else:  # transformers 4.x configs
    if cfg.get('rope_scaling') is not None:
      raise HFConversionError(f'{where}.rope_scaling={cfg["rope_scaling"]!r} is not supported')
    rope_theta = float(cfg.get('rope_theta', rope_theta))
  num_layers = _get(cfg, 'num_hidden_layers', where)
  layer_types = cfg.get('layer_types')
  if layer_types is not None:
    bad = [t for t in layer_types if t not in _OUR_LAYER_TYPES]
    if bad:
      raise HFConversionError(
          f'{where}.layer_types contains {bad[0]!r}; supported: {sorted(_OUR_LAYER_TYPES)}')
    layer_types = tuple(_OUR_LAYER_TYPES[t] for t in layer_types)
  sliding_window = cfg.get('sliding_window')
  if sliding_window is None and layer_types is not None and 'sliding' in layer_types:
    raise HFConversionError(f'{where}.sliding_window is null but layer_types has sliding_attention layers')
  num_heads = _get(cfg, 'num_attention_heads', where)
  hidden = _get(cfg, 'hidden_size', where)
  try:
    return TransformerConfig(
        vocab_size=_get(cfg, 'vocab_size', where),
        embed_dim=hidden,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=_get(cfg, 'num_key_value_heads', where, num_heads),
        head_dim=_get(cfg, 'head_dim', where, hidden // num_heads),
        mlp_dim=_get(cfg, 'intermediate_size', where),
        query_pre_attn_scalar=float(_get(cfg, 'query_pre_attn_scalar', where)),
        attn_logits_soft_cap=cfg.get('attn_logit_softcapping'),
        final_logit_soft_cap=cfg.get('final_logit_softcapping'),
        sliding_window=sliding_window,
        layer_types=layer_types,
        rope_theta=rope_theta,
        rms_norm_eps=float(cfg.get('rms_norm_eps', 1e-6)),
        dropout_rate=float(dropout_rate),
        param_dtype=param_dtype,
    )
  except ValueError as e:  # TransformerConfig names its field; say where it came from
    raise HFConversionError(f'{where}: {e}') from e


def config_from_hf(hf_config: Mapping[str, Any], *, param_dtype: str = 'float32') -> EncoderDecoderConfig:
  """The content of an HF T5Gemma `config.json` -> our `EncoderDecoderConfig`.

  Raises HFConversionError naming the field for anything we do not compute the same way.
  """
  model_type = hf_config.get('model_type')
  if model_type != 't5gemma':
    raise HFConversionError(f'config.json model_type={model_type!r}, expected "t5gemma"')
  if hf_config.get('is_encoder_decoder') is False:
    raise HFConversionError('config.json is_encoder_decoder=false (encoder-only T5Gemma) is not supported here')
  if hf_config.get('tie_word_embeddings') is False:
    raise HFConversionError('config.json tie_word_embeddings=false is not supported (tied output embedding)')
  if float(hf_config.get('attention_dropout') or 0.0) != 0.0:
    raise HFConversionError(f'config.json attention_dropout={hf_config["attention_dropout"]} is not supported')
  for side in ('encoder', 'decoder'):
    if side not in hf_config:
      raise HFConversionError(f'config.json has no {side!r} sub-config')
  dropout = float(hf_config.get('dropout_rate') or 0.0)
  enc = _module_config_from_hf(hf_config['encoder'], 'encoder', dropout_rate=dropout, param_dtype=param_dtype)
  dec = _module_config_from_hf(hf_config['decoder'], 'decoder', dropout_rate=dropout, param_dtype=param_dtype)
  if enc.vocab_size != dec.vocab_size:
    raise HFConversionError(f'encoder.vocab_size={enc.vocab_size} != decoder.vocab_size={dec.vocab_size}')
  cross = hf_config['decoder'].get('cross_attention_hidden_size')
  if cross is not None and cross != enc.embed_dim:
    raise HFConversionError(
        f'decoder.cross_attention_hidden_size={cross} != encoder.hidden_size={enc.embed_dim}')
  return EncoderDecoderConfig(encoder=enc, decoder=dec)


# --------------------------------------------------------------------------------------------------
# Tensors.


def _unbox(params: Any) -> Any:
  """Plain arrays from a param tree that may hold flax `Partitioned` boxes."""
  if hasattr(params, 'unbox') and hasattr(params, 'names'):
    return params.unbox()
  if isinstance(params, Mapping):
    return {k: _unbox(v) for k, v in params.items()}
  return params


def _layer_map(side: str, i: int, cfg: TransformerConfig, *, cross: bool,
               kv_in: Optional[int] = None) -> Iterable[Tuple[Tuple[str, ...], str, str, Tuple[int, ...]]]:
  """(our path, HF name, kind, our shape) for every tensor of layer i."""
  d, h, k, dh, f = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  ours = (side, f'layer_{i}')
  hf = f'model.{side}.layers.{i}.'
  attns = [('self_attn', d)] + ([('cross_attn', kv_in)] if cross else [])
  for name, width in attns:
    yield ours + (name, 'q_proj', 'kernel'), hf + f'{name}.q_proj.weight', 'in_heads', (d, h, dh)
    yield ours + (name, 'k_proj', 'kernel'), hf + f'{name}.k_proj.weight', 'in_heads', (width, k, dh)
    yield ours + (name, 'v_proj', 'kernel'), hf + f'{name}.v_proj.weight', 'in_heads', (width, k, dh)
    yield ours + (name, 'o_proj', 'kernel'), hf + f'{name}.o_proj.weight', 'heads_out', (h, dh, d)
  for proj, shape in (('gate_proj', (d, f)), ('up_proj', (d, f)), ('down_proj', (f, d))):
    yield ours + ('mlp', proj, 'kernel'), hf + f'mlp.{proj}.weight', 'dense', shape
  norms = dict(_NORMS, **(_CROSS_NORMS if cross else {}))
  for our_norm, hf_norm in norms.items():
    yield ours + (our_norm, 'scale'), hf + f'{hf_norm}.weight', 'vector', (d,)


def tensor_map(config: EncoderDecoderConfig) -> Iterable[Tuple[Tuple[str, ...], str, str, Tuple[int, ...]]]:
  """Every (our param path, HF tensor name, kind, our shape) of an `EncoderDecoder`."""
  for side, cfg in (('encoder', config.encoder), ('decoder', config.decoder)):
    yield (side, 'embedder', 'embedding'), f'model.{side}.embed_tokens.weight', 'vector', (cfg.vocab_size, cfg.embed_dim)
    for i in range(cfg.num_layers):
      yield from _layer_map(side, i, cfg, cross=side == 'decoder', kv_in=config.encoder.embed_dim)
    yield (side, 'final_norm', 'scale'), f'model.{side}.norm.weight', 'vector', (cfg.embed_dim,)


def _to_hf(x: np.ndarray, kind: str) -> np.ndarray:
  if kind == 'vector':
    return x
  if kind == 'in_heads':  # [D_in, N, Dh] -> [N*Dh, D_in]
    return x.reshape(x.shape[0], -1).T
  if kind == 'heads_out':  # [H, Dh, D] -> [D, H*Dh]
    return x.reshape(-1, x.shape[-1]).T
  return x.T  # dense [in, out] -> [out, in]


def _hf_shape(shape: Tuple[int, ...], kind: str) -> Tuple[int, ...]:
  if kind == 'vector':
    return tuple(shape)
  if kind == 'in_heads':
    return (shape[1] * shape[2], shape[0])
  if kind == 'heads_out':
    return (shape[2], shape[0] * shape[1])
  return (shape[1], shape[0])


def _from_hf(x: np.ndarray, kind: str, shape: Tuple[int, ...]) -> np.ndarray:
  if kind == 'vector':
    return x
  if kind == 'in_heads':
    return x.T.reshape(shape)
  if kind == 'heads_out':
    return x.T.reshape(shape)
  return x.T


def _lookup(tree: Mapping[str, Any], path: Tuple[str, ...]) -> Any:
  node = tree
  for i, key in enumerate(path):
    if not isinstance(node, Mapping) or key not in node:
      raise HFConversionError(f'parameter {"/".join(path)} is missing (no {key!r} under {"/".join(path[:i]) or "root"})')
    node = node[key]
  return node


def params_to_hf(params: Mapping[str, Any], config: EncoderDecoderConfig) -> Dict[str, np.ndarray]:
  """Our `EncoderDecoder` params (plain or partitioned, jax or numpy, unrolled or scanned) -> HF
  tensors (numpy, same dtype)."""
  params = _unbox(params)
  if 'params' in params and 'encoder' not in params:
    params = params['params']
  # Scanned stacks (`scan_layers`) are unrolled on the host (HF numbers the layers).
  params = scan_layout.unrolled(jax.tree_util.tree_map(np.asarray, params))
  out = {}
  for path, name, kind, shape in tensor_map(config):
    value = np.asarray(_lookup(params, path))
    if tuple(value.shape) != tuple(shape):
      raise HFConversionError(f'parameter {"/".join(path)} has shape {tuple(value.shape)}, the config '
                              f'expects {tuple(shape)}')
    out[name] = np.ascontiguousarray(_to_hf(value, kind))
  return out


def params_from_hf(tensors: Mapping[str, Any], config: EncoderDecoderConfig) -> Dict[str, Any]:
  """HF T5Gemma tensors (name -> array) -> our `EncoderDecoder` params (nested dict of numpy, in
  the layout `config` asks for: unrolled, or scanned with `scan_layers`).

  Raises HFConversionError naming the tensor if one is missing, has the wrong shape, or is not
  part of a T5Gemma model we can compute (unknown names; an untied `lm_head.out_proj.weight`).
  """
  expected = list(tensor_map(config))
  names = {name for _, name, _, _ in expected}
  params: Dict[str, Any] = {}
  for path, name, kind, shape in expected:
    if name not in tensors:
      raise HFConversionError(f'tensor {name} is missing from the checkpoint')
    value = np.asarray(tensors[name])
    want = _hf_shape(shape, kind)
    if tuple(value.shape) != want:
      raise HFConversionError(f'tensor {name} has shape {tuple(value.shape)}, config.json implies {want}')
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.ascontiguousarray(_from_hf(value, kind, shape))
  lm_head = 'lm_head.out_proj.weight'
  if lm_head in tensors:
    if not np.array_equal(np.asarray(tensors[lm_head]), np.asarray(tensors['model.decoder.embed_tokens.weight'])):
      raise HFConversionError(f'tensor {lm_head} differs from model.decoder.embed_tokens.weight; '
                              'untied output embeddings are not supported')
    names.add(lm_head)
  extra = sorted(set(tensors) - names)
  if extra:
    raise HFConversionError(f'unexpected tensor {extra[0]} in the checkpoint ({len(extra)} unexpected in all); '
                            'does config.json match the weights?')
  return scan_layout.for_config(params, config)


# --------------------------------------------------------------------------------------------------
# Files.


def _read_tensors(path: str) -> Dict[str, Any]:
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  index = os.path.join(path, INDEX_FILE)
  single = os.path.join(path, WEIGHTS_FILE)
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f).get('weight_map')
    if not isinstance(weight_map, dict):
      raise HFConversionError(f'{index} has no "weight_map"')
    files = sorted(set(weight_map.values()))
  elif os.path.exists(single):
    files = [WEIGHTS_FILE]
  else:
    raise HFConversionError(f'no {WEIGHTS_FILE} or {INDEX_FILE} in {path}')
  tensors = {}
  for name in files:
    file_path = os.path.join(path, name)
    if not os.path.exists(file_path):
      raise HFConversionError(f'weight file {file_path} (listed in {INDEX_FILE}) is missing')
    # framework='np' reads bfloat16 as ml_dtypes.bfloat16 (host memory only, no device copies).
    with safe_open(file_path, framework='np') as f:
      for key in f.keys():
        tensors[key] = np.asarray(f.get_tensor(key))
  return tensors


def read_config(path: str) -> Dict[str, Any]:
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isdir(path):
    raise HFConversionError(f'HF checkpoint directory {path} does not exist')
  if not os.path.exists(config_path):
    raise HFConversionError(f'{config_path} is missing (not an HF checkpoint directory?)')
  with open(config_path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise HFConversionError(f'{config_path} is not valid JSON: {e}') from e


def import_t5gemma(path: str, *, param_dtype: str = 'float32') -> Tuple[EncoderDecoderConfig, Dict[str, Any]]:
  """Reads an HF T5Gemma checkpoint directory -> (EncoderDecoderConfig, params as numpy in param_dtype)."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top  (ships with jax; numpy name for bfloat16)
  config = config_from_hf(read_config(path), param_dtype=param_dtype)
  tensors = _read_tensors(path)
  params = params_from_hf(tensors, config)
  dtype = np.dtype(ml_dtypes.bfloat16) if param_dtype == 'bfloat16' else np.dtype(param_dtype)

  def cast(tree):
    if isinstance(tree, dict):
      return {k: cast(v) for k, v in tree.items()}
    return tree if tree.dtype == dtype else tree.astype(dtype)

  return config, cast(params)


def export_t5gemma(params: Mapping[str, Any], config: EncoderDecoderConfig, out_dir: str, *,
                   dtype: Optional[str] = None, max_shard_size: Any = None) -> Dict[str, Any]:
  """Writes `config.json` + safetensors that `T5GemmaForConditionalGeneration.from_pretrained` loads.

  `dtype` None keeps the params' dtype; 'float32' / 'bfloat16' converts. `max_shard_size` (e.g.
  '5GB') splits the weights into shards with an index, as `save_pretrained` does. Returns the paths.
  Arrays are converted on the host (numpy), never copied to an accelerator.
  """
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  hf_config = config_to_hf(config)
  tensors = params_to_hf(params, config)
  if dtype is not None:
    if dtype not in ('float32', 'bfloat16'):
      raise HFConversionError(f'export dtype must be "float32" or "bfloat16", got {dtype!r}')
    target = np.dtype(ml_dtypes.bfloat16) if dtype == 'bfloat16' else np.dtype(np.float32)
    tensors = {k: v if v.dtype == target else v.astype(target) for k, v in tensors.items()}
  dtypes = {str(v.dtype) for v in tensors.values()}
  if not dtypes <= {'float32', 'bfloat16'}:
    raise HFConversionError(f'cannot export params of dtype {sorted(dtypes)}; pass dtype="float32"')
  hf_config['dtype'] = 'bfloat16' if dtypes == {'bfloat16'} else 'float32'
  os.makedirs(out_dir, exist_ok=True)
  try:
    weights = safetensors_files.write_weights(tensors, out_dir, max_shard_size)
  except safetensors_files.ShardSizeError as e:
    raise HFConversionError(str(e)) from e
  config_path = os.path.join(out_dir, CONFIG_FILE)
  with open(config_path, 'w') as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  return {'config': config_path, 'weights': weights}
