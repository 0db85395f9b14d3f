"""Parameter layouts of a Gemma 2 stack: unrolled (`layer_{i}`) and scanned (stacked per period).

A stack's params (`Decoder`, `Encoder`, either side of `EncoderDecoder`) come in two layouts:

  unrolled (`TransformerConfig.scan_layers=False`, the DESIGN.md contract and the on-disk default):
    {'embedder': ..., 'layer_0': BLOCK, ..., 'layer_{N-1}': BLOCK, 'final_norm': ...}
  scanned (`scan_layers=True`, `nn.scan` over groups of P = `config.scan_period` layers):
    {'embedder': ..., 'layers': {'block_0': BLOCK[G], ..., 'block_{P-1}': BLOCK[G]},
     'final_norm': ...}
    where every leaf of `block_j` has a leading axis of G = N // P (logical axis name 'layers') and
    `layers/block_j[g]` is layer `g * P + j` (Gemma 2: block_0 = the sliding layers, block_1 =
    the global ones). When P does not divide N (Gemma 3 1B: 26 layers, P = 6), the last N % P
    layers stay beside the container, unstacked and under their unrolled names
    (`'layer_24'`, `'layer_25'`): the model scans the G whole periods and runs them after.

The functions here are pure tree rewrites (no model code); they work on numpy arrays, jax arrays
and `jax.ShapeDtypeStruct`s (whose `NamedSharding` gains or loses the leading unsharded axis), on a
bare stack or on any tree holding stacks (`{'encoder', 'decoder', 'teacher'}`, a classifier's
`{'encoder', 'pooler', 'head'}`), leaving everything else untouched. Unboxed trees only (strip
flax `nn.Partitioned` boxes first).

  unrolled(params)             every stack in the tree -> unrolled (what HF export reads)
  for_config(params, config)   -> the layout `config` (Transformer or EncoderDecoder) asks for
  like(params, reference)      each stack -> the layout of the stack at the same path of
                               `reference` (concrete, abstract or orbax metadata tree)
"""
import re
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

SCAN_KEY = 'layers'        # the scanned container (also the logical axis name of the new axis)
BLOCK_PREFIX = 'block_'    # block_j inside it: the j-th layer of each period
LAYER_PREFIX = 'layer_'    # layer_i of the unrolled layout
_LAYER_RE = re.compile(r'^layer_(\d+)$')
_BLOCK_RE = re.compile(r'^block_(\d+)$')


# ----------------------------------------------------------------------------------------------
# Recognising stacks.


def _is_scanned_container(node: Any) -> bool:
  return (isinstance(node, Mapping) and bool(node)
          and all(isinstance(k, str) and _BLOCK_RE.match(k) for k in node))


def is_stack(node: Any) -> bool:
  """True for a stack's params in either layout (has `layer_0`, or a `layers/block_j` container)."""
  if not isinstance(node, Mapping):
    return False
  return f'{LAYER_PREFIX}0' in node or _is_scanned_container(node.get(SCAN_KEY))


def is_scanned(stack: Mapping[str, Any]) -> bool:
  return _is_scanned_container(stack.get(SCAN_KEY))


def is_stacked_path(keys: Sequence[str]) -> bool:
  """True for a parameter path inside a scanned container (`.../layers/block_j/...`), i.e. a leaf
  with a leading layer axis."""
  return any(keys[i] == SCAN_KEY and bool(_BLOCK_RE.match(keys[i + 1]))
             for i in range(len(keys) - 1))


def _layer_indices(stack: Mapping[str, Any]) -> list:
  indices = sorted(int(m.group(1)) for m in (_LAYER_RE.match(str(k)) for k in stack) if m)
  if indices != list(range(len(indices))):
    raise ValueError(f'stack params have layers {indices}; expected layer_0 ... layer_N-1')
  return indices


def scanned_period(stack: Mapping[str, Any]) -> Optional[int]:
  """P of a scanned stack (number of `block_j`), None for an unrolled one."""
  return len(stack[SCAN_KEY]) if is_scanned(stack) else None


# ----------------------------------------------------------------------------------------------
# Leaf operations (numpy, jax, ShapeDtypeStruct).


def _spec_of(sharding) -> Optional[tuple]:
  if isinstance(sharding, jax.sharding.NamedSharding):
    return tuple(sharding.spec)
  return None


def _stack_leaves(leaves: Sequence[Any]) -> Any:
  first = leaves[0]
  if isinstance(first, jax.ShapeDtypeStruct):
    sharding = first.sharding
    spec = _spec_of(sharding)
    if spec is not None:
      sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(None, *spec))
    return jax.ShapeDtypeStruct((len(leaves),) + tuple(first.shape), first.dtype,
                                sharding=sharding)
  if all(isinstance(x, np.ndarray) for x in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def _index_leaf(leaf: Any, index: int) -> Any:
  if isinstance(leaf, jax.ShapeDtypeStruct):
    sharding = leaf.sharding
    spec = _spec_of(sharding)
    if spec is not None:
      sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec[1:]))
    return jax.ShapeDtypeStruct(tuple(leaf.shape[1:]), leaf.dtype, sharding=sharding)
  if isinstance(leaf, np.ndarray):
    return np.array(leaf[index])
  return leaf[index]


