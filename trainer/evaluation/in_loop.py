r"""In-loop evaluation: a task's metrics on the params in memory, every `eval_period` steps of a
training run (T5X's `infer_eval` during `train`), and early stopping on one of them.

`trainer.evaluation.evaluate` scores a checkpoint: it restores params, builds the task's pipeline
and compiles, each time. Run once per round of a fine-tune, that costs more than the round's
training at small scale (SST-2 at d=128 on 2 CPU cores: ~7 s of overhead per split against ~6 s
for 50 steps). A `TaskScorer` converts its split once, keeps the batches in memory and is called
with the live params; `EarlyStopping` is a `loop.train(eval_callback=...)`:

  held = in_loop.TaskScorer(model=model, mixture_or_task_name='glue_sst2_text_to_text',
                            task_feature_lengths={'inputs': 64, 'targets': 8}, split='heldout',
                            label_words=['negative', 'positive'], max_examples=500)
  dev = in_loop.TaskScorer(..., split='validation')
  held(params)  # -> {'accuracy': 81.2, 'f1': 80.7}
  stopper = in_loop.EarlyStopping(monitor=held, metric='accuracy', patience=2,
                                  on_improvement={'validation': dev})
  loop.train(model=model, ..., eval_period=50, eval_callback=stopper)
  stopper.best   # {'step': 150, 'heldout/accuracy': 83.0, 'validation/accuracy': 82.4, ...}

Scoring is the same as `evaluate`'s (same functions, same numbers for the same params): encoder
classifiers by their head (`predict_fn`), generative models by label words
(`trainer.evaluation.scoring.score_candidates`: the best of the label words by log-likelihood given
the inputs, the inputs prefilled once). Splits are small held-out slices; every example is scored
(no batch is dropped).
"""
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import jax
import numpy as np

from trainer.evaluation import scoring
from trainer.evaluation import seqio_eval


class TaskScorer:
  """Metrics of a registered task's split for given params (batches converted once)."""

  def __init__(self, *, model, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
               split: str, label_words: Optional[Sequence[str]] = None, batch_size: int = 64,
               max_examples: Optional[int] = None, cache_dir: Optional[str] = None):
    """`cache_dir`: read the task's Beam cache there (`python -m pipelines.cache_tasks` at
    `task_feature_lengths`, as a run with USE_CACHED_TASKS) instead of preprocessing on the fly."""
    from trainer.training import encoder_models  # pylint: disable=g-import-not-at-top
    from trainer.training import feature_converters  # pylint: disable=g-import-not-at-top
    self.model = model
    self.name = mixture_or_task_name
    self.split = split
    self.classifier = isinstance(model, encoder_models.EncoderClassifierModel)
    lengths = dict(task_feature_lengths)
    if cache_dir:
      mixture_or_task_name = self.name = seqio_eval.cached_task_name(
          mixture_or_task_name, task_feature_lengths=lengths, cache_dir=cache_dir)
    if self.classifier:
      converter = feature_converters.for_model(model, pack=False)
    else:
      seqio_eval.check_text_to_text_lengths(lengths)
      converter = seqio_eval.text_to_text_converter()
      task = seqio_eval.get_task(mixture_or_task_name)
      self.candidates = seqio_eval.label_word_candidates(task, label_words)
      seqio_eval.check_label_lengths(self.candidates, task=task,
                                     targets_length=lengths['targets'])
    ds = seqio_eval.task_dataset(mixture_or_task_name, split=split, task_feature_lengths=lengths,
                                 feature_converter=converter, max_examples=max_examples,
                                 use_cached=bool(cache_dir))
    self.batches = [dict(b) for b in ds.batch(batch_size).as_numpy_iterator()]
    if not self.batches:
      raise ValueError(f'task {mixture_or_task_name!r} split {split!r} has no examples')
    if self.classifier:
      self._predict = jax.jit(model.predict_fn)
    else:
      self.labels = np.concatenate([self._label_ids(b['decoder_target_tokens'])
                                    for b in self.batches])
      # As seqio's Evaluator: the task's postprocessor on the label words, its metric functions.
      self.task = task
      self.targets_post, self.predictions_post = seqio_eval.postprocessed_label_words(
          task, self.candidates)
    self.rows = [len(next(iter(b.values()))) for b in self.batches]
    self.num_examples = sum(self.rows)
    if len(self.batches) > 1 and self.rows[-1] < batch_size:
      # The last batch padded with empty rows: one compiled shape per scorer, not two (each
      # costs a compile, ~2 s on CPU at d=128). Empty rows are masked out (classifier: segment
      # ids 0) or their predictions dropped (label-word scoring).
      self.batches[-1] = {k: np.concatenate([v, np.zeros((batch_size - len(v),) + v.shape[1:],
                                                         v.dtype)])
                          for k, v in self.batches[-1].items()}

  def _label_ids(self, targets: np.ndarray) -> np.ndarray:
    """The index of each example's label word among the candidates (targets = word + EOS)."""
    index = {tuple(c): i for i, c in enumerate(self.candidates)}
    out = []
    for row in targets:
      ids = tuple(int(t) for t in row if t != 0)
      if ids not in index:
        raise ValueError(f'{self.name}/{self.split}: a target {list(ids)} is none of the label '
                         f'words {self.candidates}')
      out.append(index[ids])
    return np.asarray(out, np.int64)

  def __call__(self, params) -> Dict[str, float]:
    if self.classifier:  # evaluate's own classifier scoring, with the jitted predict kept
      from trainer.evaluation import evaluate  # pylint: disable=g-import-not-at-top
      return evaluate._eval_classifier(  # pylint: disable=protected-access
          self.model, params, self.batches, self.name, predict=self._predict)['metrics']
    preds = np.concatenate([
        scoring.score_candidates(self.model, params, b, self.candidates).argmax(-1)[:rows]
        for b, rows in zip(self.batches, self.rows)])
    targets = [self.targets_post[i] for i in self.labels]
    predictions = [self.predictions_post[i] for i in preds]
    return seqio_eval.predict_metrics(self.task, targets=targets, predictions=predictions)


