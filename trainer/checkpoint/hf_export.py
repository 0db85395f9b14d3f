"""A trainer checkpoint -> a Hugging Face checkpoint (config.json + model.safetensors).

Encoder-decoder params are written as HF T5Gemma (`T5GemmaForConditionalGeneration`), or T5Gemma 2
(`T5Gemma2ForConditionalGeneration`) when the config has `merged_attention`; decoder-only params as
HF Gemma 2 (`Gemma2ForCausalLM`), or Gemma 3 (`Gemma3ForCausalLM`) when the config has
`use_qk_norm`. The checkpoint is read by `trainer.checkpoint.loader`;
its config is `model_config.json` found beside it unless one is given.
"""
import os
from typing import Any, Optional, Tuple

from trainer.checkpoint import hf_gemma2
from trainer.checkpoint import hf_t5gemma
from trainer.checkpoint import loader
from trainer.model import config_io
from trainer.model.config import EncoderDecoderConfig


class ExportError(ValueError):
  """Bad input to the export; the message names the flag, file or field."""


def export(*, checkpoint: str, output: str, config: Optional[config_io.ModelConfig] = None,
           dtype: Optional[str] = None, max_shard_size: Any = '5GB',
           log=print) -> Tuple[config_io.ModelConfig, str]:
  """Reads the checkpoint's params, checks them against the config, writes the HF checkpoint.

  Returns (config, HF class name written).
  """
  if not os.path.isdir(checkpoint):
    raise ExportError(f'--checkpoint={checkpoint}: no such directory')
  if config is None:
    found = config_io.find_config_file(checkpoint)
    if found is None:
      raise ExportError(f'no {config_io.MODEL_CONFIG_FILE} in {checkpoint} or its parents; pass '
                        '--config=FILE or the gin model file with --gin_file')
    try:
      config = config_io.load_model_config(found)
    except config_io.ConfigFileError as e:
      raise ExportError(str(e)) from e
  log(f'export_hf: reading params from {checkpoint}')
  try:
    _, params = loader.load_checkpoint(checkpoint, config=config)
  except loader.CheckpointError as e:
    raise ExportError(str(e)) from e
  if isinstance(config, EncoderDecoderConfig):
    if 'encoder' not in params or 'decoder' not in params:
      raise ExportError(f'{checkpoint} holds decoder-only params (top-level keys {sorted(params)}) '
                        'but the config is encoder-decoder')
    if config.merged_attention:
      from trainer.checkpoint import hf_t5gemma2  # pylint: disable=g-import-not-at-top
      try:
        hf_t5gemma2.export_encoder_decoder(params, config, output, dtype=dtype,
                                           max_shard_size=max_shard_size)
      except ValueError as e:
        raise ExportError(str(e)) from e
      kind = 'T5Gemma2ForConditionalGeneration'
    else:
      try:
        hf_t5gemma.export_t5gemma(params, config, output, dtype=dtype,
                                  max_shard_size=max_shard_size)
      except hf_t5gemma.HFConversionError as e:
        raise ExportError(str(e)) from e
      kind = 'T5GemmaForConditionalGeneration'
  else:
    if 'encoder' in params:
      raise ExportError(f'{checkpoint} holds encoder-decoder params but the config is decoder-only')
    try:
      loader.check_decoder_params(params, config, what=checkpoint)
      if config.use_qk_norm:
        from trainer.checkpoint import hf_gemma3  # pylint: disable=g-import-not-at-top
        hf_gemma3.export_decoder(params, config, output, dtype=dtype,
                                 max_shard_size=max_shard_size)
      else:
        hf_gemma2.export_decoder(params, config, output, dtype=dtype,
                                 max_shard_size=max_shard_size)
    except ValueError as e:
      raise ExportError(str(e)) from e
    kind = 'Gemma3ForCausalLM' if config.use_qk_norm else 'Gemma2ForCausalLM'
  log(f'export_hf: wrote {kind} checkpoint to {output}')
  return config, kind
