"""The train state: step, params, optimiser state and the run's base RNG (a pytree; no TF, no gin).

Dropout keys are `fold_in(rng, step)`, so the state alone (no hidden RNG stream) determines every
later step: a run restored at step k continues exactly as the uninterrupted run would.
"""
from typing import Any

import flax.struct
import jax
import optax


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # raw PRNG key data (uint32[2]), checkpointable as a plain array

  @classmethod
  def create(cls, *, params, tx: optax.GradientTransformation, rng: jax.Array) -> 'TrainState':
    return cls(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
               opt_state=tx.init(params), rng=rng)

  def dropout_rng(self) -> jax.Array:
    return jax.random.fold_in(self.rng, self.step)

  def meta(self):
    return {'step': self.step, 'rng': self.rng}
