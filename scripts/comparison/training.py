"""Training and evaluation calls for the comparison (library calls into `trainer`).

`train_lm` trains on a Beam-cached task (Grain loader) and records the held-out loss on the cached
validation split every `eval_period` steps: a curve of (training tokens, held-out loss).
`finetune` trains on SST-2 (packed rows), scores the held-out slice of train after each round,
keeps the params of the best round and reports their dev accuracy (early stopping: patience in
rounds).
"""
import os
import sys
from typing import Any, Dict, Optional

LABEL_WORDS = ['negative', 'positive']


def _optimizer(*, lr: float, steps: int, warmup: int, freeze_teacher: bool = False):
  import optax  # pylint: disable=g-import-not-at-top
  from trainer.training import optimizers  # pylint: disable=g-import-not-at-top
  schedule = optimizers.create_schedule(base_learning_rate=lr, warmup_steps=warmup,
                                        decay='constant', total_steps=steps)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule))
  if freeze_teacher:
    from trainer.training import freezing  # pylint: disable=g-import-not-at-top
    tx = freezing.freeze_teacher(tx)
  return tx, schedule


def _dataset(task, lengths, batch_size, seed, *, cache_dir=None, split='train', epochs=None,
             shuffle=True):
  from trainer.training import data  # pylint: disable=g-import-not-at-top
  cached = cache_dir is not None
  # Cached LM data is packed (rows of `lengths` tokens); the Grain loader cannot serve unpacked
  # rows (chunk size 1) from an endless stream here: grain's batch(1) over range(sys.maxsize)
  # overflows len(). SST-2 (on the fly, seqio) stays unpacked.
  return data.DatasetConfig(mixture_or_task_name=task, task_feature_lengths=dict(lengths),
                            batch_size=batch_size, seed=seed, pack=cached, split=split,
                            use_cached=cached, cache_dir=cache_dir, num_epochs=epochs,
                            shuffle=shuffle, data_loader='grain' if cached else 'seqio')


def _checkpoint_cfg():
  from trainer.checkpoint import checkpoints  # pylint: disable=g-import-not-at-top
  return checkpoints.CheckpointConfig(period=0, keep=1, async_save=False, save_on_signal=True)


def _check(result, model_dir):
  if result.interrupted:
    from tasks import cli  # pylint: disable=g-import-not-at-top
    raise cli.UserError(f'compare: {model_dir} interrupted at step {result.step}; rerun to redo it')


