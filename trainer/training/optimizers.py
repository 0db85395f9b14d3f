"""Optimisers and learning-rate schedules on optax (no gin, no TF; gin registers these at the edge).

* `create_schedule`: linear warm-up from 0 to `base_learning_rate` over `warmup_steps`, then
  `'rsqrt'` (T5X: `base * sqrt(warmup / step)`), `'cosine'` or `'linear'` decay to
  `end_fraction * base` at `total_steps`, or `'constant'`.
* `create_optimizer`: `'adafactor'` (T5X's default: factored second moments, decay rate 0.8,
  parameter-scale-relative updates) or `'adamw'`, with optional global-norm clipping before the
  update and decoupled weight decay applied to matrices only (norm scales / vectors are not decayed).

  The per-parameter part runs under `layerwise`, so scanned (layer-stacked) params get exactly the
  updates their unrolled layers would.
* `master_dtype='float32'` (`with_master_copy`): for bf16 params (`param_dtype='bfloat16'`), the
  optimiser keeps an fp32 master copy of the params in its state, applies the updates to it, and
  the params become the master rounded to their dtype after every step (`apply_updates`).

Gradient accumulation over micro-batches is done in the train step (`trainer.training.loop`), not with
`optax.MultiSteps`, so that one optimiser step = one train step and the loss is averaged over the
real number of target tokens.
"""
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from trainer.training import freezing
from trainer.model import scan_layout

Schedule = Callable[[jax.Array], jax.Array]
DECAYS = ('rsqrt', 'cosine', 'linear', 'constant')
OPTIMIZERS = ('adafactor', 'adamw')
MASTER_DTYPES = ('float32',)


def create_schedule(*, base_learning_rate: float = 1e-2, warmup_steps: int = 1000,
                    decay: str = 'rsqrt', total_steps: Optional[int] = None,
                    end_fraction: float = 0.0) -> Schedule:
  """Warm-up + decay schedule: `step -> learning rate` (jit-friendly)."""
  if decay not in DECAYS:
    raise ValueError(f'create_schedule.decay must be one of {DECAYS}, got {decay!r}')
  if base_learning_rate <= 0:
    raise ValueError(f'create_schedule.base_learning_rate must be > 0, got {base_learning_rate}')
  if warmup_steps < 0:
    raise ValueError(f'create_schedule.warmup_steps must be >= 0, got {warmup_steps}')
  if decay in ('cosine', 'linear') and (total_steps is None or total_steps <= warmup_steps):
    raise ValueError(f'create_schedule.total_steps must be > warmup_steps ({warmup_steps}) for '
                     f'{decay!r} decay, got {total_steps!r}')
  if not 0.0 <= end_fraction <= 1.0:
    raise ValueError(f'create_schedule.end_fraction must be in [0, 1], got {end_fraction}')
  base = float(base_learning_rate)
  warm = max(int(warmup_steps), 0)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm_factor = jnp.minimum(1.0, (step + 1.0) / warm) if warm else 1.0
    after = jnp.maximum(step - warm, 0.0)
    if decay == 'rsqrt':
      decay_factor = jnp.sqrt(max(warm, 1) / jnp.maximum(step, max(warm, 1)))
    elif decay == 'constant':
      decay_factor = 1.0
    else:
      frac = jnp.minimum(after / float(total_steps - warm), 1.0)
      if decay == 'cosine':
        shape = 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
      else:
        shape = 1.0 - frac
      decay_factor = end_fraction + (1.0 - end_fraction) * shape
    return base * warm_factor * decay_factor

  return schedule


def _decay_mask(params):
  return jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)


def layerwise(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """Runs `inner` layer by layer on scanned params (`TransformerConfig.scan_layers`).

  Leaves under `layers/block_j` (`scan_layout`) carry a leading layer axis; `inner` is vmapped over
  it, so whatever `inner` computes per tensor (Adafactor's factored second moments, its
  parameter-scale and update clipping, which use a tensor's RMS; the weight-decay mask, which looks
  at `ndim`) sees one layer's tensor, exactly as in the unrolled layout. Other leaves go to `inner`
  as they are. A tree with no stacked leaf gets `inner` itself (same state layout as before).
  Global transformations (clipping by the global norm) belong outside this wrapper.
  """

  def stacked(path) -> bool:
    return scan_layout.is_stacked_path(freezing.path_keys(path))

  def has_stacked(tree) -> bool:
    return any(stacked(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0])

  def labels(tree):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: 'stacked' if stacked(path) else 'other', tree)

  per_layer = optax.GradientTransformation(jax.vmap(inner.init), jax.vmap(inner.update))
  split = optax.multi_transform({'other': inner, 'stacked': per_layer}, labels)

  def init_fn(params):
    return split.init(params) if has_stacked(params) else inner.init(params)

  def update_fn(updates, state, params=None):
    if has_stacked(updates):
      return split.update(updates, state, params)
    return inner.update(updates, state, params)

  return optax.GradientTransformation(init_fn, update_fn)


