"""The training loop (T5X-like `train()` with injectable parts; no TensorFlow, no gin in here).

`train()` takes its parts as arguments (gin wires them at the edge, `trainer/train.py`):

* `model`: a `trainer.training.models.ModelWrapper`.
* data: either `train_dataset_cfg` (a `trainer.training.data.DatasetConfig`; seqio/TF are imported only then)
  or `train_dataset_fn(start_batch=0) -> iterator of host-local numpy batches` (synthetic data,
  tests, custom loaders). Same for eval (`eval_dataset_cfg` / `eval_dataset_fn() -> iterator`).
* `optimizer`: an `optax.GradientTransformation`, or a zero-argument factory returning one (so a
  wrapper such as the cross-attention warm-up in `trainer.training.freezing` can be composed in gin).
* `partitioner`: `trainer.training.partitioning.Partitioner` (mesh + logical axis rules).
* `checkpoint_cfg`: `trainer.checkpoint.checkpoints.CheckpointConfig`; `init_checkpoint`: a directory to take
  the initial *params* from (adaptation, fine-tuning) when the run has no checkpoint of its own.

The step: loss and gradients (optionally accumulated over `micro_batches` slices of the batch,
weighted by their target-token counts, so the result equals the full-batch gradient), global grad
norm, optimiser update. A non-finite loss or gradient norm stops the run with `TrainingDivergedError`
before anything is saved, so the last checkpoint on disk is the last good one. SIGTERM/SIGINT make
the loop finish the current step, save a checkpoint (params, optimiser state, step, RNG, data
position) and return with `interrupted=True`; a rerun resumes from it and sees the same batches.
A dataset fn that also takes `loader_state` (the Grain loader, `trainer.training.grain_loader`)
and whose iterator has `checkpoint_state()` gets its own position saved in the checkpoint's `data`
item and handed back on resume: nothing is replayed. Others skip `batches_consumed` batches.
"""
import dataclasses
import inspect
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core import meta

from trainer.checkpoint import checkpoints as checkpoints_lib
from trainer.checkpoint import loader
from trainer.model import config_io
from trainer.model.config import EncoderDecoderConfig, TransformerConfig
from trainer.training import flops as flops_lib
from trainer.training import metrics as metrics_lib
from trainer.training import optimizers
from trainer.training import partitioning
from trainer.training import run_guards
from trainer.training.models import ModelWrapper
from trainer.training.train_state import TrainState

DatasetFn = Callable[..., Iterator[Mapping[str, np.ndarray]]]


class TrainingDivergedError(RuntimeError):
  """The loss or the gradient norm became NaN/Inf."""


@dataclasses.dataclass
class TrainResult:
  step: int
  losses: Dict[int, float]              # step (1-based, after the update) -> training loss
  last_metrics: Dict[str, float]
  eval_metrics: Dict[int, Dict[str, float]]
  interrupted: bool = False
  stopped_early: bool = False           # the eval callback asked to stop (early stopping)
  callback_metrics: Dict[int, Dict[str, Any]] = dataclasses.field(default_factory=dict)
  resumed_from: Optional[int] = None
  num_params: int = 0


class _SignalCatcher:
  """Turns SIGTERM/SIGINT into a flag the loop polls (restores the old handlers on exit)."""

  def __init__(self, enabled: bool):
    self.enabled = enabled and threading.current_thread() is threading.main_thread()
    self.received = None
    self._old = {}

  def _handler(self, signum, frame):
    del frame
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the checkpoint
    self.received = signal.Signals(signum).name

  def __enter__(self):
    if self.enabled:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handler)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)
    return False


def _check_positive_int(name, value, *, allow_zero=False):
  ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
  if not ok or value < 0 or (value == 0 and not allow_zero):
    raise ValueError(f'train.{name} must be a {"non-negative" if allow_zero else "positive"} '
                     f'int, got {value!r}')


