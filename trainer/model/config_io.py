"""Model configs as JSON: `model_config.json`, written beside every checkpoint the trainer makes.

A decoder-only model's file holds its `TransformerConfig` fields; an encoder-decoder's holds
`{"encoder": {...}, "decoder": {...}}`, optionally with "teacher" (the distillation teacher's
fields) and "adapted_from" (what `trainer.adapt` built it from):

  {"encoder": {"vocab_size": 256000, "embed_dim": 2304, ...}, "decoder": {...},
   "adapted_from": {"decoder_only": "/ckpt/gemma-2-2b", "encoder_from": null, ...}}
"""
import dataclasses
import json
import os
from typing import Any, Dict, Mapping, Optional, Union

from trainer.model.config import EncoderDecoderConfig, TransformerConfig

MODEL_CONFIG_FILE = 'model_config.json'
ModelConfig = Union[TransformerConfig, EncoderDecoderConfig]


class ConfigFileError(ValueError):
  """A bad or missing model config file; the message names the file and the field."""


def config_to_dict(config: TransformerConfig) -> Dict[str, Any]:
  out = dataclasses.asdict(config)
  if out['layer_types'] is not None:
    out['layer_types'] = list(out['layer_types'])
  return out


def model_config_to_dict(config: ModelConfig) -> Dict[str, Any]:
  if isinstance(config, EncoderDecoderConfig):
    out = {'encoder': config_to_dict(config.encoder), 'decoder': config_to_dict(config.decoder)}
    if config.merged_attention:  # written only when set: Gemma 2 files stay as they were
      out['merged_attention'] = True
    if config.causal_encoder:
      out['causal_encoder'] = True
    return out
  return config_to_dict(config)


def transformer_config_from_dict(d: Mapping[str, Any], where: str) -> TransformerConfig:
  if not isinstance(d, Mapping):
    raise ConfigFileError(f'{where}: expected a JSON object of TransformerConfig fields, got '
                          f'{type(d).__name__}')
  names = {f.name for f in dataclasses.fields(TransformerConfig)}
  unknown = sorted(set(d) - names)
  if unknown:
    raise ConfigFileError(f'{where}: unknown TransformerConfig field {unknown[0]!r}')
  try:
    return TransformerConfig(**d)
  except (TypeError, ValueError) as e:
    raise ConfigFileError(f'{where}: {e}') from e


def read_json(path: str) -> Dict[str, Any]:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ConfigFileError(f'{path} is not valid JSON: {e}') from e


def write_model_config(config: ModelConfig, path: str, *,
                       extra: Optional[Mapping[str, Any]] = None) -> str:
  """Writes `config` (and `extra` top-level entries) to `path` (a file, or a directory)."""
  if os.path.isdir(path):
    path = os.path.join(path, MODEL_CONFIG_FILE)
  content = model_config_to_dict(config)
  content.update(extra or {})
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(content, f, indent=2, sort_keys=True)
  return path


def load_model_config(path: str) -> ModelConfig:
  """A `model_config.json` (a file, or a directory holding one) -> its config."""
  if os.path.isdir(path):
    path = os.path.join(path, MODEL_CONFIG_FILE)
  if not os.path.isfile(path):
    raise ConfigFileError(f'{path} not found (written by python -m trainer.adapt)')
  d = read_json(path)
  if 'encoder' in d or 'decoder' in d:
    for side in ('encoder', 'decoder'):
      if side not in d:
        raise ConfigFileError(f'{path}: no {side!r} config')
    return EncoderDecoderConfig(
        encoder=transformer_config_from_dict(d['encoder'], f'{path}:encoder'),
        decoder=transformer_config_from_dict(d['decoder'], f'{path}:decoder'),
        merged_attention=bool(d.get('merged_attention', False)),
        causal_encoder=bool(d.get('causal_encoder', False)))
  return transformer_config_from_dict({k: v for k, v in d.items() if k != 'adapted_from'}, path)


def load_encoder_decoder_config(path: str) -> EncoderDecoderConfig:
  config = load_model_config(path)
  if not isinstance(config, EncoderDecoderConfig):
    raise ConfigFileError(f'{path}: a decoder-only config; an encoder-decoder one is needed')
  return config


def load_teacher_config(path: str) -> TransformerConfig:
  """The distillation teacher's config recorded in an adapted checkpoint's `model_config.json`."""
  if os.path.isdir(path):
    path = os.path.join(path, MODEL_CONFIG_FILE)
  d = read_json(path)
  if 'teacher' not in d:
    raise ConfigFileError(f'{path}: no teacher config')
  return transformer_config_from_dict(d['teacher'], f'{path}:teacher')


def find_config_file(path: str) -> Optional[str]:
  """`model_config.json` in `path` or up to three parents (step dir -> checkpoints -> MODEL_DIR)."""
  here = os.path.abspath(path)
  for _ in range(4):
    candidate = os.path.join(here, MODEL_CONFIG_FILE)
    if os.path.isfile(candidate):
      return candidate
    here = os.path.dirname(here)
  return None
