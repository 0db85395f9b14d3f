"""Cross-attention warm-up: an optax wrapper that freezes every other parameter for K steps.

T5Gemma (arXiv 2504.06225, section 3) adapts an unbalanced pair (e.g. a 9B encoder with a 2B
decoder) whose decoder cross-attention starts from random weights. For the first K optimizer steps
only the cross-attention parameters train; every other parameter stays exactly at its pretrained
value; after that everything trains.

`freeze_until(inner, trainable=..., num_steps=K)` wraps any optax `GradientTransformation`. The inner
optimizer runs unchanged on the full gradient tree (so its moment estimates for the frozen parameters
are already warm when they unfreeze); only its *final* updates for the frozen parameters are replaced
by exact zeros while `step < K`. Zeroing the final updates (rather than the gradients) is what keeps
the frozen parameters bit-identical even when the inner chain adds decoupled weight decay, which
would otherwise move a parameter whose gradient is zero. `optax.apply_updates` adds `0.0`, which
leaves every finite value unchanged.

Where to put it: wrap the per-step optimizer, *inside* any gradient accumulation
(`optax.MultiSteps`), so that the step counter here counts real optimizer steps. In gin,
`gin/runs/adapt.gin` wraps the trainer's optimizer factory with `cross_attention_warmup`.

Usage:
  tx = freeze_until(optax.adamw(1e-3, weight_decay=0.1), trainable=is_cross_attention, num_steps=1000)
"""
from typing import Any, Callable, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import optax

# A predicate over a parameter's path (tuple of string keys, e.g.
# ('decoder', 'layer_3', 'cross_attn', 'q_proj', 'kernel')).
PathPredicate = Callable[[Sequence[str]], bool]


class FreezeState(NamedTuple):
  """State of `freeze_until`: optimizer steps taken so far and the wrapped optimizer's state."""
  count: jax.Array  # int32 scalar
  inner_state: Any


def path_keys(path) -> tuple:
  """A `jax.tree_util` key path as a tuple of plain strings ('layer_0', 'kernel', '0', ...)."""
  keys = []
  for entry in path:
    if isinstance(entry, jax.tree_util.DictKey):
      keys.append(str(entry.key))
    elif isinstance(entry, jax.tree_util.GetAttrKey):
      keys.append(str(entry.name))
    elif isinstance(entry, jax.tree_util.SequenceKey):
      keys.append(str(entry.idx))
    else:
      keys.append(str(entry))
  return tuple(keys)


def is_cross_attention(path: Sequence[str]) -> bool:
  """True for the decoder's cross-attention block: `cross_attn` and its pre/post norms.

  The parameter names follow DESIGN.md: `cross_attn/{q,k,v,o}_proj/kernel`,
  `pre_cross_attn_norm/scale`, `post_cross_attn_norm/scale`. Flax partitioning boxes add a
  trailing `value` key, which does not matter here.
  """
  return any('cross_attn' in key for key in path)


def trainable_mask(params: Any, trainable: PathPredicate) -> Any:
  """A pytree of Python bools with `params`' structure: True where `trainable(path)` holds."""
  return jax.tree_util.tree_map_with_path(lambda path, _: bool(trainable(path_keys(path))), params)


