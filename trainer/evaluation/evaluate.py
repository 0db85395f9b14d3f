r"""Evaluation: a task's metrics, or LM loss / perplexity, for any trainer model and checkpoint.

`evaluate()` is what `python -m trainer.eval` runs (configured by gin/runs/eval.gin).

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
CHECKPOINT_PATH/eval; the metrics, the scoring method, counts, the checkpoint and step; the scoring
in the name keeps e.g. a label-word and a greedy-decoding evaluation of one checkpoint apart) and
TensorBoard summaries (tensorboardX) under `OUTPUT_DIR/tb/`, with tags
`eval/<task>/<scoring>/<metric>` at the checkpoint's step. Every example of the split is used (no batch is
dropped; the last one is smaller).
"""
import json
import math
import os
import re
import sys
import time
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from trainer.checkpoint import loader
from trainer.evaluation import seqio_eval
from trainer.training import feature_converters
from trainer.training.encoder_models import EncoderClassifierModel

MODES = ('task', 'lm')
SCORINGS = ('greedy_decode', 'label_words')


def numpy_batches(ds, batch_size: int) -> Iterator[Dict[str, np.ndarray]]:
  """Batches of a tf.data dataset of examples, keeping the smaller last batch."""
  return ds.batch(batch_size, drop_remainder=False).as_numpy_iterator()


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
  return loader.restore_params(checkpoint_path, abstract)


def _eval_classifier(model, params, batches, task_name: str, predict=None) -> Dict[str, Any]:
  """`predict`: a jitted `model.predict_fn` to reuse (`in_loop.TaskScorer` calls this often)."""
  predict = predict or jax.jit(model.predict_fn)
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
  metrics = seqio_eval.head_metrics(kind, labels=labels, predictions=preds, scores=preds, query_ids=qids,
                         num_classes=model.head.num_classes)
  # The task's own (official) metrics too, e.g. MCC for CoLA.
  metrics.update(seqio_eval.task_metrics(task_name, labels=labels, predictions=preds))
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


def evaluate(*, model, checkpoint_path: str, mixture_or_task_name: Union[str, Sequence[str]],
             task_feature_lengths: Mapping[str, int], split: str = 'validation',
             mode: str = 'task', scoring_method: str = 'label_words',
             label_words: Optional[Sequence[str]] = None, max_decode_length: int = 8,
             batch_size: int = 32, max_examples: Optional[int] = None,
             output_dir: Optional[str] = None, stream=None) -> Dict[str, Any]:
  """Evaluates `model` with params from `checkpoint_path`; returns (and writes) the results.

  `mixture_or_task_name` may be a list of task names (e.g. all GLUE text-to-text tasks for one
  generative checkpoint): each is evaluated as above (its own JSON file; label words from each
  task unless `label_words` is given) and one table of all of them is printed; the return value
  is then `{'results': {task: result}, 'table': str}`.
  """
  stream = stream or sys.stdout
  if not isinstance(mixture_or_task_name, str):
    names = list(mixture_or_task_name)
    if not names:
      raise ValueError('MIXTURE_OR_TASK_NAME: the list of tasks is empty')
    results = {}
    for name in names:
      results[name] = evaluate(
          model=model, checkpoint_path=checkpoint_path, mixture_or_task_name=name,
          task_feature_lengths=task_feature_lengths, split=split, mode=mode,
          scoring_method=scoring_method, label_words=label_words,
          max_decode_length=max_decode_length, batch_size=batch_size, max_examples=max_examples,
          output_dir=output_dir, stream=stream)
    table = seqio_eval.suite_table({n: r['metrics'] for n, r in results.items()})
    print(table, file=stream, flush=True)
    return {'results': results, 'table': table}
  if mode not in MODES:
    raise ValueError(f'evaluate.mode={mode!r} is not one of {MODES}')
  if scoring_method not in SCORINGS:
    raise ValueError(f'evaluate.scoring_method={scoring_method!r} is not one of {SCORINGS}')
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f'evaluate.batch_size must be a positive int, got {batch_size!r}')
  if not checkpoint_path or not os.path.isdir(checkpoint_path):
    raise ValueError(f'CHECKPOINT_PATH {checkpoint_path!r} is not a directory')
  start = time.time()
  classifier = isinstance(model, EncoderClassifierModel)
  if mode == 'lm' and classifier:
    raise ValueError("evaluate.mode='lm' needs a decoder-only or encoder-decoder model")
  converter = feature_converters.for_model(model, pack=False)
  ds = seqio_eval.task_dataset(mixture_or_task_name, split=split, task_feature_lengths=task_feature_lengths,
                    feature_converter=converter, max_examples=max_examples)
  example = next(numpy_batches(ds, 1), None)
  if example is None:
    raise ValueError(f'task {mixture_or_task_name!r} split {split!r} has no examples')
  params = load_params(model, checkpoint_path, example)
  print(f'eval: {mixture_or_task_name}/{split} mode={mode} model={type(model).__name__} '
        f'checkpoint={checkpoint_path}', file=stream, flush=True)
  if classifier:
    result = _eval_classifier(model, params, numpy_batches(ds, batch_size), mixture_or_task_name)
  elif mode == 'lm':
    result = _eval_lm(model, params, numpy_batches(ds, batch_size))
  else:
    result = seqio_eval.eval_generative(model, params, task_name=mixture_or_task_name, split=split,
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
  return f'eval_{safe}_{result["split"]}_{result["mode"]}_{result["scoring"]}.json'


def write_results(output_dir: str, result: Mapping[str, Any]) -> None:
  """JSON file + TensorBoard scalars `eval/<task>/<metric>` at the checkpoint step."""
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, result_filename(result)), 'w') as f:
    json.dump(result, f, indent=2, sort_keys=True)
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  writer = SummaryWriter(os.path.join(output_dir, 'tb'))
  for name, value in result['metrics'].items():
    writer.add_scalar(f'eval/{result["task"]}/{result["scoring"]}/{name}', float(value),
                      result['step'])
  writer.flush()
  writer.close()
