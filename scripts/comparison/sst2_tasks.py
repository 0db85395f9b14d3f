"""The comparison's SST-2 tasks, registered from the environment: the `module_import` of its Beam
cache job, so every worker process registers the same tasks as the driver.

  GEMMA_ADAPT_COMPARE_SST2_DIR=<sst2_splits stage>/  GEMMA_ADAPT_VOCAB=<spm.model>
  -> glue_sst2cmp_text_to_text, glue_sst2cmp_classification (splits train / heldout / validation)
"""
import os

SST2_DIR_ENV = 'GEMMA_ADAPT_COMPARE_SST2_DIR'


def register_tasks():
  """Called by `tasks.cli.import_modules` after the import (as for `--module_import=tasks`)."""
  from scripts.comparison import corpus  # pylint: disable=g-import-not-at-top
  from tasks import vocab  # pylint: disable=g-import-not-at-top
  for env in (SST2_DIR_ENV, vocab.VOCAB_ENV):
    if not os.environ.get(env):
      from tasks import cli  # pylint: disable=g-import-not-at-top
      raise cli.UserError(f'scripts.comparison.sst2_tasks: ${env} is not set')
  return corpus.register_sst2(glue_dir=os.environ[SST2_DIR_ENV],
                              vocab_model=os.environ[vocab.VOCAB_ENV])
