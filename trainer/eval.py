r"""Evaluation: a task's metrics, or LM loss / perplexity, for any trainer model and checkpoint.

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
    inputs; see trainer/scoring.py). The output says which.
* 'lm': teacher-forced loss (nats per target token) and perplexity of the targets on a held-out
  split, through the model's own feature converter (unpacked), for decoder-only and encoder-decoder
  models.

Writes `OUTPUT_DIR/eval_<task>_<split>_<mode>.json` (OUTPUT_DIR defaults to CHECKPOINT_PATH/eval) (the metrics, the scoring method, counts, the
checkpoint and step) and TensorBoard summaries (tensorboardX) under `OUTPUT_DIR/tb/`, with tags
`eval/<task>/<metric>` at the checkpoint's step. Every example of the split is used (no batch is
dropped; the last one is smaller).
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from trainer.checkpoint import checkpoints as checkpoints_lib  # pylint: disable=g-import-not-at-top
from trainer.evaluation import scoring

MODES = ('task', 'lm')
SCORINGS = ('greedy_decode', 'label_words')


# ---------------------------------------------------------------------------------------------
# Metrics.

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
    return {'mrr@10': 100.0 * mrr_at_k(query_ids, scores, labels, k=10)}
  raise ValueError(f'unknown head kind {kind!r}')


# ---------------------------------------------------------------------------------------------
# Data and params.

def _is_encoder_classifier(model) -> bool:
  return hasattr(model, 'predict_fn') and hasattr(model, 'head')


def numpy_batches(ds, batch_size: int) -> Iterator[Dict[str, np.ndarray]]:
  """Batches of a tf.data dataset of examples, keeping the smaller last batch."""
  return ds.batch(batch_size, drop_remainder=False).as_numpy_iterator()


def task_dataset(task_name: str, *, split: str, task_feature_lengths: Mapping[str, int],
                 feature_converter, max_examples: Optional[int] = None):
  """The unshuffled, single-epoch, converted dataset of a registered task (unbatched)."""
  import seqio  # pylint: disable=g-import-not-at-top
  _check_task(task_name)
  ds = seqio.get_dataset(task_name, task_feature_lengths=dict(task_feature_lengths),
                         feature_converter=feature_converter, dataset_split=split,
                         shuffle=False, num_epochs=1, verbose=False, seed=0)
  return ds.take(max_examples) if max_examples else ds


def _check_task(name: str) -> None:
  import seqio  # pylint: disable=g-import-not-at-top
  if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
    return
  import difflib  # pylint: disable=g-import-not-at-top
  close = difflib.get_close_matches(name, sorted(seqio.TaskRegistry.names()), n=5)
  raise ValueError(f'MIXTURE_OR_TASK_NAME: {name!r} is not a registered task'
                   + (f' (close: {close})' if close else ' (did you pass --module_import=tasks?)'))


def checkpoint_step(path: str) -> int:
  """The step of a trainer checkpoint path (latest step of a run dir), or 0 if it has none."""
  path = os.path.abspath(path)
  for candidate in (path, os.path.join(path, 'checkpoints')):
    if os.path.isdir(candidate):
      steps = [int(n) for n in os.listdir(candidate) if n.isdigit()]
      if steps:
        return max(steps)
  match = re.search(r'/(\d+)(/params)?/?$', path)
  return int(match.group(1)) if match else 0


def load_params(model, checkpoint_path: str, example_batch: Mapping[str, np.ndarray]):
  """Params for `model` from a trainer checkpoint (run dir, step dir or params-only dir)."""
  first = {k: np.asarray(v)[:1] for k, v in example_batch.items()}
  abstract = meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), first))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)
  return checkpoints_lib.restore_params(checkpoint_path, abstract)


# ---------------------------------------------------------------------------------------------
# The three evaluations.

def _eval_classifier(model, params, batches) -> Dict[str, Any]:
  predict = jax.jit(model.predict_fn)
  kind = model.head.kind
  labels, preds, qids = [], [], []
  for batch in batches:
    pred, mask = predict(params, {k: jnp.asarray(v) for k, v in batch.items()})
    mask = np.asarray(mask)
    preds.extend(np.asarray(pred)[mask].tolist())
    labels.extend(np.asarray(batch['score' if kind == 'regression' else 'label'])[mask].tolist())
    if kind == 'ranking':
      qids.extend(np.asarray(batch['query_id'])[mask].tolist())
  if not labels:
    raise ValueError('the eval split has no examples')
  metrics = head_metrics(kind, labels=labels, predictions=preds, scores=preds, query_ids=qids,
                         num_classes=model.head.num_classes)
  return {'metrics': metrics, 'num_examples': len(labels), 'scoring': 'classifier_head'}


def _eval_lm(model, params, batches) -> Dict[str, Any]:
  eval_fn = jax.jit(model.eval_fn)
  loss_sum, count, correct = 0.0, 0.0, 0.0
  rows = 0
  for batch in batches:
    m = eval_fn(params, {k: jnp.asarray(v) for k, v in batch.items()})
    loss_sum += float(m['loss'][0])
    count += float(m['loss'][1])
    if 'accuracy' in m:
      correct += float(m['accuracy'][0])
    rows += len(next(iter(batch.values())))
  if count == 0:
    raise ValueError('the eval split has no target tokens')
  loss = loss_sum / count
  metrics = {'loss': loss, 'perplexity': math.exp(min(loss, 700.0)), 'target_tokens': count}
  if correct:
    metrics['token_accuracy'] = correct / count
  return {'metrics': metrics, 'num_examples': rows, 'scoring': 'teacher_forced_lm'}


def label_word_candidates(task, label_words: Optional[Sequence[str]]) -> List[List[int]]:
  """Token ids (EOS appended when the task's targets get one) of each label word."""
  feature = task.output_features['targets']
  words = list(label_words or [])
  if not words:
    raise ValueError("scoring='label_words' needs LABEL_WORDS (e.g. ['negative', 'positive'])")
  out = []
  for word in words:
    ids = list(feature.vocabulary.encode(word))
    if feature.add_eos:
      ids.append(feature.vocabulary.eos_id)
    out.append(ids)
  return out


def _eval_generative(model, params, *, task_name: str, split: str,
                     task_feature_lengths: Mapping[str, int], batch_size: int, scoring_name: str,
                     label_words, max_decode_length: int, max_examples: Optional[int]):
  import seqio  # pylint: disable=g-import-not-at-top
  _check_task(task_name)
  if 'inputs' not in task_feature_lengths or 'targets' not in task_feature_lengths:
    raise ValueError(f"TASK_FEATURE_LENGTHS must have 'inputs' and 'targets' for a text-to-text "
                     f'task, got {dict(task_feature_lengths)}')
  evaluator = seqio.Evaluator(
      mixture_or_task_name=task_name,
      # Keeps inputs and targets apart for both model kinds; trainer/scoring.py lays them out.
      feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split=split, sequence_length=dict(task_feature_lengths), num_examples=max_examples,
      shuffle=False, use_memory_cache=True, async_compute_metrics=False)
  if not evaluator.eval_tasks:
    raise ValueError(f'task {task_name!r} has no {split!r} split with metric functions')
  candidates = {}
  if scoring_name == 'label_words':
    for task in evaluator.eval_tasks:
      candidates[task.name] = label_word_candidates(task, label_words)
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


def evaluate(*, model, checkpoint_path: str, mixture_or_task_name: str,
             task_feature_lengths: Mapping[str, int], split: str = 'validation',
             mode: str = 'task', scoring_method: str = 'label_words',
             label_words: Optional[Sequence[str]] = None, max_decode_length: int = 8,
             batch_size: int = 32, max_examples: Optional[int] = None,
             output_dir: Optional[str] = None, stream=None) -> Dict[str, Any]:
  """Evaluates `model` with params from `checkpoint_path`; returns (and writes) the results."""
  stream = stream or sys.stdout
  if mode not in MODES:
    raise ValueError(f'evaluate.mode={mode!r} is not one of {MODES}')
  if scoring_method not in SCORINGS:
    raise ValueError(f'evaluate.scoring_method={scoring_method!r} is not one of {SCORINGS}')
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f'evaluate.batch_size must be a positive int, got {batch_size!r}')
  if not checkpoint_path or not os.path.isdir(checkpoint_path):
    raise ValueError(f'CHECKPOINT_PATH {checkpoint_path!r} is not a directory')
  start = time.time()
  classifier = _is_encoder_classifier(model)
  if mode == 'lm' and classifier:
    raise ValueError("evaluate.mode='lm' needs a decoder-only or encoder-decoder model")
  converter = model.feature_converter(pack=False)
  ds = task_dataset(mixture_or_task_name, split=split, task_feature_lengths=task_feature_lengths,
                    feature_converter=converter, max_examples=max_examples)
  example = next(numpy_batches(ds, 1), None)
  if example is None:
    raise ValueError(f'task {mixture_or_task_name!r} split {split!r} has no examples')
  params = load_params(model, checkpoint_path, example)
  print(f'eval: {mixture_or_task_name}/{split} mode={mode} model={type(model).__name__} '
        f'checkpoint={checkpoint_path}', file=stream, flush=True)
  if classifier:
    result = _eval_classifier(model, params, numpy_batches(ds, batch_size))
  elif mode == 'lm':
    result = _eval_lm(model, params, numpy_batches(ds, batch_size))
  else:
    result = _eval_generative(model, params, task_name=mixture_or_task_name, split=split,
                              task_feature_lengths=task_feature_lengths, batch_size=batch_size,
                              scoring_name=scoring_method, label_words=label_words,
                              max_decode_length=max_decode_length, max_examples=max_examples)
  step = checkpoint_step(checkpoint_path)
  result.update({'task': mixture_or_task_name, 'split': split, 'mode': mode,
                 'model': type(model).__name__, 'checkpoint': os.path.abspath(checkpoint_path),
                 'step': step, 'seconds': round(time.time() - start, 2)})
  metrics_text = ', '.join(f'{k}={v:.4g}' for k, v in sorted(result['metrics'].items()))
  print(f'eval: {result["num_examples"]} examples, scoring={result["scoring"]}: {metrics_text}',
        file=stream, flush=True)
  output_dir = output_dir or os.path.join(checkpoint_path, 'eval')
  if output_dir:
    write_results(output_dir, result)
    print(f'eval: wrote {os.path.join(output_dir, result_filename(result))}', file=stream,
          flush=True)
  return result