class EarlyStopping:
  """A `loop.train` eval callback: scores `monitor` every eval period, scores `on_improvement`
  only when the monitored metric improved (the numbers reported for the selected step), and stops
  the run after `patience` evaluations without improvement. Evaluations at or before `start_step`
  are scored and can be the best, but do not count towards `patience` (Keras's `start_from_epoch`):
  a fine-tune whose first rounds are noisy is not stopped before it has settled.

  `keep_best_params=True` (Keras's `restore_best_weights`): instead of scoring `on_improvement`
  at every improvement, keep a host copy of the best params (`best_params`; the train step
  donates its buffers, so a reference would not do) and score them once after training with
  `score_best()`. Same numbers as scoring at the improvement; one dev pass instead of one per
  improvement, for one extra copy of the params in host memory:

    stopper = in_loop.EarlyStopping(monitor=held, metric='accuracy', patience=3,
                                    on_improvement={'validation': dev}, keep_best_params=True)
    loop.train(..., eval_callback=stopper)
    stopper.score_best()  # -> {'step': 300, 'heldout/accuracy': 83.0, 'validation/accuracy': ...}

  Each call returns the flat metrics it computed ({'heldout/accuracy': ..., 'stop': bool});
  `history` has one record per evaluation and `best` the record of the best one.
  """

  def __init__(self, *, monitor: TaskScorer, metric: str, patience: int,
               on_improvement: Optional[Mapping[str, TaskScorer]] = None,
               higher_is_better: bool = True, start_step: int = 0,
               keep_best_params: bool = False, log=None):
    if not isinstance(patience, int) or patience < 1:
      raise ValueError(f'EarlyStopping.patience must be a positive int, got {patience!r}')
    if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
      raise ValueError(f'EarlyStopping.start_step must be an int >= 0, got {start_step!r}')
    self.monitor = monitor
    self.metric = metric
    self.patience = patience
    self.on_improvement = dict(on_improvement or {})
    self.sign = 1.0 if higher_is_better else -1.0
    self.start_step = start_step
    self.keep_best_params = keep_best_params
    self.best_params = None
    self.log = log
    self.history: List[Dict[str, Any]] = []
    self.best: Optional[Dict[str, Any]] = None
    self._since_best = 0

  def __call__(self, step: int, params) -> Dict[str, Any]:
    start = time.perf_counter()
    metrics = {f'{self.monitor.split}/{k}': v for k, v in self.monitor(params).items()}
    key = f'{self.monitor.split}/{self.metric}'
    if key not in metrics:
      raise ValueError(f'EarlyStopping.metric={self.metric!r} is not among the metrics of '
                       f'{self.monitor.name}: {sorted(metrics)}')
    improved = (self.best is None or
                self.sign * metrics[key] > self.sign * self.best[key])
    if improved and self.keep_best_params:
      self.best_params = jax.device_get(params)  # a numpy copy: survives buffer donation
    elif improved:
      for name, scorer in self.on_improvement.items():
        metrics.update({f'{name}/{k}': v for k, v in scorer(params).items()})
    record = {'step': int(step), 'improved': improved, **metrics}
    self.history.append(record)
    if improved:
      self.best, self._since_best = record, 0
    elif step > self.start_step:
      self._since_best += 1
    stop = self._since_best >= self.patience
    if self.log:  # with the evaluation's wall time: what a round's scoring costs beside training
      self.log(f'eval step {step}: {self._shown(metrics)}{" (best)" if improved else ""}'
               f'{" -> early stop" if stop else ""} [{time.perf_counter() - start:.1f} s]')
    return {**metrics, 'stop': stop}

  def score_best(self) -> Dict[str, Any]:
    """With `keep_best_params`: scores `on_improvement` on the kept best params, adds the
    metrics to `best` (and its `history` record) and returns it."""
    if not self.keep_best_params:
      raise ValueError('EarlyStopping.score_best needs keep_best_params=True (otherwise '
                       '`on_improvement` is scored during training)')
    if self.best is None:
      raise ValueError('EarlyStopping.score_best: no evaluation has run yet')
    start = time.perf_counter()
    for name, scorer in self.on_improvement.items():
      self.best.update({f'{name}/{k}': v for k, v in scorer(self.best_params).items()})
    if self.log:
      self.log(f'best step {self.best["step"]}: {self._shown(self.best)}'
               f' [{time.perf_counter() - start:.1f} s]')
    return self.best

  def _shown(self, metrics: Mapping[str, Any]) -> str:
    """'heldout/accuracy 81.20 validation/accuracy 76.15': the monitored metric per split."""
    return ' '.join(f'{k} {v:.2f}' for k, v in metrics.items() if k.endswith(self.metric))
