r"""Entry point: decoder-only Gemma 2 checkpoint(s) -> T5Gemma encoder-decoder params; a Gemma 3
checkpoint -> T5Gemma 2 params (merged attention, tied embedding; balanced only).

  python -m trainer.adapt --decoder_only=/ckpt/gemma-2-2b --output=/tmp/t5gemma-2b-2b
  python -m trainer.adapt --decoder_only=/ckpt/gemma-2-2b --encoder_from=/ckpt/gemma-2-9b \
      --output=/tmp/t5gemma-9b-2b

Writes an orbax params checkpoint that `train(init_checkpoint=...)` reads, plus the resulting
`EncoderDecoderConfig` as JSON next to it (the adaptation: `trainer.adaptation.adapt`).

A source PATH is an HF Gemma 2 (or Gemma 3: `Gemma3ForCausalLM`) checkpoint directory
(config.json + *.safetensors) or a trainer
orbax checkpoint (a run's MODEL_DIR / checkpoints dir / step dir, or a params-only dir) together
with its `TransformerConfig`: `model_config.json` in the directory (or a parent), or
`--decoder_only_config=FILE` / `--encoder_from_config=FILE` (JSON, or a gin model file such as
gin/models/gemma2_tiny.gin with `--gin.NAME=VALUE` bindings).

Output layout:
  OUTPUT/params/             orbax params checkpoint ({'encoder': ..., 'decoder': ...})
  OUTPUT/model_config.json   {"encoder": {TransformerConfig fields}, "decoder": {...},
                              "adapted_from": {...}}
Exit status 0 on success, 2 with a one-line message on bad input.
"""
import os
import sys
from typing import Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import flags  # pylint: disable=g-import-not-at-top

from tasks import cli  # pylint: disable=g-import-not-at-top
from trainer import gin_flags  # pylint: disable=g-import-not-at-top
from trainer import host_malloc  # pylint: disable=g-import-not-at-top
from trainer.adaptation import adapt as adapt_lib  # pylint: disable=g-import-not-at-top
from trainer.model import config_io  # pylint: disable=g-import-not-at-top
from trainer.model.config import TransformerConfig  # pylint: disable=g-import-not-at-top

_DECODER_ONLY = flags.DEFINE_string(
    'decoder_only', None, 'Decoder-only source: HF Gemma 2 / Gemma 3 dir or trainer orbax '
    'checkpoint dir '
    '(required).', allow_override=True)
_ENCODER_FROM = flags.DEFINE_string(
    'encoder_from', None, 'Optional separate encoder source (unbalanced, e.g. 9B encoder + 2B '
    'decoder).', allow_override=True)
_OUTPUT = flags.DEFINE_string('output', None, 'Output directory (required).', allow_override=True)
_DECODER_ONLY_CONFIG = flags.DEFINE_string(
    'decoder_only_config', None, 'Config of an orbax --decoder_only source: TransformerConfig JSON '
    'or a gin model file (e.g. gin/models/gemma2_tiny.gin; bindings via --gin.NAME=VALUE).',
    allow_override=True)
_ENCODER_FROM_CONFIG = flags.DEFINE_string(
    'encoder_from_config', None, 'Config of an orbax --encoder_from source (JSON or gin model '
    'file).', allow_override=True)
_CROSS_ATTN_INIT = flags.DEFINE_enum('cross_attn_init', 'auto', adapt_lib.CROSS_ATTN_INITS,
                                     'Cross-attention init.', allow_override=True)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the random cross-attention init.',
                             allow_override=True)
_PARAM_DTYPE = flags.DEFINE_enum('param_dtype', None, ['float32', 'bfloat16'],
                                 "Cast params to this dtype (default: keep the sources').",
                                 allow_override=True)
_TEACHER = flags.DEFINE_enum('teacher', None, ['decoder', 'encoder'],
                             'Also store this source as params["teacher"] for distillation.',
                             allow_override=True)
_OVERWRITE = flags.DEFINE_boolean('overwrite', False, 'Replace an existing OUTPUT/params.',
                                  allow_override=True)
flags.declare_key_flag('gin_bindings')  # --gin.NAME=VALUE, for a gin model file as a config


def source_config(path: Optional[str], flag: str) -> Optional[TransformerConfig]:
  """--FLAG=PATH: a TransformerConfig JSON file or a gin model file (with --gin bindings)."""
  if path is None:
    return None
  if path.endswith('.gin'):
    config = gin_flags.config_from_gin([path], gin_flags.GIN_BINDINGS.value)
    if not isinstance(config, TransformerConfig):
      raise cli.UserError(f'--{flag}={path} configures an encoder-decoder model; the source must '
                          'be decoder-only')
    return config
  if not os.path.isfile(path):
    raise cli.UserError(f'--{flag}: config file {path} not found')
  try:
    config = config_io.load_model_config(path)
  except config_io.ConfigFileError as e:
    raise cli.UserError(str(e)) from e
  if not isinstance(config, TransformerConfig):
    raise cli.UserError(f'--{flag}={path} is an encoder-decoder config; the source must be '
                        'decoder-only')
  return config


def main(argv) -> int:
  if len(argv) > 1:
    raise cli.UserError(f'unexpected argument {argv[1]!r}')
  for name, holder in (('decoder_only', _DECODER_ONLY), ('output', _OUTPUT)):
    if not holder.value:
      raise cli.UserError(f'--{name} is required')
  cli.quiet_absl_logging()
  try:
    adapt_lib.adapt(
        decoder_only=_DECODER_ONLY.value, encoder_from=_ENCODER_FROM.value, output=_OUTPUT.value,
        decoder_only_config=source_config(_DECODER_ONLY_CONFIG.value, 'decoder_only_config'),
        encoder_config=source_config(_ENCODER_FROM_CONFIG.value, 'encoder_from_config'),
        cross_attn_init=_CROSS_ATTN_INIT.value, seed=_SEED.value, param_dtype=_PARAM_DTYPE.value,
        teacher=_TEACHER.value, overwrite=_OVERWRITE.value)
  except adapt_lib.AdaptError as e:
    raise cli.UserError(str(e)) from e
  return 0


def run(argv=None) -> int:
  """`argv`: the arguments without the program name (default: sys.argv[1:])."""
  host_malloc.tune_for_cpu()  # before TF/JAX start threads (trainer/host_malloc.py)
  args = gin_flags.rewrite_gin_args(sys.argv[1:] if argv is None else argv)
  flags.FLAGS.unparse_flags()
  return cli.run(main, program='adapt', argv=['adapt'] + args)


if __name__ == '__main__':
  sys.exit(run())