def _split_micro_batches(batch, num: int):
  """[B, ...] -> [num, B/num, ...], micro-batch i = rows i, i+num, ... (keeps every device busy)."""
  def split(x):
    if x.shape[0] % num:
      raise ValueError(f'train.micro_batches={num} must divide the batch size {x.shape[0]}')
    y = x.reshape((x.shape[0] // num, num) + x.shape[1:]).swapaxes(0, 1)
    if jax.sharding.get_abstract_mesh().empty:  # plain jit (tests, no partitioner)
      return y
    return jax.lax.with_sharding_constraint(
        y, jax.sharding.PartitionSpec(None, partitioning.BATCH_AXES))
  return jax.tree_util.tree_map(split, batch)


def make_train_step(model: ModelWrapper, tx: optax.GradientTransformation, *, micro_batches: int = 1,
                    learning_rate_fn: Optional[Callable] = None):
  """(state, batch) -> (state, metrics); pure, to be jitted."""

  def grads_and_metrics(params, batch, rng):
    (_, metrics), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, rng)
    return grads, metrics

  def step(state: TrainState, batch):
    rng = state.dropout_rng()
    if micro_batches == 1:
      grads, metrics = grads_and_metrics(state.params, batch, rng)
    else:
      micro = _split_micro_batches(batch, micro_batches)

      def body(carry, xs):
        grad_sum, metric_sum = carry
        index, mb = xs
        grads, metrics = grads_and_metrics(state.params, mb, jax.random.fold_in(rng, index))
        weight = metrics['loss'][1]
        grad_sum = jax.tree_util.tree_map(lambda a, g: a + weight * g.astype(jnp.float32),
                                          grad_sum, grads)
        metric_sum = jax.tree_util.tree_map(jnp.add, metric_sum, metrics)
        return (grad_sum, metric_sum), None

      zero_grads = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
      first = jax.tree_util.tree_map(lambda x: x[0], micro)
      metric_shapes = jax.eval_shape(lambda: grads_and_metrics(state.params, first, rng)[1])
      zero_metrics = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)
      (grad_sum, metrics), _ = jax.lax.scan(
          body, (zero_grads, zero_metrics), (jnp.arange(micro_batches), micro))
      total = jnp.maximum(metrics['loss'][1], 1.0)
      grads = jax.tree_util.tree_map(lambda g, p: (g / total).astype(p.dtype), grad_sum,
                                     state.params)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    # optax.apply_updates + exact rounding of params that have a master copy in opt_state.
    params = optimizers.apply_updates(state.params, updates, opt_state)
    metrics = dict(metrics)
    metrics['grad_norm'] = grad_norm
    if learning_rate_fn is not None:
      metrics['learning_rate'] = learning_rate_fn(state.step)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return step


def _resolve_optimizer(optimizer) -> optax.GradientTransformation:
  if isinstance(optimizer, optax.GradientTransformation):
    return optimizer
  if callable(optimizer):
    tx = optimizer()
    if isinstance(tx, optax.GradientTransformation):
      return tx
  raise ValueError(f'train.optimizer must be an optax.GradientTransformation or a factory '
                   f'returning one, got {optimizer!r}')


def _shapes(batch) -> Dict[str, tuple]:
  return {k: tuple(np.shape(v)) for k, v in batch.items()}


