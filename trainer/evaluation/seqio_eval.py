"""The seqio and t5 side of evaluation: task datasets, seqio's Evaluator, t5's metric functions.

Imports seqio (hence TensorFlow) and t5 on use; `trainer.evaluation.evaluate` calls it.
"""
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from trainer.evaluation import scoring


def mrr_at_k(query_ids: Sequence[int], scores: Sequence[float], labels: Sequence[float],
             k: int = 10) -> float:
  """Mean over queries of 1 / rank of the first relevant candidate within the top k (else 0).

  Queries without a relevant candidate are skipped. Ties are broken by input order.
  """
  groups: Dict[int, List[tuple]] = {}
  for i, (q, s, l) in enumerate(zip(query_ids, scores, labels)):
    groups.setdefault(int(q), []).append((-float(s), i, float(l)))
  rr = []
  for items in groups.values():
    if not any(l > 0 for _, _, l in items):
      continue
    ranked = sorted(items)
    rank = next(r for r, (_, _, l) in enumerate(ranked, 1) if l > 0)
    rr.append(1.0 / rank if rank <= k else 0.0)
  return float(np.mean(rr)) if rr else 0.0


def head_metrics(kind: str, *, labels=None, predictions=None, scores=None, query_ids=None,
                 num_classes: int = 2) -> Dict[str, float]:
  """Metrics of an encoder head's outputs (t5's metric functions where they exist; percents)."""
  from t5.evaluation import metrics as t5_metrics  # pylint: disable=g-import-not-at-top
  if kind == 'classification':
    labels = [int(x) for x in labels]
    predictions = [int(x) for x in predictions]
    out = dict(t5_metrics.accuracy(labels, predictions))
    if num_classes == 2:
      out.update(t5_metrics.f1_score_with_invalid(labels, predictions))
    else:
      out.update(t5_metrics.mean_multiclass_f1(num_classes)(labels, predictions))
    return out
  if kind == 'regression':
    targets = [float(x) for x in labels]
    preds = [float(x) for x in predictions]
    out = dict(t5_metrics.pearson_corrcoef(targets, preds))
    out.update(t5_metrics.spearman_corrcoef(targets, preds))
    out['mse'] = float(np.mean((np.asarray(targets) - np.asarray(preds)) ** 2))
    return out
  if kind == 'ranking':
    from tasks.downstream import metrics as downstream_metrics  # pylint: disable=g-import-not-at-top
    out = {'mrr@10': 100.0 * mrr_at_k(query_ids, scores, labels, k=10)}
    for k in RECALL_AT:
      out[f'recall@{k}'] = 100.0 * downstream_metrics.recall_at_k(query_ids, scores, labels, k=k)
    return out
  raise ValueError(f'unknown head kind {kind!r}')


RECALL_AT = (10, 100)


def task_metrics(task_name: str, *, labels, predictions) -> Dict[str, float]:
  """The task's own metric functions on head outputs (ints for classes, floats for scores)."""
  import seqio  # pylint: disable=g-import-not-at-top
  try:
    task = seqio.get_mixture_or_task(task_name)
  except ValueError:
    return {}
  out = {}
  for fn in getattr(task, 'metric_fns', None) or []:
    for name, value in fn(list(labels), list(predictions)).items():
      out[name] = float(getattr(value, 'value', value))
  return out


def task_label_words(task_name: str) -> Optional[List[str]]:
  """The label words a downstream task declared (`tasks.downstream`), or None."""
  from tasks.downstream import pairs  # pylint: disable=g-import-not-at-top
  words = pairs.LABEL_WORDS.get(task_name)
  return list(words) if words else None


def suite_table(results: Mapping[str, Mapping[str, float]]) -> str:
  """One table of a suite's results (GLUE tasks get their GLUE score and the GLUE average)."""
  from tasks.downstream import metrics as downstream_metrics  # pylint: disable=g-import-not-at-top
  return downstream_metrics.glue_table(results)


def task_dataset(task_name: str, *, split: str, task_feature_lengths: Mapping[str, int],
                 feature_converter, max_examples: Optional[int] = None,
                 use_cached: bool = False):
  """The unshuffled, single-epoch, converted dataset of a registered task (unbatched).

  `use_cached`: read the task's cache (seqio's layout, e.g. written by `pipelines.cache_tasks`;
  the directory given to `seqio.add_global_cache_dirs`) instead of preprocessing on the fly.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  check_task(task_name)
  ds = seqio.get_dataset(task_name, task_feature_lengths=dict(task_feature_lengths),
                         feature_converter=feature_converter, dataset_split=split,
                         shuffle=False, num_epochs=1, verbose=False, seed=0,
                         use_cached=use_cached)
  return ds.take(max_examples) if max_examples else ds


def get_task(name: str):
  """The registered seqio task or mixture `name` (a one-line error naming close names if none)."""
  import seqio  # pylint: disable=g-import-not-at-top
  check_task(name)
  return seqio.get_mixture_or_task(name)


def check_text_to_text_lengths(task_feature_lengths: Mapping[str, int]) -> None:
  if 'inputs' not in task_feature_lengths or 'targets' not in task_feature_lengths:
    raise ValueError(f"TASK_FEATURE_LENGTHS must have 'inputs' and 'targets' for a text-to-text "
                     f'task, got {dict(task_feature_lengths)}')


def text_to_text_converter():
  """Unpacked inputs and targets kept apart, for both model kinds (`eval_generative`,
  `in_loop.TaskScorer`); `scoring.prompt_layout` lays them out per model."""
  import seqio  # pylint: disable=g-import-not-at-top
  return seqio.EncDecFeatureConverter(pack=False)


def cached_task_name(task_name: str, *, task_feature_lengths: Mapping[str, int],
                     cache_dir: str) -> str:
  """The name of `task_name`'s Beam cache at these lengths in `cache_dir` (registered here)."""
  from pipelines.cache import layout  # pylint: disable=g-import-not-at-top
  from trainer.training import data  # pylint: disable=g-import-not-at-top
  cached = layout.cached_task_name(task_name, dict(task_feature_lengths))
  if cached not in data.register_cache_dir(cache_dir):
    raise ValueError(f'{cache_dir!r} has no completed cache of {task_name!r} at '
                     f'{dict(task_feature_lengths)} (looked for {cached!r})')
  return cached