class MasterCopyState(NamedTuple):
  """State of `with_master_copy`: the master params and the wrapped optimiser's state."""
  master: Any
  inner_state: Any


def with_master_copy(inner: optax.GradientTransformation, *,
                     dtype: str = 'float32') -> optax.GradientTransformation:
  """Keeps a `dtype` master copy of the params in the optimiser state (mixed-precision training
  with low-precision, e.g. bf16, params).

  init: master = params cast to `dtype`; `inner` is initialised on the master.
  update: the gradients are cast to `dtype`, `inner` updates the master (it sees the master as
  its params: weight decay, Adafactor's parameter scale), and the returned updates take each param
  to the new master rounded to the param's dtype. `apply_updates` (the train step's) makes that
  rounding exact; plain `optax.apply_updates` gets it exactly except where a param shrinks by more
  than 2**16 in one step, where it can be one bf16 ulp off (the master is unaffected).
  The master lives in the optimiser state, so checkpoints save and restore it with `opt_state`.
  """
  dtype = jnp.dtype(dtype)

  def init_fn(params):
    master = jax.tree_util.tree_map(lambda p: jnp.asarray(p).astype(dtype), params)
    return MasterCopyState(master=master, inner_state=inner.init(master))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('with_master_copy: update() needs the params')
    grads = jax.tree_util.tree_map(lambda g: g.astype(dtype), updates)
    inner_updates, inner_state = inner.update(grads, state.inner_state, state.master)
    master = optax.apply_updates(state.master, inner_updates)
    new_updates = jax.tree_util.tree_map(
        lambda m, p: m.astype(p.dtype).astype(dtype) - p.astype(dtype), master, params)
    return new_updates, MasterCopyState(master=master, inner_state=inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


def apply_updates(params, updates, opt_state):
  """`optax.apply_updates`, then every param that has a master copy in `opt_state` (a
  `MasterCopyState` anywhere in it, e.g. inside freezing wrappers) set to that master rounded to
  the param's dtype, exactly."""
  params = optax.apply_updates(params, updates)
  is_master = lambda x: isinstance(x, MasterCopyState)
  states = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=is_master) if is_master(s)]
  if not states:
    return params
  masters = {}
  for state in states:
    masters.update(jax.tree_util.tree_flatten_with_path(state.master)[0])
  return jax.tree_util.tree_map_with_path(
      lambda path, p: masters[path].astype(p.dtype) if path in masters else p, params)


def create_optimizer(*, name: str = 'adafactor',
                     learning_rate: Union[float, Schedule] = 1e-2,
                     clip_grad_norm: Optional[float] = 1.0,
                     weight_decay: float = 0.0,
                     b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                     adafactor_decay_rate: float = 0.8,
                     adafactor_momentum: Optional[float] = None,
                     adafactor_multiply_by_parameter_scale: bool = True,
                     master_dtype: Optional[str] = None) -> optax.GradientTransformation:
  """An optax optimiser as configured (see module docstring).

  `master_dtype`: None updates the params in their own dtype; 'float32' keeps an fp32 master copy
  in the optimiser state (`with_master_copy`; gin: `MASTER_DTYPE` in gin/runs/pretrain.gin) for
  bf16 params. With fp32 params it is a redundant copy.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f'create_optimizer.name must be one of {OPTIMIZERS}, got {name!r}')
  if master_dtype is not None and master_dtype not in MASTER_DTYPES:
    raise ValueError(f'create_optimizer.master_dtype must be None or one of {MASTER_DTYPES}, got '
                     f'{master_dtype!r}')
  if clip_grad_norm is not None and clip_grad_norm <= 0:
    raise ValueError(f'create_optimizer.clip_grad_norm must be > 0 or None, got {clip_grad_norm}')
  if weight_decay < 0:
    raise ValueError(f'create_optimizer.weight_decay must be >= 0, got {weight_decay}')
  if name == 'adafactor':
    tx = optax.adafactor(learning_rate=learning_rate, decay_rate=adafactor_decay_rate,
                         momentum=adafactor_momentum,
                         multiply_by_parameter_scale=adafactor_multiply_by_parameter_scale,
                         weight_decay_rate=weight_decay or None,
                         weight_decay_mask=_decay_mask)
  else:
    tx = optax.adamw(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
                     weight_decay=weight_decay, mask=_decay_mask)
  tx = layerwise(tx)
  if clip_grad_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(clip_grad_norm), tx)
  if master_dtype is not None:
    tx = with_master_copy(tx, dtype=master_dtype)
  return tx