def train(*, model: ModelWrapper, model_dir: str, optimizer: Union[optax.GradientTransformation, Callable],
          total_steps: int,
          train_dataset_cfg=None, train_dataset_fn: Optional[DatasetFn] = None,
          eval_dataset_cfg=None, eval_dataset_fn: Optional[DatasetFn] = None,
          eval_period: int = 0, eval_steps: int = 20,
          learning_rate_fn: Optional[Callable] = None,
          partitioner: Optional[partitioning.Partitioner] = None,
          checkpoint_cfg: checkpoints_lib.CheckpointConfig = checkpoints_lib.CheckpointConfig(),
          init_checkpoint: Optional[str] = None,
          seed: int = 0, micro_batches: int = 1, log_period: int = 10,
          peak_flops: Optional[float] = None,
          stop_after_steps: Optional[int] = None,
          eval_callback: Optional[Callable[[int, Any], Optional[Mapping[str, Any]]]] = None,
          stream=None, gin_config: Optional[str] = None) -> TrainResult:
  """Trains `model` for `total_steps` steps (resuming from MODEL_DIR/checkpoints if present).

  `stop_after_steps` stops (with a checkpoint) after that many steps of *this* invocation, as a
  SIGTERM would: used to test interruption and resumption. `gin_config`: the configuration text
  written to MODEL_DIR/config.gin (with model_config.json) once the run has started, never by a
  run that fails to start or to resume. A damaged newest checkpoint: see
  `CheckpointConfig.fallback_on_corrupt`.

  `eval_callback(step, params)`: called every `eval_period` steps (and at the last step) with the
  params in memory, as T5X's in-loop `infer_eval`; e.g. `trainer.evaluation.in_loop.EarlyStopping`.
  Its scalar results are logged (split 'callback') and kept in `TrainResult.callback_metrics`; a
  true `'stop'` in them ends the run there with a checkpoint (`TrainResult.stopped_early`).
  """
  if not isinstance(model_dir, str) or not model_dir:
    raise ValueError(f'train.model_dir (MODEL_DIR) must be a non-empty path, got {model_dir!r}')
  if '://' in model_dir:
    raise ValueError(f'train.model_dir (MODEL_DIR) must be a file-system path, got {model_dir!r}: '
                     'mount the bucket (gcsfuse, README "Training on TPU") and give the mount')
  _check_positive_int('total_steps', total_steps)
  _check_positive_int('eval_period', eval_period, allow_zero=True)
  _check_positive_int('eval_steps', eval_steps)
  _check_positive_int('micro_batches', micro_batches)
  _check_positive_int('log_period', log_period)
  if eval_callback is not None and not eval_period:
    raise ValueError('train.eval_callback needs train.eval_period > 0 (how often to call it)')
  _check_positive_int('seed', seed, allow_zero=True)
  if (train_dataset_cfg is None) == (train_dataset_fn is None):
    raise ValueError('train: give exactly one of train_dataset_cfg and train_dataset_fn')
  if not isinstance(checkpoint_cfg, checkpoints_lib.CheckpointConfig):
    raise ValueError(f'train.checkpoint_cfg must be a CheckpointConfig, got {checkpoint_cfg!r}')
  tx = _resolve_optimizer(optimizer)
  partitioner = partitioner or partitioning.Partitioner()

  if train_dataset_cfg is not None or eval_dataset_cfg is not None:
    # TF only when asked.
    # (DATA_LOADER='grain' on cached tasks: no TF at all.)
    from trainer.training import data  # pylint: disable=g-import-not-at-top
    if train_dataset_cfg is not None:
      train_dataset_fn = data.dataset_fn_for_model(train_dataset_cfg, model)
    if eval_dataset_cfg is not None:
      eval_dataset_fn = data.dataset_fn_for_model(eval_dataset_cfg, model)

  writer = metrics_lib.MetricsWriter(model_dir, total_steps=total_steps, stream=stream)
  ckpt = checkpoints_lib.Checkpointer(os.path.join(model_dir, 'checkpoints'), checkpoint_cfg)
  latest = ckpt.latest_step()
  if latest is not None:
    run_guards.check_resume(model_dir, getattr(model, 'config', None))
  saved_data = ckpt.data_state(latest) if latest is not None else {}
  start_batch = int(saved_data.get('batches_consumed', 0))
  vocab_size = run_guards.model_vocab_size(model)

  def open_train_iter(start_batch, loader_state):
    """The training stream at `start_batch`; a resumable loader (Grain) restarts from its state."""
    if loader_state is not None and _accepts_loader_state(train_dataset_fn):
      stream = train_dataset_fn(start_batch=start_batch, loader_state=loader_state)
    else:
      stream = train_dataset_fn(start_batch=start_batch)
    return run_guards.checked_batches(stream, vocab_size=vocab_size)

  train_iter = open_train_iter(start_batch, saved_data.get('loader'))
  first_batch = _next_batch(train_iter, 0)
  shapes = _shapes(first_batch)
  global_batch_size = shapes[next(iter(shapes))][0] * jax.process_count()

  # Parameters: abstract init -> logical specs -> shardings -> sharded init.
  rng = jax.random.PRNGKey(seed)
  init_rng, dropout_base = jax.random.split(rng)
  dummy = {k: np.zeros((1,) + s[1:], np.asarray(first_batch[k]).dtype) for k, s in shapes.items()}
  # Init runs outside the rules context: parameter placement comes from out_shardings.
  boxed = jax.eval_shape(model.init, init_rng, dummy)
  param_shardings = partitioner.params_sharding(boxed)
  params = jax.jit(lambda r: meta.unbox(model.init(r, dummy)),
                   out_shardings=param_shardings)(init_rng)
  with partitioner.activate():
    num_params = model.num_params(params)
    if latest is None and init_checkpoint:
      params = loader.restore_params(
          init_checkpoint, checkpoints_lib.abstract_like(params, param_shardings))
      logging.info('initialised params from %s', init_checkpoint)
    opt_state = jax.jit(tx.init)(params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                       rng=jax.device_put(dropout_base, partitioner.replicated()))
    state = state.replace(step=jax.device_put(state.step, partitioner.replicated()))
    if latest is not None:
      step_found, (p, o, m, data_state) = ckpt.restore_newest_intact(
          abstract_params=checkpoints_lib.abstract_like(state.params),
          abstract_opt_state=checkpoints_lib.abstract_like(state.opt_state),
          abstract_train_meta=checkpoints_lib.abstract_like(state.meta()),
          log=lambda line: print(line, file=writer.stream, flush=True) if writer.enabled else None)
      state = state.replace(params=p, opt_state=o, step=m['step'], rng=m['rng'])
      if step_found != latest or int(data_state['batches_consumed']) != start_batch:
        latest, start_batch = step_found, int(data_state['batches_consumed'])
        train_iter = open_train_iter(start_batch, data_state.get('loader'))
        first_batch = _next_batch(train_iter, start_batch)
      logging.info('resumed from step %d (data position %s)', latest, data_state)
  if writer.enabled:  # the run has started: record its model (and gin) config, atomically
    run_guards.write_run_files(model_dir, config=getattr(model, 'config', None),
                               gin_config=gin_config)
    writer.drop_after(int(state.step))  # steps this run (re)plays are logged again, once

  state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
  step_fn = make_train_step(model, tx, micro_batches=micro_batches,
                            learning_rate_fn=learning_rate_fn)
  with partitioner.activate():
    p_step = jax.jit(step_fn, in_shardings=(state_shardings, None),
                     out_shardings=(state_shardings, partitioner.replicated()),
                     donate_argnums=(0,))
    p_eval = jax.jit(model.eval_fn, out_shardings=partitioner.replicated())

  tokens_per_step = model.tokens_per_example(shapes) * global_batch_size
  try:
    flops_per_step = model.training_flops_per_example(shapes) * global_batch_size
  except (AttributeError, NotImplementedError):
    flops_per_step = None
  peak = peak_flops if peak_flops is not None else flops_lib.peak_flops_per_device()
  if writer.enabled:
    print(f'model: {num_params:,} params | batch {global_batch_size} x {shapes} | mesh '
          f'{dict(partitioner.mesh.shape)} | {jax.device_count()} devices | start step '
          f'{int(state.step)}', file=writer.stream, flush=True)

  result = TrainResult(step=int(state.step), losses={}, last_metrics={}, eval_metrics={},
                       resumed_from=latest, num_params=num_params)
  batches_consumed = start_batch
  step = int(state.step)
  steps_this_run = 0
  acc, window_start, window_steps = None, None, 0
  last_saved = latest
  batch = first_batch

  def save(force=False):
    nonlocal last_saved
    if ckpt.save(step, params=state.params, opt_state=state.opt_state, train_meta=state.meta(),
                 data_state={'batches_consumed': batches_consumed, 'seed': seed,
                             **_loader_state(train_iter)}, force=force):
      last_saved = step

  with _SignalCatcher(checkpoint_cfg.save_on_signal) as signals:
    try:
      while step < total_steps:
        if batch is None:
          batch = _next_batch(train_iter, batches_consumed)
        with partitioner.activate():
          state, step_metrics = p_step(state, partitioner.shard_batch(batch))
        batch = None
        batches_consumed += 1
        step += 1
        steps_this_run += 1
        host_metrics = jax.device_get(step_metrics)
        loss = metrics_lib.reduce_metrics({'loss': host_metrics['loss']})['loss']
        grad_norm = float(host_metrics['grad_norm'])
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
          ckpt.wait()
          kept = (f'the last good checkpoint is step {last_saved} in {ckpt.directory}'
                  if last_saved is not None else 'no checkpoint was written')
          raise TrainingDivergedError(
              f'training diverged at step {step}: loss={loss}, grad_norm={grad_norm}; stopped '
              f'without saving this state ({kept}). Lower the learning rate or enable clipping.')
        result.losses[step] = loss
        now = time.perf_counter()
        if window_start is None:  # the first step includes compilation: logged, not timed
          writer.write(step, metrics_lib.reduce_metrics(host_metrics))
          window_start, window_steps, acc = now, 0, None
        else:
          acc = metrics_lib.accumulate(acc, host_metrics)
          window_steps += 1
        if window_steps and (step % log_period == 0 or step == total_steps):
          elapsed = now - window_start
          scalars = metrics_lib.reduce_metrics(acc)
          scalars['step_time_s'] = elapsed / window_steps
          scalars['tokens_per_s'] = tokens_per_step * window_steps / elapsed
          if flops_per_step is not None:
            scalars['mfu'] = flops_lib.mfu(flops_per_step=flops_per_step,
                                           step_time_s=scalars['step_time_s'],
                                           num_devices=jax.device_count(), peak_flops=peak)
          writer.write(step, scalars)
          result.last_metrics = scalars
          acc, window_start, window_steps = None, time.perf_counter(), 0
        if eval_dataset_fn is not None and eval_period and (step % eval_period == 0 or
                                                            step == total_steps):
          eval_scalars = _evaluate(p_eval, state.params, eval_dataset_fn, eval_steps, partitioner)
          writer.write(step, eval_scalars, split='eval')
          result.eval_metrics[step] = eval_scalars
          window_start = time.perf_counter()
        stop_early = False
        if eval_callback is not None and (step % eval_period == 0 or step == total_steps):
          with partitioner.activate():
            out = dict(eval_callback(step, state.params) or {})
          stop_early = bool(out.pop('stop', False))
          result.callback_metrics[step] = out
          writer.write(step, {k: v for k, v in out.items() if isinstance(v, (int, float))},
                       split='callback')
          window_start = time.perf_counter()
        if checkpoint_cfg.period and step % checkpoint_cfg.period == 0:
          save()
        stop_reason = signals.received or (
            'stop_after_steps' if stop_after_steps and steps_this_run >= stop_after_steps else None)
        if (stop_reason or stop_early) and step < total_steps:
          save(force=True)
          ckpt.wait()
          if writer.enabled:
            print(f'stopping at step {step} ({stop_reason or "eval_callback: early stop"}); '
                  f'checkpoint saved in {ckpt.directory}', file=writer.stream, flush=True)
          result.interrupted = bool(stop_reason)
          result.stopped_early = not stop_reason
          break
      else:
        save(force=True)
    finally:
      ckpt.close()
      writer.close()
  result.step = step
  return result


