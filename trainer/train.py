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

from absl import flags  # pylint: disable=g-import-not-at-top
import gin  # pylint: disable=g-import-not-at-top

from trainer import gin_flags  # pylint: disable=g-import-not-at-top
from trainer import host_malloc  # pylint: disable=g-import-not-at-top

_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None, 'Multi-host JAX: the coordinator HOST:PORT.', allow_override=True)
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-host JAX: number of processes.',
                                      allow_override=True)
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-host JAX: this process\'s index.',
                                   allow_override=True)
flags.adopt_module_key_flags(gin_flags)


def main(argv) -> int:
  del argv
  from trainer.training import partitioning  # pylint: disable=g-import-not-at-top
  from trainer.training import loop as trainer  # pylint: disable=g-import-not-at-top
  partitioning.initialize_distributed(coordinator_address=_COORDINATOR_ADDRESS.value,
                                      num_processes=_NUM_PROCESSES.value,
                                      process_id=_PROCESS_ID.value)
  train_fn = gin_flags.configured(
      trainer.train,
      hint='no gin file configures trainer.train (add --gin_file=gin/runs/pretrain.gin)')
  try:
    # The full configuration goes next to the checkpoints (as T5X's config.gin), written by the
    # loop once the run has started (a failed resume leaves the directory as it was).
    result = train_fn(gin_config=gin.config_str())
  except trainer.TrainingDivergedError as e:
    print(f'train: {e}', file=sys.stderr)
    return 1
  status = 'interrupted, checkpoint saved' if result.interrupted else 'done'
  print(f'train: {status} at step {result.step}', flush=True)
  return 0


def run(argv=None) -> int:
  """`argv`: the arguments without the program name (default: sys.argv[1:])."""
  host_malloc.tune_for_cpu()  # before TF/JAX start threads (trainer/host_malloc.py)
  # TensorFlow (seqio) first, with its native start-up noise silenced, before tasks modules load;
  # where it is not installed (GPU images), the Grain loader reads cached tasks without it.
  from trainer.training import data  # pylint: disable=g-import-not-at-top
  data.preload_tf()
  from tasks import cli  # pylint: disable=g-import-not-at-top
  cli.quiet_absl_logging()
  return gin_flags.run(main, argv=argv, program='train')


if __name__ == '__main__':
  from tasks import cli as _cli  # pylint: disable=g-import-not-at-top
  _cli.exit_process(run())
