r"""Entry point: a trainer checkpoint -> a Hugging Face checkpoint (config.json + model.safetensors).

  python -m trainer.export_hf --checkpoint=/tmp/run --output=/tmp/run_hf

`--checkpoint` is a trainer run's MODEL_DIR (latest step), its `checkpoints/` dir, one step dir, or a
params-only dir such as `python -m trainer.adapt`'s output. The model's shapes come from
`model_config.json` found in that directory or one of its parents (`trainer.adapt` writes it, and
so does training), or from `--config=FILE` (same JSON), or from the gin model file the run used
(`--gin_file=gin/models/t5gemma_2b_2b.gin [--gin.VOCAB_SIZE=...]`).

Encoder-decoder params are written as HF T5Gemma (`T5GemmaForConditionalGeneration`), decoder-only
params as HF Gemma 2 (`Gemma2ForCausalLM`). `--dtype=bfloat16` converts; default keeps the params'
dtype. Weights over `--max_shard_size` (default 5GB) are sharded with an index, as `save_pretrained`.
Exit status 0 on success, 2 with a one-line message on bad input.
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import flags  # pylint: disable=g-import-not-at-top

from tasks import cli  # pylint: disable=g-import-not-at-top
from trainer import gin_flags  # pylint: disable=g-import-not-at-top
from trainer.checkpoint import hf_export  # pylint: disable=g-import-not-at-top
from trainer.model import config_io  # pylint: disable=g-import-not-at-top

_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'MODEL_DIR, checkpoints dir, step dir or params dir (required).',
    allow_override=True)
_OUTPUT = flags.DEFINE_string('output', None, 'Output directory for config.json + '
                              'model.safetensors (required).', allow_override=True)
_CONFIG = flags.DEFINE_string('config', None, 'model_config.json to use (default: found beside '
                              'the checkpoint).', allow_override=True)
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16'], 'Convert the weights to this.',
                           allow_override=True)
_MAX_SHARD_SIZE = flags.DEFINE_string(
    'max_shard_size', '5GB', 'Split the weights into shards of at most this size (as '
    'save_pretrained).', allow_override=True)
flags.declare_key_flag('gin_file')
flags.declare_key_flag('gin_bindings')


def model_config():
  """The config from --gin_file (+ --gin bindings) or --config; None: found beside the checkpoint."""
  if gin_flags.GIN_FILE.value:
    return gin_flags.config_from_gin(gin_flags.GIN_FILE.value, gin_flags.GIN_BINDINGS.value)
  if _CONFIG.value is None:
    return None
  if not os.path.isfile(_CONFIG.value):
    raise cli.UserError(f'--config={_CONFIG.value}: no such file')
  try:
    return config_io.load_model_config(_CONFIG.value)
  except config_io.ConfigFileError as e:
    raise cli.UserError(str(e)) from e


def main(argv) -> int:
  if len(argv) > 1:
    raise cli.UserError(f'unexpected argument {argv[1]!r}')
  for name, holder in (('checkpoint', _CHECKPOINT), ('output', _OUTPUT)):
    if not holder.value:
      raise cli.UserError(f'--{name} is required')
  cli.quiet_absl_logging()
  try:
    hf_export.export(checkpoint=_CHECKPOINT.value, output=_OUTPUT.value, config=model_config(),
                     dtype=_DTYPE.value, max_shard_size=_MAX_SHARD_SIZE.value)
  except hf_export.ExportError as e:
    raise cli.UserError(str(e)) from e
  return 0


def run(argv=None) -> int:
  """`argv`: the arguments without the program name (default: sys.argv[1:])."""
  args = gin_flags.rewrite_gin_args(sys.argv[1:] if argv is None else argv)
  flags.FLAGS.unparse_flags()
  return cli.run(main, program='export_hf', argv=['export_hf'] + args)


if __name__ == '__main__':
  from tasks import cli as _cli  # pylint: disable=g-import-not-at-top
  _cli.exit_process(run())
