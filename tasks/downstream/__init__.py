"""Downstream suites from local files: GLUE, SuperGLUE and MS MARCO-style passage ranking.

Modules: `glue` (GLUE's TSV files), `superglue` (SuperGLUE's JSONL files), `ranking` (MS MARCO's
passage-ranking TSV files), `pairs` (the text-to-text and encoder forms; sentence pairs), `rows`
(validated tables: bad data -> one line naming file and line), `metrics` (official metrics, GLUE
average and table; TF-free).

Register a whole suite from a data directory:
  from tasks import downstream
  downstream.register_glue_tasks(data_dir='/data/glue', vocabulary='/vocab/spm.model',
                                 benchmarks=downstream.glue.ALL)
  downstream.register_superglue_tasks(data_dir='/data/superglue', vocabulary=...)
  downstream.register_ranking_tasks(data_dir='/data/msmarco', vocabulary=...)

Importing this package loads no TensorFlow; registering does.
"""
from tasks.downstream import glue
from tasks.downstream import metrics
from tasks.downstream import rows
from tasks.downstream.glue import (BENCHMARKS, DEFAULT_GLUE_DIR, GLUE_DIR_ENV, SST2,
                                   GlueTsvBenchmark, default_glue_dir, register_glue_tasks)
from tasks.downstream.rows import DataError


def register_superglue_tasks(**kwargs):
  """See `tasks.downstream.superglue.register_superglue_tasks`."""
  from tasks.downstream import superglue  # pylint: disable=g-import-not-at-top
  return superglue.register_superglue_tasks(**kwargs)


def register_ranking_tasks(**kwargs):
  """See `tasks.downstream.ranking.register_ranking_tasks`."""
  from tasks.downstream import ranking  # pylint: disable=g-import-not-at-top
  return ranking.register_ranking_tasks(**kwargs)
