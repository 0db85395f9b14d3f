"""Evaluate a suite (e.g. all of GLUE) and print one table.

  from trainer.evaluation import suite
  suite.evaluate_suite(runs=[
      dict(model=t5gemma, checkpoint_path='/ft/rte', mixture_or_task_name='glue_rte_text_to_text',
           task_feature_lengths={'inputs': 256, 'targets': 8}),
      dict(model=encoder, checkpoint_path='/ft/cola', mixture_or_task_name='glue_cola_classification',
           task_feature_lengths={'inputs': 128}),
      ...])
  ->
  task                      metrics                          score
  ------------------------  -------------------------------  -----
  glue_cola_classification  accuracy=69.13, matthews_...     41.20
  glue_rte_text_to_text     accuracy=71.48                   71.48
  GLUE average (2 tasks)                                     56.34

Each run is the keyword arguments of `trainer.evaluation.evaluate.evaluate` (so one checkpoint per
task for fine-tuned encoders, or one generative checkpoint for every task); `defaults` fills what a
run leaves out. Each run still writes its own JSON file; the table goes to `stream` and is returned.
"""
import sys
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from trainer.evaluation import evaluate as evaluate_lib
from trainer.evaluation import seqio_eval


def evaluate_suite(*, runs: Sequence[Mapping[str, Any]],
                   defaults: Optional[Mapping[str, Any]] = None,
                   stream=None) -> Tuple[Dict[str, Dict[str, float]], str]:
  """Runs `evaluate` for each run; returns ({task: metrics}, table) and prints the table."""
  stream = stream or sys.stdout
  results: Dict[str, Dict[str, float]] = {}
  for run in runs:
    kwargs = dict(defaults or {})
    kwargs.update(run)
    kwargs.setdefault('stream', stream)
    result = evaluate_lib.evaluate(**kwargs)
    key = result['task']
    if result['split'] not in ('validation',):
      key = f'{key}:{result["split"]}'
    results[key] = dict(result['metrics'])
  table = seqio_eval.suite_table(results)
  print(table, file=stream, flush=True)
  return results, table
