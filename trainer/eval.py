r"""Entry point: evaluate a checkpoint (a task's metrics, or LM loss / perplexity) with gin.

  python -m trainer.eval --module_import=tasks \
    --gin_file=gin/models/gemma2_tiny.gin --gin_file=gin/runs/eval.gin \
    --gin.CHECKPOINT_PATH="'/tmp/ft'" --gin.MIXTURE_OR_TASK_NAME="'sst2'" ...

Modes (`EVAL_MODE` in gin, `mode=` here):
* 'task': the task's metrics on `split`.
  - Encoder classifiers (`trainer.training.encoder_models.EncoderClassifierModel`): the head's predictions
    (scoring 'classifier_head'); accuracy and F1 (classification; t5.evaluation.metrics), Pearson and
    Spearman (regression; t5.evaluation.metrics), MRR@10 (ranking, per `query_id`).
  - Generative models (decoder-only, encoder-decoder) on a text-to-text task: through seqio's
    `Evaluator`, which decodes the predicted ids, applies the task's postprocessor and its metric
    functions. Predictions come from greedy decoding (`scoring='greedy_decode'`) or label-word
    scoring (`scoring='label_words'`: the best of the task's label words by log-likelihood given the
    inputs; see trainer/evaluation/scoring.py). The output says which.
* 'lm': teacher-forced loss (nats per target token) and perplexity of the targets on a held-out
  split, through the model's own feature converter (unpacked), for decoder-only and encoder-decoder
  models.

Writes `OUTPUT_DIR/eval_<task>_<split>_<mode>_<scoring>.json` (OUTPUT_DIR defaults to
CHECKPOINT_PATH/eval; the metrics, the scoring method, counts, the checkpoint and step) and
TensorBoard summaries (tensorboardX) under `OUTPUT_DIR/tb/`, with tags
`eval/<task>/<scoring>/<metric>` at the checkpoint's step. `MIXTURE_OR_TASK_NAME` may be a list of
tasks: each is evaluated and one table (with the GLUE average for GLUE tasks) is printed. Every example of the split is used (no batch is
dropped; the last one is smaller).

The library is `trainer.evaluation.evaluate`; gin/runs/eval.gin configures its `evaluate()`.
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import flags  # pylint: disable=g-import-not-at-top

from trainer import gin_flags  # pylint: disable=g-import-not-at-top

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
  # TensorFlow (seqio) first, with its native start-up noise silenced (as trainer.train does).
  from trainer.training import data  # pylint: disable=g-import-not-at-top
  data.preload_tf()
  from tasks import cli  # pylint: disable=g-import-not-at-top
  cli.quiet_absl_logging()  # orbax's warnings are not the user's; errors come as one line
  return gin_flags.run(main, argv=argv, program='eval')


if __name__ == '__main__':
  from tasks import cli as _cli  # pylint: disable=g-import-not-at-top
  _cli.exit_process(run())
