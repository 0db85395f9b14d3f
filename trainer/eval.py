r"""Entry point: evaluate a checkpoint (a task's metrics, or LM loss / perplexity) with gin.

  python -m trainer.eval --module_import=tasks \
    --gin_file=gin/models/gemma2_tiny.gin --gin_file=gin/runs/eval.gin \
    --gin.CHECKPOINT_PATH="'/tmp/ft'" --gin.MIXTURE_OR_TASK_NAME="'sst2'" ...

EVAL_MODE 'task' gives the task's metrics (an encoder's head, or a generative model's greedy
decoding / label-word scoring through seqio's Evaluator); 'lm' gives teacher-forced loss and
perplexity. Writes `OUTPUT_DIR/eval_<task>_<split>_<mode>_<scoring>.json` and TensorBoard summaries
under `OUTPUT_DIR/tb/`; a list of tasks prints one table (with the GLUE average for GLUE tasks).
The modes, scorings and outputs are described in the library's docstring.

The library is `trainer.evaluation.evaluate`; gin/runs/eval.gin configures its `evaluate()`.
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import flags  # pylint: disable=g-import-not-at-top

from trainer import gin_flags  # pylint: disable=g-import-not-at-top
from trainer import host_malloc  # pylint: disable=g-import-not-at-top

flags.adopt_module_key_flags(gin_flags)


def main(argv) -> int:
  del argv
  import logging  # pylint: disable=g-import-not-at-top
  logging.getLogger('absl').setLevel(logging.ERROR)  # after flag parsing (it resets verbosity)
  from trainer.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  gin_flags.configured(
      evaluate.evaluate,
      hint='no gin file configures trainer.evaluation.evaluate.evaluate (add '
      '--gin_file=gin/runs/eval.gin)')()
  return 0


def run(argv=None) -> int:
  """`argv`: the arguments without the program name (default: sys.argv[1:])."""
  host_malloc.tune_for_cpu()  # before TF/JAX start threads (trainer/host_malloc.py)
  # TensorFlow (seqio) first, with its native start-up noise silenced (as trainer.train does).
  from trainer.training import data  # pylint: disable=g-import-not-at-top
  data.preload_tf()
  from tasks import cli  # pylint: disable=g-import-not-at-top
  cli.quiet_absl_logging()  # orbax's warnings are not the user's; errors come as one line
  return gin_flags.run(main, argv=argv, program='eval')


if __name__ == '__main__':
  from tasks import cli as _cli  # pylint: disable=g-import-not-at-top
  _cli.exit_process(run())
