r"""Entry point: generate with a checkpoint (T5X's infer.py; transformers' `generate`), with gin.

  python -m trainer.infer --gin_file=gin/runs/infer.gin \
    --gin.CHECKPOINT_PATH="'/ckpt/run'" --gin.INPUT_FILE="'in.jsonl'" \
    --gin.OUTPUT_FILE="'out.jsonl'" --gin.DECODE_METHOD="'greedy'"

A model gin file is optional: the model comes from the checkpoint (`model_config.json`, or an HF
Gemma 2 / T5Gemma `config.json`). Inputs: `INPUT_FILE` JSONL (`text` or `input_ids` per line) or a
registered task's `inputs` (`--module_import=tasks --gin.MIXTURE_OR_TASK_NAME="'sst2'"
--gin.SPLIT="'validation'"`). Text needs `VOCABULARY_PATH`. Methods: 'greedy' | 'sample'
(TEMPERATURE, TOP_K, TOP_P, SEED) | 'beam' (NUM_BEAMS, LENGTH_PENALTY = T5X's alpha). Layouts,
output format and resuming: `trainer.inference.infer`. Bad input: one line, exit 2.
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import flags  # pylint: disable=g-import-not-at-top

from trainer import gin_flags  # pylint: disable=g-import-not-at-top
from trainer import host_malloc  # pylint: disable=g-import-not-at-top

flags.adopt_module_key_flags(gin_flags)


def load_vocabulary(path):
  from tasks import vocab  # pylint: disable=g-import-not-at-top
  return vocab.get_vocabulary(path)


def read_task(name, split):
  """The task's preprocessed, tokenised `inputs` (seqio, no packing, no truncation)."""
  import seqio  # pylint: disable=g-import-not-at-top
  from tasks import cli  # pylint: disable=g-import-not-at-top
  try:
    task = seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise cli.UserError(f'MIXTURE_OR_TASK_NAME={name!r} is not registered (add '
                        '--module_import=tasks?)') from e
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False)
  for ex in ds.as_numpy_iterator():
    yield ex['inputs'].tolist()


def main(argv) -> int:
  del argv
  from trainer.inference import infer  # pylint: disable=g-import-not-at-top
  gin_flags.configured(
      infer.infer, hint='no gin file configures trainer.inference.infer.infer (add '
      '--gin_file=gin/runs/infer.gin)')(load_vocabulary=load_vocabulary, read_task=read_task)
  return 0


def run(argv=None) -> int:
  """`argv`: the arguments without the program name (default: sys.argv[1:])."""
  host_malloc.tune_for_cpu()  # before TF/JAX start threads (trainer/host_malloc.py)
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  return gin_flags.run(main, argv=argv, program='infer')


if __name__ == '__main__':
  sys.exit(run())
