r"""Entry point: `python -m trainer.train --gin_file=MODEL.gin --gin_file=RUN.gin --gin.X=Y`.

Example (tiny model, on-the-fly seqio pipeline, CPU):

  python -m trainer.train --module_import=tasks \
    --gin_file=gin/models/gemma2_tiny.gin --gin_file=gin/runs/pretrain.gin \
    --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'my_task'" \
    --gin.TASK_FEATURE_LENGTHS="{'targets': 128}" --gin.TRAIN_STEPS=100 --gin.BATCH_SIZE=8

The gin files configure `trainer.training.loop.train` (see gin/runs/pretrain.gin); this module only parses
flags, starts multi-host JAX when asked (`--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`, or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment
variables) and calls the configured `train()`. Exit status: 0 done or interrupted with a checkpoint
saved, 1 training diverged (NaN/Inf), 2 bad configuration (one-line message).
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import gin  # pylint: disable=g-import-not-at-top

from trainer import gin_utils  # pylint: disable=g-import-not-at-top

EXTRA_FLAGS = ('coordinator_address', 'num_processes', 'process_id')


def main(flags: gin_utils.Flags) -> int:
  from trainer.training import partitioning  # pylint: disable=g-import-not-at-top
  from trainer.training import loop as trainer  # pylint: disable=g-import-not-at-top
  extra = flags.extra
  partitioning.initialize_distributed(
      coordinator_address=extra.get('coordinator_address'),
      num_processes=int(extra['num_processes']) if 'num_processes' in extra else None,
      process_id=int(extra['process_id']) if 'process_id' in extra else None)
  try:
    train_fn = gin.get_configurable(trainer.train)
  except ValueError as e:
    raise gin_utils.ConfigError(
        'no gin file configures trainer.train (add --gin_file=gin/runs/pretrain.gin)') from e
  try:
    model_dir = gin.query_parameter('%MODEL_DIR')
  except ValueError:
    model_dir = None
  if isinstance(model_dir, str) and jax_process_index() == 0:
    # The full configuration next to the checkpoints (T5X writes config.gin the same way).
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, 'config.gin'), 'w', encoding='utf-8') as f:
      f.write(gin.config_str())
  try:
    result = train_fn()
  except trainer.TrainingDivergedError as e:
    print(f'train: {e}', file=sys.stderr)
    return 1
  status = 'interrupted, checkpoint saved' if result.interrupted else 'done'
  print(f'train: {status} at step {result.step}', flush=True)
  return 0


def jax_process_index() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index()


def run(argv=None) -> int:
  # TensorFlow (seqio) first, with its native start-up noise silenced, before tasks modules load.
  from trainer.training import data  # pylint: disable=g-import-not-at-top,unused-import
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.ERROR)
  return gin_utils.run(main, argv, extra_flags=EXTRA_FLAGS, program='train')


if __name__ == '__main__':
  sys.exit(run())
