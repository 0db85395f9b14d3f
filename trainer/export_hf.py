r"""Entry point: a trainer checkpoint -> a Hugging Face checkpoint (config.json + model.safetensors).

  python -m trainer.export_hf --checkpoint=/tmp/run --output=/tmp/run_hf

`--checkpoint` is a trainer run's MODEL_DIR (latest step), its `checkpoints/` dir, one step dir, or a
params-only dir such as `python -m trainer.adapt`'s output. The model's shapes come from
`model_config.json` found in that directory or one of its parents (`trainer.adapt` writes it, and
gin/runs/adapt.gin copies it into MODEL_DIR), or from `--config=FILE` (same JSON), or from the gin
model file the run used (`--gin_file=gin/models/t5gemma_2b_2b.gin [--gin.VOCAB_SIZE=...]`).

Encoder-decoder params are written as HF T5Gemma (`T5GemmaForConditionalGeneration`), decoder-only
params as HF Gemma 2 (`Gemma2ForCausalLM`). `--dtype=bfloat16` converts; default keeps the params'
dtype. Weights over `--max_shard_size` (default 5GB) are sharded with an index, as `save_pretrained`.
Exit status 0 on success, 2 with a one-line message on bad input.
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from typing import Any, Optional, Sequence, Tuple  # pylint: disable=g-import-not-at-top


class ExportError(ValueError):
  """Bad input to the export; the message names the flag, file or field."""


def load_model_config(checkpoint: str, *, config_path: Optional[str] = None,
                      gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = ()):
  """EncoderDecoderConfig or TransformerConfig for a checkpoint (see the module docstring)."""
  from trainer import adapt  # pylint: disable=g-import-not-at-top
  if gin_files:
    try:
      return adapt.config_from_gin(gin_files, gin_bindings)
    except adapt.AdaptError as e:
      raise ExportError(str(e)) from e
  if config_path is None:
    config_path = adapt._find_config_json(checkpoint)  # pylint: disable=protected-access
    if config_path is None:
      raise ExportError(f'no {adapt.MODEL_CONFIG_FILE} in {checkpoint} or its parents; pass --config=FILE '
                        'or the gin model file with --gin_file')
  if not os.path.isfile(config_path):
    raise ExportError(f'--config={config_path}: no such file')
  try:
    content = adapt._read_json(config_path)  # pylint: disable=protected-access
    if 'encoder' in content and 'decoder' in content:
      return adapt.load_encoder_decoder_config(config_path)
    return adapt._load_transformer_config(config_path)  # pylint: disable=protected-access
  except adapt.AdaptError as e:
    raise ExportError(str(e)) from e


def export(*, checkpoint: str, output: str, config_path: Optional[str] = None,
           gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = (),
           dtype: Optional[str] = None, max_shard_size: Any = '5GB', log=print) -> Tuple[Any, str]:
  """Reads the checkpoint's params, checks them against the config, writes the HF checkpoint."""
  from trainer import adapt  # pylint: disable=g-import-not-at-top
  from trainer.checkpoint import hf_gemma2  # pylint: disable=g-import-not-at-top
  from trainer.checkpoint import hf_t5gemma  # pylint: disable=g-import-not-at-top
  from trainer.model.config import EncoderDecoderConfig  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(checkpoint):
    raise ExportError(f'--checkpoint={checkpoint}: no such directory')
  config = load_model_config(checkpoint, config_path=config_path, gin_files=gin_files,
                             gin_bindings=gin_bindings)
  log(f'export_hf: reading params from {checkpoint}')
  try:
    params = adapt._restore_orbax_params(checkpoint)  # pylint: disable=protected-access
  except adapt.AdaptError as e:
    raise ExportError(str(e)) from e
  if isinstance(config, EncoderDecoderConfig):
    if 'encoder' not in params or 'decoder' not in params:
      raise ExportError(f'{checkpoint} holds decoder-only params (top-level keys {sorted(params)}) but '
                        'the config is encoder-decoder')
    try:
      hf_t5gemma.export_t5gemma(params, config, output, dtype=dtype, max_shard_size=max_shard_size)
    except hf_t5gemma.HFConversionError as e:
      raise ExportError(str(e)) from e
    kind = 'T5GemmaForConditionalGeneration'
  else:
    if 'encoder' in params:
      raise ExportError(f'{checkpoint} holds encoder-decoder params but the config is decoder-only')
    try:
      adapt.check_decoder_params(params, config, what=checkpoint)
      hf_gemma2.export_decoder(params, config, output, dtype=dtype, max_shard_size=max_shard_size)
    except ValueError as e:
      raise ExportError(str(e)) from e
    kind = 'Gemma2ForCausalLM'
  log(f'export_hf: wrote {kind} checkpoint to {output}')
  return config, kind


def main(argv=None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog='python -m trainer.export_hf',
                                   description='Trainer checkpoint -> HF T5Gemma / Gemma 2 checkpoint.')
  parser.add_argument('--checkpoint', required=True, help='MODEL_DIR, checkpoints dir, step dir or params dir')
  parser.add_argument('--output', required=True, help='output directory for config.json + model.safetensors')
  parser.add_argument('--config', default=None, help='model_config.json to use (default: found beside the checkpoint)')
  parser.add_argument('--gin_file', action='append', default=[], help='gin model file giving the config')
  parser.add_argument('--dtype', default=None, choices=('float32', 'bfloat16'))
  parser.add_argument('--max_shard_size', default='5GB',
                      help='split the weights into shards of at most this size (as save_pretrained)')
  # `--gin.NAME=VALUE` bindings (T5X style) are collected before argparse sees them.
  from trainer import gin_utils  # pylint: disable=g-import-not-at-top
  bindings, rest = gin_utils.split_gin_bindings(list(sys.argv[1:] if argv is None else argv))
  args = parser.parse_args(rest)
  gin_utils.quiet_absl_logging()
  try:
    export(checkpoint=args.checkpoint, output=args.output, config_path=args.config,
           gin_files=args.gin_file, gin_bindings=bindings, dtype=args.dtype,
           max_shard_size=args.max_shard_size)
  except ExportError as e:
    print(f'export_hf: error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
