"""Any checkpoint path -> (config, params): the one loading path of the trainer.

A checkpoint path is one of
* a Hugging Face directory (config.json + *.safetensors): Gemma 2 (`hf_gemma2`), T5Gemma
  (`hf_t5gemma`), Gemma 3 text (`hf_gemma3`) or T5Gemma 2 (`hf_t5gemma2`); the config comes from
  its config.json;
* a trainer orbax checkpoint (`checkpoints.params_dir`: a run's MODEL_DIR, its checkpoints dir, one
  step dir, or a params-only dir), with its config from `model_config.json` in the directory or one
  of its parents (`trainer.model.config_io`), unless one is given.

`load_checkpoint` returns the params as stored (numpy); `load_decoder_only` checks and casts a
decoder-only source (adaptation); `restore_params` places params into a model's abstract params
(`train(init_checkpoint=...)`, evaluation).
"""
import dataclasses
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from trainer.checkpoint import checkpoints
from trainer.model import config_io
from trainer.model import scan_layout
from trainer.model.config import TransformerConfig


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or does not fit; the message names the path and tensor."""


def hf_model_type(path: str) -> Optional[str]:
  """config.json's model_type ('gemma2', 't5gemma', ...) for a Hugging Face directory, else None."""
  config_path = os.path.join(path, 'config.json')
  if not os.path.isfile(config_path):
    return None
  return config_io.read_json(config_path).get('model_type') or ''


def _load_hf(path: str, model_type: str, *, param_dtype: Optional[str] = None):
  if model_type == 'gemma2':
    from trainer.checkpoint import hf_gemma2  # pylint: disable=g-import-not-at-top
    return hf_gemma2.load_decoder(path, param_dtype=param_dtype)
  if model_type == 't5gemma':
    from trainer.checkpoint import hf_t5gemma  # pylint: disable=g-import-not-at-top
    return hf_t5gemma.import_t5gemma(path)
  if model_type in ('gemma3_text', 'gemma3'):  # 'gemma3' (multimodal) is refused with a message
    from trainer.checkpoint import hf_gemma3  # pylint: disable=g-import-not-at-top
    return hf_gemma3.load_decoder(path, param_dtype=param_dtype)
  if model_type == 't5gemma2':
    from trainer.checkpoint import hf_t5gemma2  # pylint: disable=g-import-not-at-top
    return hf_t5gemma2.load_encoder_decoder(path, param_dtype=param_dtype)
  raise CheckpointError(f'{path!r} is a Hugging Face checkpoint of model_type {model_type!r}; '
                        'supported: gemma2, t5gemma, gemma3_text, t5gemma2')


def load_checkpoint(path: str, *, config: Optional[config_io.ModelConfig] = None,
                    flag: str = 'checkpoint', param_dtype: Optional[str] = None):
  """(config or None, params as stored, numpy) of any checkpoint path (module docstring).

  `config` overrides the orbax checkpoint's `model_config.json`; None is returned for an orbax
  checkpoint without one. `param_dtype` is passed to the Gemma 2 import. `flag` names the path in
  errors (`--FLAG=PATH: ...`).
  """
  if not isinstance(path, str) or not path:
    raise CheckpointError(f'--{flag} must be a checkpoint directory, got {path!r}')
  if not os.path.isdir(path):
    raise CheckpointError(f'--{flag}={path}: no such directory')
  model_type = hf_model_type(path)
  if model_type is not None:
    try:
      return _load_hf(path, model_type, param_dtype=param_dtype)
    except ValueError as e:
      raise CheckpointError(f'--{flag}={path}: {e}') from e
  if config is None:
    found = config_io.find_config_file(path)
    config = config_io.load_model_config(found) if found else None
  try:
    params = checkpoints.read_params(path)
  except ValueError as e:
    raise CheckpointError(str(e)) from e
  return config, meta.unbox(params)