def postprocessed_label_words(task, candidates: Sequence[Sequence[int]]):
  """(as targets, as predictions): each label word through the task's postprocessor, as seqio's
  Evaluator passes targets and predictions to the metric functions."""
  vocab = task.output_features['targets'].vocabulary
  words = [vocab.decode([i for i in c if i != vocab.eos_id]) for c in candidates]
  return ([task.postprocess_fn(w, example=None, is_target=True) for w in words],
          [task.postprocess_fn(w, example=None, is_target=False) for w in words])


def predict_metrics(task, *, targets, predictions) -> Dict[str, float]:
  """The task's (targets, predictions) metric functions, as floats."""
  metrics = {}
  for fn in task.predict_metric_fns:
    for name, value in fn(targets, predictions).items():
      metrics[name] = float(getattr(value, 'value', value))
  if not metrics:
    raise ValueError(f'task {task.name!r} has no metric functions of (targets, predictions)')
  return metrics


def check_task(name: str) -> None:
  import seqio  # pylint: disable=g-import-not-at-top
  if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
    return
  import difflib  # pylint: disable=g-import-not-at-top
  close = difflib.get_close_matches(name, sorted(seqio.TaskRegistry.names()), n=5)
  raise ValueError(f'MIXTURE_OR_TASK_NAME: {name!r} is not a registered task'
                   + (f' (close: {close})' if close else ' (did you pass --module_import=tasks?)'))


def label_word_candidates(task, label_words: Optional[Sequence[str]]) -> List[List[int]]:
  """Token ids (EOS appended when the task's targets get one) of each label word."""
  feature = task.output_features['targets']
  words = list(label_words or task_label_words(task.name) or [])
  if not words:
    raise ValueError("scoring='label_words' needs LABEL_WORDS (e.g. ['negative', 'positive'])")
  out = []
  for word in words:
    ids = list(feature.vocabulary.encode(word))
    if feature.add_eos:
      ids.append(feature.vocabulary.eos_id)
    out.append(ids)
  return out


def check_label_lengths(candidates: Sequence[Sequence[int]], *, task, targets_length: int) -> None:
  """ValueError when a label word (EOS included) is longer than the targets length: training at
  that length saw it cut short (e.g. 'negative' as 'negat' + EOS), so scoring the whole word would
  rank it last on every example and the accuracy would be the other label's share."""
  vocab = task.output_features['targets'].vocabulary
  for ids in candidates:
    if len(ids) > targets_length:
      word = vocab.decode([i for i in ids if i != vocab.eos_id])
      raise ValueError(f"TASK_FEATURE_LENGTHS['targets']={targets_length} is shorter than the "
                       f"label word {word!r} ({len(ids)} tokens with EOS in {task.name}'s "
                       f'vocabulary); use at least {max(map(len, candidates))}')


def eval_generative(model, params, *, task_name: str, split: str,
                     task_feature_lengths: Mapping[str, int], batch_size: int, scoring_name: str,
                     label_words, max_decode_length: int, max_examples: Optional[int]):
  import seqio  # pylint: disable=g-import-not-at-top
  check_task(task_name)
  check_text_to_text_lengths(task_feature_lengths)
  evaluator = seqio.Evaluator(
      mixture_or_task_name=task_name, feature_converter=text_to_text_converter(),
      eval_split=split, sequence_length=dict(task_feature_lengths), num_examples=max_examples,
      shuffle=False, use_memory_cache=True, async_compute_metrics=False)
  if not evaluator.eval_tasks:
    raise ValueError(f'task {task_name!r} has no {split!r} split with metric functions')
  candidates = {}
  if scoring_name == 'label_words':
    for task in evaluator.eval_tasks:
      candidates[task.name] = label_word_candidates(task, label_words)
      check_label_lengths(candidates[task.name], task=task,
                          targets_length=task_feature_lengths['targets'])
  counted = []

  def predict_fn(dataset, model_feature_shapes=None):
    del model_feature_shapes
    out = []
    cands = next(iter(candidates.values())) if candidates else None
    for index, batch in dataset.batch(batch_size).as_numpy_iterator():
      if scoring_name == 'label_words':
        ids = scoring.label_word_predictions(model, params, batch, cands)
      else:
        ids = scoring.greedy_decode(model, params, batch, max_decode_length=max_decode_length)
      # Fixed width (0 = pad, dropped by the vocabulary's decode): seqio stacks predictions.
      width = max(len(c) for c in cands) if cands else max_decode_length
      out.extend((i, list(x) + [0] * (width - len(x))) for i, x in zip(index.tolist(), ids))
    counted.append(len(out))
    return out

  metrics_future, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn)
  all_metrics = metrics_future.result()
  metrics = {}
  for task_metrics in all_metrics.values():
    for name, value in task_metrics.items():
      metrics[name] = float(getattr(value, 'value', value))
  return {'metrics': metrics, 'num_examples': int(sum(counted)),
          'scoring': scoring_name}
