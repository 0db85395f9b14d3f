"""Dense contractions written as 2-D matmuls on CPU (XLA CPU's backward-pass transposes).

`contract(x, kernel, num_input_axes=n)` computes what
`jax.lax.dot_general(x, kernel, ((last n axes of x, first n axes of kernel), ((), ())))` computes:
x `[*lead, *in]` times kernel `[*in, *out]` -> `[*lead, *out]` (e.g. q_proj: `[B, L, D]` x
`[D, H, Dh]` -> `[B, L, H, Dh]`).

Why: the weight gradient of `[B, L, D] x [D, F]` contracts over two axes (B, L). XLA CPU lowers a
dot as a row-major 2-D matmul, so it first materialises the cotangent transposed to `[F, B, L]`,
fused with the elementwise backward that produces it (GeGLU, soft-cap) and written with strided
reads: on the t5gemma_small train step these copies were ~30% of the step (docs/performance.md,
"The train step on CPU"). With the leading axes flattened first (`[B*L, D] x [D, F]`), the
weight gradient is a 2-D dot whose transposed operand XLA folds into the matmul call
(`TransposeFolding`), and no copy is made.

Where: on the CPU backend only, decided when the function is traced (`jax.default_backend()`), so
GPU/TPU programs are unchanged. `flat_dots(False)` / `flat_dots(True)` forces one form while
tracing inside it (benchmarks and tests compare the two). Same maths either way; summation order
inside the matmul may differ in the last bits.
"""
import contextlib
import math
from typing import Iterator, Optional

import jax
import jax.numpy as jnp

_FORCED: list = [None]  # None: decide by backend; True / False: forced by `flat_dots`


@contextlib.contextmanager
def forced(cell: list, enabled: Optional[bool]) -> Iterator[None]:
  """A tracing-time switch: `cell[0]` is `enabled` within the block, then what it was."""
  previous = cell[0]
  cell[0] = enabled
  try:
    yield
  finally:
    cell[0] = previous


def flat_dots(enabled: Optional[bool]):
  """Within the block, functions traced use 2-D matmuls (True), the plain `dot_general` (False),
  or the backend default (None: 2-D on CPU). Affects tracing only, not already-compiled code."""
  return forced(_FORCED, enabled)


def flat_dots_enabled() -> bool:
  """Whether a contraction traced now is written as a 2-D matmul."""
  if _FORCED[0] is not None:
    return bool(_FORCED[0])
  return jax.default_backend() == 'cpu'


def contract(x: jax.Array, kernel: jax.Array, *, num_input_axes: int = 1,
             preferred_element_type=None) -> jax.Array:
  """x `[*lead, *in]` . kernel `[*in, *out]` -> `[*lead, *out]` (see the module docstring).

  Example: `contract(jnp.ones((2, 3, 4)), jnp.ones((4, 5, 6)))` has shape (2, 3, 5, 6).
  """
  n_in = num_input_axes
  if x.shape[x.ndim - n_in:] != kernel.shape[:n_in]:
    raise ValueError(f'contract: input axes {x.shape[x.ndim - n_in:]} != kernel input axes '
                     f'{kernel.shape[:n_in]}')
  if not flat_dots_enabled():
    dims = ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ()))
    return jax.lax.dot_general(x, kernel, dims, preferred_element_type=preferred_element_type)
  lead, out = x.shape[:x.ndim - n_in], kernel.shape[n_in:]
  k = math.prod(kernel.shape[:n_in])
  y = jnp.matmul(x.reshape(-1, k), kernel.reshape(k, -1),
                 preferred_element_type=preferred_element_type)
  return y.reshape(lead + out)


def contract_transposed(x: jax.Array, table: jax.Array, *,
                        preferred_element_type=None) -> jax.Array:
  """x `[*lead, D]` . table `[V, D]`^T -> `[*lead, V]` (tied output embedding: logits)."""
  if x.shape[-1] != table.shape[-1]:
    raise ValueError(f'contract_transposed: width {x.shape[-1]} != table width {table.shape[-1]}')
  if not flat_dots_enabled():
    return jnp.einsum('...d,vd->...v', x, table, preferred_element_type=preferred_element_type)
  y = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), table, (((1,), (1,)), ((), ())),
                          preferred_element_type=preferred_element_type)
  return y.reshape(x.shape[:-1] + (table.shape[0],))