def result_filename(result: Mapping[str, Any]) -> str:
  safe = re.sub(r'[^A-Za-z0-9_.-]', '_', result['task'])
  return f'eval_{safe}_{result["split"]}_{result["mode"]}.json'


def write_results(output_dir: str, result: Mapping[str, Any]) -> None:
  """JSON file + TensorBoard scalars `eval/<task>/<metric>` at the checkpoint step."""
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, result_filename(result)), 'w') as f:
    json.dump(result, f, indent=2, sort_keys=True)
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  writer = SummaryWriter(os.path.join(output_dir, 'tb'))
  for name, value in result['metrics'].items():
    writer.add_scalar(f'eval/{result["task"]}/{name}', float(value), result['step'])
  writer.flush()
  writer.close()


# ---------------------------------------------------------------------------------------------
# Entry point.

def main(flags) -> int:
  import gin  # pylint: disable=g-import-not-at-top
  from trainer import gin_utils  # pylint: disable=g-import-not-at-top
  del flags
  # `python -m trainer.eval` runs this file as __main__; gin configures the module's `evaluate`.
  from trainer import eval as eval_lib  # pylint: disable=g-import-not-at-top
  try:
    eval_fn = gin.get_configurable(eval_lib.evaluate)
  except ValueError as e:
    raise gin_utils.ConfigError(
        'no gin file configures trainer.eval.evaluate (add --gin_file=gin/runs/eval.gin)') from e
  eval_fn()
  return 0


def run(argv=None) -> int:
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  from trainer import gin_utils  # pylint: disable=g-import-not-at-top
  return gin_utils.run(main, argv, program='eval')


if __name__ == '__main__':
  sys.exit(run())