def freeze_until(inner: optax.GradientTransformation, *, trainable: PathPredicate = is_cross_attention,
                 num_steps: Union[int, jax.Array]) -> optax.GradientTransformation:
  """Wraps `inner` so that, while `step < num_steps`, only `trainable` parameters get updates.

  Args:
    inner: the optimizer to wrap (any optax transformation, e.g. the trainer's AdamW/Adafactor).
    trainable: predicate on a parameter's key path; parameters for which it is False get exact zero
      updates during the warm-up. Default: the decoder's cross-attention (`is_cross_attention`).
    num_steps: K, the number of warm-up optimizer steps (0 disables freezing).

  Returns:
    An `optax.GradientTransformation` whose state is `FreezeState(count, inner_state)`.

  Raises:
    ValueError: `num_steps` is negative, or no parameter is trainable during the warm-up (a
      misconfigured predicate would otherwise silently train nothing for K steps).
  """
  if isinstance(num_steps, int) and num_steps < 0:
    raise ValueError(f'freeze_until: num_steps must be >= 0, got {num_steps}')

  def init_fn(params):
    mask = trainable_mask(params, trainable)
    if num_steps and not any(jax.tree_util.tree_leaves(mask)):
      raise ValueError(
          'freeze_until: no parameter matches the trainable predicate '
          f'({getattr(trainable, "__name__", trainable)}); during the {num_steps}-step warm-up nothing '
          'would train. Is this an encoder-decoder model with cross-attention?')
    return FreezeState(count=jnp.zeros([], jnp.int32), inner_state=inner.init(params))

  def update_fn(updates, state, params=None):
    new_updates, inner_state = inner.update(updates, state.inner_state, params)
    frozen_phase = state.count < num_steps

    def select(path, update):
      if trainable(path_keys(path)):
        return update
      # jnp.where, not a multiply: 0 * inf or 0 * nan would not be 0.
      return jnp.where(frozen_phase, jnp.zeros_like(update), update)

    new_updates = jax.tree_util.tree_map_with_path(select, new_updates)
    count = optax.safe_int32_increment(state.count)
    return new_updates, FreezeState(count=count, inner_state=inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


def cross_attention_warmup(optimizer: Union[optax.GradientTransformation, Callable[..., Any]], *,
                           warmup_steps: int = 1000) -> Any:
  """Gin-facing wrapper: freezes all but cross-attention for `warmup_steps` (CROSS_ATTN_WARMUP_STEPS).

  Accepts either an optax transformation or a factory returning one (the trainer's optimizer factory);
  returns the same kind of object, wrapped with `freeze_until(..., trainable=is_cross_attention)`.
  """
  if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
    raise ValueError(
        f'CROSS_ATTN_WARMUP_STEPS (cross_attention_warmup.warmup_steps) must be an int >= 0, '
        f'got {warmup_steps!r}')
  return _wrap(optimizer, lambda tx: freeze_until(tx, trainable=is_cross_attention, num_steps=warmup_steps),
               'cross_attention_warmup')


def _wrap(optimizer, wrap_fn, what: str):
  """Applies `wrap_fn` to an optax transformation, or to what a factory returns."""
  if isinstance(optimizer, optax.GradientTransformation):
    return wrap_fn(optimizer)
  if not callable(optimizer):
    raise ValueError(f'{what}.optimizer must be an optax.GradientTransformation or a factory '
                     f'returning one, got {type(optimizer).__name__}')

  def factory(*args, **kwargs):
    inner = optimizer(*args, **kwargs)
    if not isinstance(inner, optax.GradientTransformation):
      raise ValueError(f'{what}: the wrapped optimizer factory returned {type(inner).__name__}, '
                       'not an optax.GradientTransformation')
    return wrap_fn(inner)

  return factory


def freeze_top_level(inner: optax.GradientTransformation, *,
                     frozen_keys: Sequence[str]) -> optax.GradientTransformation:
  """Never updates the top-level subtrees `frozen_keys` (e.g. a distillation teacher).

  Built on `optax.multi_transform`: the frozen subtrees get `optax.set_to_zero()` (exact zero
  updates, so they stay bit-identical) and keep NO optimizer state, which matters for a teacher as
  large as the student; `inner` sees only the other parameters (its global-norm clipping too).
  """
  frozen_keys = tuple(frozen_keys)

  def labels(params):
    def label(path, _):
      keys = path_keys(path)
      return 'frozen' if keys and keys[0] in frozen_keys else 'train'
    return jax.tree_util.tree_map_with_path(label, params)

  return optax.multi_transform({'train': inner, 'frozen': optax.set_to_zero()}, labels)


def freeze_teacher(optimizer: Union[optax.GradientTransformation, Callable[..., Any]]) -> Any:
  """Gin-facing: keeps the distillation teacher (`params['teacher']`, see trainer.adaptation.distillation)
  frozen. Put it outermost (around `cross_attention_warmup`) so no inner optimizer sees the teacher."""
  return _wrap(optimizer, lambda tx: freeze_top_level(tx, frozen_keys=('teacher',)), 'freeze_teacher')