def write_model_config(model, model_dir: str) -> Optional[str]:
  """Writes MODEL_DIR/model_config.json (`trainer.model.config_io`; what adapt/export/eval read).

  Models without a TransformerConfig / EncoderDecoderConfig `config` write nothing.
  """
  config = getattr(model, 'config', None)
  if not isinstance(config, (EncoderDecoderConfig, TransformerConfig)):
    return None
  os.makedirs(model_dir, exist_ok=True)
  return config_io.write_model_config(config, os.path.join(model_dir, config_io.MODEL_CONFIG_FILE))


def _accepts_loader_state(fn) -> bool:
  try:
    return 'loader_state' in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def _loader_state(iterator) -> Dict[str, Any]:
  """{'loader': state} for iterators that checkpoint their position (the Grain loader)."""
  get = getattr(iterator, 'checkpoint_state', None)
  return {'loader': get()} if get is not None else {}


def _next_batch(iterator, position: int):
  try:
    return next(iterator)
  except StopIteration:
    raise ValueError(f'the training dataset ran out after {position} batches; use num_epochs=None '
                     '(repeat) for training data') from None


def _evaluate(p_eval, params, eval_dataset_fn: DatasetFn, eval_steps: int,
              partitioner: partitioning.Partitioner) -> Dict[str, float]:
  acc = None
  for i, batch in enumerate(eval_dataset_fn()):
    if i >= eval_steps:
      break
    with partitioner.activate():
      acc = metrics_lib.accumulate(acc, p_eval(params, partitioner.shard_batch(batch)))
  if acc is None:
    raise ValueError('the eval dataset yielded no batch (is it smaller than one batch?)')
  return metrics_lib.reduce_metrics(acc)