def train_lm(*, model, model_dir: str, task: str, lengths: Dict[str, int], steps: int,
             batch_size: int, lr: float, seed: int, cache_dir: str, eval_points: int,
             eval_batches: int, init_checkpoint: Optional[str] = None,
             freeze_teacher: bool = False, eval_task: Optional[str] = None) -> Dict[str, Any]:
  """Trains; returns losses, the held-out curve [(tokens, loss)], params and step count.

  The curve is the cross-entropy on the cached validation split of `eval_task` (default: `task`),
  e.g. held-out PrefixLM loss for a model trained with UL2; tokens count inputs + targets.
  """
  from trainer.training import loop  # pylint: disable=g-import-not-at-top
  tx, schedule = _optimizer(lr=lr, steps=steps, warmup=max(1, steps // 10),
                            freeze_teacher=freeze_teacher)
  period = max(1, steps // max(1, eval_points))
  result = loop.train(
      model=model, model_dir=model_dir, total_steps=steps, optimizer=tx,
      learning_rate_fn=schedule,
      train_dataset_cfg=_dataset(task, lengths, batch_size, seed, cache_dir=cache_dir),
      eval_dataset_cfg=_dataset(eval_task or task, lengths, batch_size, 0, cache_dir=cache_dir,
                                split='validation', shuffle=False),
      eval_period=period, eval_steps=eval_batches, checkpoint_cfg=_checkpoint_cfg(),
      init_checkpoint=init_checkpoint, seed=seed, log_period=period, stream=sys.stdout)
  _check(result, model_dir)
  tokens_per_step = batch_size * sum(lengths.values())
  curve = []
  for step in sorted(result.eval_metrics):
    m = result.eval_metrics[step]
    # 'cross_entropy' is the plain target loss (a distillation model's 'loss' mixes in the KL).
    loss = m['cross_entropy'] if 'cross_entropy' in m else m['loss']
    curve.append((step * tokens_per_step, float(loss)))
  losses = [result.losses[k] for k in sorted(result.losses)]
  return {'first_loss': losses[0], 'last_loss': losses[-1], 'steps': result.step,
          'num_params': result.num_params, 'curve': curve, 'tokens_per_step': tokens_per_step,
          'final_heldout_loss': curve[-1][1] if curve else None}


def finetune(*, model, model_dir: str, task: str, lengths: Dict[str, int], round_steps: int,
             max_rounds: int, patience: int, batch_size: int, lr: float, seed: int,
             init_checkpoint: Optional[str], classifier: bool, dev_examples: int,
             heldout_examples: int, cache_dir: Optional[str] = None, pack: bool = False,
             patience_start_round: int = 0) -> Dict[str, Any]:
  """Fine-tunes with early stopping on the held-out slice of train, scored every `round_steps`.

  One training run; the held-out split is scored on the params in memory every round, a copy of
  the params of the best held-out round is kept, and the dev set is scored once on those after
  training (`trainer.evaluation.in_loop.EarlyStopping(keep_best_params=True)`). The reported
  accuracy is the dev accuracy of the best held-out round. `cache_dir`: read the
  task's Beam cache (train, held-out and dev) instead of preprocessing SST-2 on the fly.
  `pack`: pack several training examples per row (SST-2 train sentences fill about a third of a
  64-token row; an encoder classifier's rows hold up to its `max_segments`); scoring stays
  unpacked. Rounds up to `patience_start_round` are scored but do not count towards `patience`.
  """
  from trainer.evaluation import in_loop  # pylint: disable=g-import-not-at-top
  from trainer.training import loop  # pylint: disable=g-import-not-at-top
  total = round_steps * max_rounds
  tx, schedule = _optimizer(lr=lr, steps=total, warmup=max(1, round_steps // 5))
  kw = dict(model=model, mixture_or_task_name=task, task_feature_lengths=lengths,
            label_words=None if classifier else LABEL_WORDS, cache_dir=cache_dir)
  stopper = in_loop.EarlyStopping(
      monitor=in_loop.TaskScorer(split='heldout', max_examples=heldout_examples or None, **kw),
      metric='accuracy', patience=patience, start_step=patience_start_round * round_steps,
      keep_best_params=True,  # the dev set scored once, on the best round's params
      on_improvement={'validation': in_loop.TaskScorer(split='validation',
                                                        max_examples=dev_examples or None, **kw)},
      log=lambda line: print(f'  {line}', flush=True))
  import dataclasses  # pylint: disable=g-import-not-at-top
  # seqio's reader of the Beam cache, as the held-out and dev scorers use.
  train_cfg = dataclasses.replace(_dataset(task, lengths, batch_size, seed), pack=pack,
                                  use_cached=bool(cache_dir), cache_dir=cache_dir)
  result = loop.train(
      model=model, model_dir=model_dir, total_steps=total, optimizer=tx,
      learning_rate_fn=schedule, train_dataset_cfg=train_cfg, checkpoint_cfg=_checkpoint_cfg(),
      init_checkpoint=init_checkpoint, seed=seed, log_period=round_steps,
      eval_period=round_steps, eval_callback=stopper, stream=sys.stdout)
  _check(result, model_dir)
  stopper.score_best()
  rounds = [{'step': h['step'], 'heldout_accuracy': h['heldout/accuracy'],
             'dev_accuracy': h.get('validation/accuracy'), 'num_params': result.num_params}
            for h in stopper.history]
  best = rounds[stopper.history.index(stopper.best)]
  return {'rounds': rounds, 'best': best, 'accuracy': best['dev_accuracy'],
          'num_params': result.num_params}
