"""Official metrics of the downstream suites, by name, and the GLUE average / table (TF-free).

Metric functions are t5's (`t5.evaluation.metrics`, percents), looked up by the names a benchmark
declares:
  'accuracy' -> {'accuracy'}            'f1' -> {'f1'} (binary; invalid predictions count wrong)
  'mcc' -> {'matthews_corrcoef'}        'pearson' -> {'pearson_corrcoef'}
  'spearman' -> {'spearman_corrcoef'}   'f1_multiclass' -> {'mean_<C>class_f1'} (CB: C = 3)
GLUE score of a task = mean of its official metrics (MRPC/QQP: accuracy and F1, STS-B: Pearson
and Spearman, CoLA: MCC, others: accuracy); MNLI's matched and mismatched accuracies are averaged
into one MNLI score; the GLUE average is the unweighted mean over the tasks present (all nine for
the official figure), as the GLUE paper defines it.

  glue_table({'glue_cola_classification': {'matthews_corrcoef': 41.2}, ...}) -> one text table
"""
from typing import Callable, Dict, List, Mapping, Optional, Sequence

METRIC_KEYS = {'accuracy': ('accuracy',), 'f1': ('f1',), 'mcc': ('matthews_corrcoef',),
               'pearson': ('pearson_corrcoef',), 'spearman': ('spearman_corrcoef',)}

# GLUE benchmark -> the metric names of its official score.
GLUE_OFFICIAL = {
    'cola': ('mcc',), 'sst2': ('accuracy',), 'mrpc': ('accuracy', 'f1'),
    'stsb': ('pearson', 'spearman'), 'qqp': ('accuracy', 'f1'), 'mnli': ('accuracy',),
    'mnli_mismatched': ('accuracy',), 'qnli': ('accuracy',), 'rte': ('accuracy',),
    'wnli': ('accuracy',)}
GLUE_ORDER = ('cola', 'sst2', 'mrpc', 'stsb', 'qqp', 'mnli', 'mnli_mismatched', 'qnli', 'rte',
              'wnli')


def metric_fns(names: Sequence[str], *, num_classes: int = 2) -> List[Callable]:
  """t5 metric functions for metric names ('accuracy', 'f1', 'mcc', 'pearson', ...)."""
  from t5.evaluation import metrics as t5_metrics  # pylint: disable=g-import-not-at-top
  table = {
      'accuracy': t5_metrics.accuracy,
      'f1': t5_metrics.f1_score_with_invalid,
      'mcc': t5_metrics.sklearn_metrics_wrapper(
          'matthews_corrcoef', metric_post_process_fn=lambda x: 100 * x),
      'pearson': t5_metrics.pearson_corrcoef,
      'spearman': t5_metrics.spearman_corrcoef,
      'f1_multiclass': t5_metrics.mean_multiclass_f1(num_classes=num_classes),
  }
  unknown = [n for n in names if n not in table]
  if unknown:
    raise ValueError(f'unknown metric {unknown[0]!r} (known: {sorted(table)})')
  return [table[n] for n in names]


def benchmark_of(task_name: str) -> Optional[str]:
  """'glue_mnli_mismatched_text_to_text' -> 'mnli_mismatched'; None for a non-GLUE task."""
  if not task_name.startswith('glue_'):
    return None
  rest = task_name[len('glue_'):]
  for b in sorted(GLUE_OFFICIAL, key=len, reverse=True):
    if rest == b or rest.startswith(b + '_'):
      return b
  return None


def task_score(benchmark: str, metrics: Mapping[str, float]) -> float:
  """Mean of the benchmark's official metrics (KeyError naming the missing one)."""
  values = []
  for name in GLUE_OFFICIAL[benchmark]:
    for key in METRIC_KEYS[name]:
      if key not in metrics:
        raise KeyError(f'{benchmark}: metric {key!r} missing (have {sorted(metrics)})')
      values.append(float(metrics[key]))
  return sum(values) / len(values)


def glue_scores(results: Mapping[str, Mapping[str, float]]) -> Dict[str, float]:
  """Task name -> metrics  =>  {benchmark: score, ..., 'glue_average': mean over the tasks}.

  MNLI matched/mismatched become one 'mnli' score (their mean) in the average.
  """
  per = {}
  for task, metrics in results.items():
    b = benchmark_of(task)
    if b is not None:
      per[b] = task_score(b, metrics)
  tasks_scores = dict(per)
  if 'mnli_mismatched' in tasks_scores:
    mm = tasks_scores.pop('mnli_mismatched')
    tasks_scores['mnli'] = (tasks_scores['mnli'] + mm) / 2 if 'mnli' in tasks_scores else mm
  out = dict(per)
  if tasks_scores:
    out['glue_average'] = sum(tasks_scores.values()) / len(tasks_scores)
  return out


def glue_table(results: Mapping[str, Mapping[str, float]]) -> str:
  """One text table: a row per task (its metrics and GLUE score) and the GLUE average."""
  scores = glue_scores(results)
  rows = [('task', 'metrics', 'score')]
  order = {b: i for i, b in enumerate(GLUE_ORDER)}
  for task in sorted(results, key=lambda t: (order.get(benchmark_of(t) or '', 99), t)):
    b = benchmark_of(task)
    shown = ', '.join(f'{k}={v:.2f}' for k, v in sorted(results[task].items())
                      if isinstance(v, (int, float)))
    rows.append((task, shown, f'{scores[b]:.2f}' if b in scores else '-'))
  if 'glue_average' in scores:
    n = len({('mnli' if benchmark_of(t) == 'mnli_mismatched' else benchmark_of(t))
             for t in results if benchmark_of(t)})
    rows.append((f'GLUE average ({n} task{"s" if n != 1 else ""})', '',
                 f'{scores["glue_average"]:.2f}'))
  widths = [max(len(r[i]) for r in rows) for i in range(3)]
  lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
  lines.insert(1, '  '.join('-' * w for w in widths))
  return '\n'.join(lines)


def recall_at_k(query_ids: Sequence[int], scores: Sequence[float], labels: Sequence[float],
                k: int) -> float:
  """Mean over queries (with a relevant candidate) of the share of relevant ones in the top k."""
  groups: Dict[int, list] = {}
  for i, (q, s, l) in enumerate(zip(query_ids, scores, labels)):
    groups.setdefault(int(q), []).append((-float(s), i, float(l)))
  values = []
  for items in groups.values():
    n_rel = sum(1 for _, _, l in items if l > 0)
    if n_rel:
      top = sorted(items)[:k]
      values.append(sum(1 for _, _, l in top if l > 0) / n_rel)
  return sum(values) / len(values) if values else 0.0
