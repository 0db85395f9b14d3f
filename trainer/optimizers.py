"""Optimisers and learning-rate schedules on optax (no gin, no TF; gin registers these at the edge).

* `create_schedule`: linear warm-up from 0 to `base_learning_rate` over `warmup_steps`, then
  `'rsqrt'` (T5X: `base * sqrt(warmup / step)`), `'cosine'` or `'linear'` decay to
  `end_fraction * base` at `total_steps`, or `'constant'`.
* `create_optimizer`: `'adafactor'` (T5X's default: factored second moments, decay rate 0.8,
  parameter-scale-relative updates) or `'adamw'`, with optional global-norm clipping before the
  update and decoupled weight decay applied to matrices only (norm scales / vectors are not decayed).

Gradient accumulation over micro-batches is done in the train step (`trainer/trainer.py`), not with
`optax.MultiSteps`, so that one optimiser step = one train step and the loss is averaged over the
real number of target tokens.
"""
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jax.Array], jax.Array]
DECAYS = ('rsqrt', 'cosine', 'linear', 'constant')
OPTIMIZERS = ('adafactor', 'adamw')


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


def create_optimizer(*, name: str = 'adafactor',
                     learning_rate: Union[float, Schedule] = 1e-2,
                     clip_grad_norm: Optional[float] = 1.0,
                     weight_decay: float = 0.0,
                     b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                     adafactor_decay_rate: float = 0.8,
                     adafactor_momentum: Optional[float] = None,
                     adafactor_multiply_by_parameter_scale: bool = True) -> optax.GradientTransformation:
  """An optax optimiser as configured (see module docstring)."""
  if name not in OPTIMIZERS:
    raise ValueError(f'create_optimizer.name must be one of {OPTIMIZERS}, got {name!r}')
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
  if clip_grad_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(clip_grad_norm), tx)
  return tx