def _path_name(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def _expected_decoder_shapes(config: TransformerConfig) -> Dict[str, Tuple[int, ...]]:
  from trainer.model import transformer  # pylint: disable=g-import-not-at-top
  abstract = jax.eval_shape(lambda: transformer.Decoder(config).init(
      jax.random.PRNGKey(0), jnp.ones((1, 1), jnp.int32))['params'])
  return {_path_name(p): tuple(x.shape)
          for p, x in jax.tree_util.tree_flatten_with_path(meta.unbox(abstract))[0]}


def check_decoder_params(params: Mapping[str, Any], config: TransformerConfig, *, what: str) -> None:
  """Raises CheckpointError naming the first parameter missing, unexpected or of the wrong shape.

  Either layout is accepted (`scan_layout`): the check runs on the unrolled names.
  """
  want = _expected_decoder_shapes(dataclasses.replace(config, scan_layers=False))
  try:
    params = scan_layout.unrolled(params)
  except (ValueError, KeyError, IndexError) as e:
    raise CheckpointError(f'{what}: malformed scanned params: {e}') from e
  got = {_path_name(p): tuple(np.shape(x))
         for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  for name in sorted(set(want) | set(got)):
    if name not in got:
      raise CheckpointError(f'{what}: parameter {name} is missing')
    if name not in want:
      raise CheckpointError(f'{what}: unexpected parameter {name} for a decoder-only model')
    if got[name] != want[name]:
      raise CheckpointError(f'{what}: parameter {name} has shape {got[name]}, its config implies '
                            f'{want[name]}')


def load_decoder_only(path: str, *, config: Optional[TransformerConfig] = None,
                      param_dtype: Optional[str] = None,
                      flag: str = 'decoder_only') -> Tuple[TransformerConfig, Dict[str, Any]]:
  """A decoder-only source -> (TransformerConfig, params as numpy in the config's layout).

  Args:
    path: an HF Gemma 2 directory or a trainer orbax checkpoint directory.
    config: the TransformerConfig of an orbax source; default: its `model_config.json`.
    param_dtype: cast params (and the config's param_dtype) to this; default keeps them.
    flag: the command-line flag / gin binding that named `path` (for error messages).
  """
  is_hf = os.path.isdir(path) and hf_model_type(path) is not None
  if not is_hf and os.path.isdir(path) and config is None and not config_io.find_config_file(path):
    raise CheckpointError(
        f'--{flag}={path} is not an HF checkpoint (no config.json), and no '
        f'{config_io.MODEL_CONFIG_FILE} was found for this orbax checkpoint; pass its '
        f'TransformerConfig as JSON with --{flag}_config')
  loaded_config, params = load_checkpoint(path, config=config, flag=flag, param_dtype=param_dtype)
  if is_hf:
    if not isinstance(loaded_config, TransformerConfig):
      raise CheckpointError(f'--{flag}={path} is an encoder-decoder checkpoint; the source must be '
                            'decoder-only')
    return loaded_config, params
  if not isinstance(loaded_config, TransformerConfig):
    raise CheckpointError(f'--{flag}={path}: its config is an encoder-decoder config; the source '
                          'must be decoder-only')
  if 'encoder' in params or 'decoder' in params:
    raise CheckpointError(f'--{flag}={path} holds encoder-decoder params; the source must be '
                          'decoder-only')
  if param_dtype is not None:
    loaded_config = dataclasses.replace(loaded_config, param_dtype=param_dtype)
  check_decoder_params(params, loaded_config, what=f'--{flag}={path}')
  params = jax.tree_util.tree_map(
      lambda x: np.asarray(x).astype(loaded_config.parameter_dtype), params)
  return loaded_config, scan_layout.for_config(params, loaded_config)


def _place_like(path: str, params, abstract_params):
  """Imported (unrolled, numpy) params checked against and placed like the model's."""
  params = scan_layout.like(params, abstract_params)
  flat_abstract = dict(jax.tree_util.tree_flatten_with_path(abstract_params)[0])
  flat_params = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  names = lambda keys: sorted(jax.tree_util.keystr(k) for k in keys)
  if flat_abstract.keys() != flat_params.keys():
    missing = names(flat_abstract.keys() - flat_params.keys())[:5]
    extra = names(flat_params.keys() - flat_abstract.keys())[:5]
    raise CheckpointError(f'init_checkpoint: {path!r} does not fit this model: missing {missing}, '
                          f'unexpected {extra}')
  for key, want in flat_abstract.items():
    if tuple(flat_params[key].shape) != tuple(want.shape):
      raise CheckpointError(f'init_checkpoint: {path!r}: tensor {jax.tree_util.keystr(key)} has '
                            f'shape {tuple(flat_params[key].shape)}, the model wants '
                            f'{tuple(want.shape)}')
  return jax.tree_util.tree_map(
      lambda want, x: jax.device_put(np.asarray(x).astype(want.dtype), want.sharding),
      abstract_params, params)


def restore_params(path: str, abstract_params):
  """Params for a model from any checkpoint path (`train(init_checkpoint=...)`, evaluation).

  `abstract_params`: tree of `jax.ShapeDtypeStruct` (with `sharding`) giving the structure, dtypes
  and placement wanted; values are cast to those dtypes. Orbax checkpoints restore straight into
  those shardings; a Hugging Face directory is imported, checked and placed.
  """
  path = os.path.abspath(path) if isinstance(path, str) else path
  if isinstance(path, str) and os.path.isdir(path) and hf_model_type(path) is not None:
    _, params = load_checkpoint(path, flag='init_checkpoint')
    return _place_like(path, params, abstract_params)
  return checkpoints.restore_orbax_params(path, abstract_params)