def _leading_dim(tree: Any) -> int:
  leaves = jax.tree_util.tree_leaves(tree)
  if not leaves:
    raise ValueError('a scanned block has no parameters')
  return int(leaves[0].shape[0])


# ----------------------------------------------------------------------------------------------
# One stack.


def scan_stack(stack: Mapping[str, Any], period: int) -> dict:
  """Unrolled stack params -> scanned layout with `period` layers per scan step."""
  if is_scanned(stack):
    if scanned_period(stack) == period:
      return dict(stack)
    stack = unscan_stack(stack)  # another period: regroup
  indices = _layer_indices(stack)
  n = len(indices)
  if not n or n < period:
    raise ValueError(f'cannot scan {n} layers in groups of {period} (TransformerConfig.scan_layers '
                     'needs at least one whole period of layers)')
  groups = n // period
  # Layers past the last whole period (n % period of them) stay unrolled, under their own names.
  out = {k: v for k, v in stack.items()
         if not (_LAYER_RE.match(str(k)) and int(str(k)[len(LAYER_PREFIX):]) < groups * period)}
  out[SCAN_KEY] = {
      f'{BLOCK_PREFIX}{j}': jax.tree_util.tree_map(
          lambda *xs: _stack_leaves(xs),
          *[stack[f'{LAYER_PREFIX}{g * period + j}'] for g in range(groups)])
      for j in range(period)}
  return out


def unscan_stack(stack: Mapping[str, Any]) -> dict:
  """Scanned stack params -> unrolled layout (`layer_{g * P + j}` = `layers/block_j[g]`; the
  remainder layers `layer_{G * P}`... are already unrolled and kept as they are)."""
  if not is_scanned(stack):
    return dict(stack)
  blocks = stack[SCAN_KEY]
  period = len(blocks)
  groups = _leading_dim(blocks[f'{BLOCK_PREFIX}0'])
  out = {k: v for k, v in stack.items() if k != SCAN_KEY}
  clash = sorted(k for k in out if _LAYER_RE.match(str(k))
                 and int(str(k)[len(LAYER_PREFIX):]) < period * groups)
  if clash:
    raise ValueError(f'scanned stack has both layers/block_j (layers 0..{period * groups - 1}) and '
                     f'{clash[0]}')
  for i in range(period * groups):
    block = blocks[f'{BLOCK_PREFIX}{i % period}']
    out[f'{LAYER_PREFIX}{i}'] = jax.tree_util.tree_map(
        lambda x, g=i // period: _index_leaf(x, g), block)
  return out


# ----------------------------------------------------------------------------------------------
# Whole trees.


def _map_stacks(tree: Any, fn, reference: Any = None) -> Any:
  """Applies `fn(stack, reference_stack_or_None)` to every stack in `tree`."""
  if is_stack(tree):
    return fn(tree, reference if is_stack(reference) else None)
  if isinstance(tree, Mapping):
    ref = reference if isinstance(reference, Mapping) else {}
    return {k: _map_stacks(v, fn, ref.get(k)) for k, v in tree.items()}
  return tree


def unrolled(params: Any) -> Any:
  """Every stack in `params` in the unrolled layout (a no-op on unrolled trees)."""
  return _map_stacks(params, lambda stack, _: unscan_stack(stack))


def scanned(params: Any, period: int) -> Any:
  """Every stack in `params` scanned with `period` layers per step."""
  return _map_stacks(params, lambda stack, _: scan_stack(stack, period))


def like(params: Any, reference: Any) -> Any:
  """Each stack in `params` in the layout of the stack at the same path in `reference` (stacks
  with no counterpart there are left as they are)."""

  def convert(stack, ref):
    if ref is None:
      return stack
    if is_scanned(ref):
      return scan_stack(stack, scanned_period(ref))
    return unscan_stack(stack)

  return _map_stacks(params, convert, reference)


def for_config(params: Any, config: Any) -> Any:
  """`params` in the layout `config` asks for: a `TransformerConfig` (the tree is one stack) or an
  `EncoderDecoderConfig` (its 'encoder' and 'decoder' subtrees; other keys untouched)."""
  from trainer.model.config import EncoderDecoderConfig  # pylint: disable=g-import-not-at-top
  if isinstance(config, EncoderDecoderConfig):
    out = dict(params)
    for side in ('encoder', 'decoder'):
      if side in out:
        out[side] = for_config(out[side], getattr(config, side))
    return out
  if not is_stack(params):
    raise ValueError(f'expected the params of one stack (embedder, layer_N / layers, final_norm), '
                     f'got top-level keys {sorted(params)}')
  if config.scan_layers:
    return scan_stack(params, config.scan_period)
  return unscan_stack(params)
