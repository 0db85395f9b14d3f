"""Generation under the mesh: params and the batch placed by `trainer.training.partitioning`.

Decoding shards like training (`partitioning.DEFAULT_RULES`): params by their logical axes (with
the default rules `[vocab, embed]` -> `('tensor', 'fsdp')`), every batch-major array (prompts,
lengths, example ids) over `('data', 'fsdp')`. The KV cache and the loop state follow from
these by XLA's sharding propagation (their leading, or for scanned stacks second, axis is the
batch). Rows are independent, so the generated ids equal one device's.

  p = partitioning.Partitioner(mesh_config=partitioning.MeshConfig(data=2, fsdp=2))
  params = put_params(partitioner=p, config=cfg, params=params)   # once; reused by every call
  decoding.generate(config=cfg, params=params, prompt_tokens=[[0, 17, 9]],
                    max_decode_length=8, partitioner=p)
  # -> a batch of 1 is padded to 4 rows (one per data-parallel shard) and cut back to 1

`padded_rows(batch, partitioner)`: a batch must split evenly over the data-parallel devices;
`generate` pads it with copies of its last row and drops them from the result.
"""
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from trainer.model import scan_layout
from trainer.model.config import EncoderDecoderConfig
from trainer.training import partitioning


def _module(config):
  """The flax module whose params `config` describes (as `trainer.training.models` builds it)."""
  # pylint: disable=g-import-not-at-top
  if isinstance(config, EncoderDecoderConfig):
    if config.merged_attention:
      from trainer.model.tied_encoder_decoder import TiedEncoderDecoder
      return TiedEncoderDecoder(config)
    from trainer.model.transformer import EncoderDecoder
    return EncoderDecoder(config)
  from trainer.model.transformer import Decoder
  return Decoder(config)


@functools.lru_cache(maxsize=16)
def param_shardings(*, partitioner: partitioning.Partitioner, config: Any) -> Any:
  """NamedShardings of `config`'s params (its layout: scanned or unrolled) under the mesh."""
  dummy = jnp.ones((1, 4), jnp.int32)
  args = (dummy, dummy) if isinstance(config, EncoderDecoderConfig) else (dummy,)
  boxed = jax.eval_shape(lambda: _module(config).init(jax.random.PRNGKey(0), *args))['params']
  return partitioner.params_sharding(boxed)


def _put(value, sharding):
  """A host value (the same on every process) as a global array with `sharding`; arrays already
  placed so are returned as they are."""
  if isinstance(value, jax.Array) and value.sharding == sharding:
    return value
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def put_params(*, partitioner: partitioning.Partitioner, config: Any, params: Any) -> Any:
  """`params` (any layout, numpy or jax) in `config`'s layout, sharded by the partitioner's rules.

  Raises ValueError naming the first tensor whose shape differs from the model's."""
  shardings = param_shardings(partitioner=partitioner, config=config)
  # A distillation run's checkpoint keeps its frozen teacher beside the student's entries
  # (params['teacher']): only the model's own top-level entries are placed.
  params = {k: v for k, v in params.items() if k in shardings}
  params = scan_layout.for_config(params, config)
  flat, tree = jax.tree_util.tree_flatten_with_path(params)
  want = dict(jax.tree_util.tree_flatten_with_path(shardings)[0])
  placed = []
  for path, value in flat:
    if path not in want:
      raise ValueError(f'params: tensor {jax.tree_util.keystr(path)} is not in the model of '
                       f'this config')
    placed.append(_put(value, want[path]))
  return jax.tree_util.tree_unflatten(tree, placed)


def padded_rows(batch: int, partitioner: partitioning.Partitioner) -> int:
  """The smallest multiple of the data-parallel size (data x fsdp) that holds `batch` rows."""
  size = partitioner.data_parallel_size
  return -(-batch // size) * size


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
  """`array` [B, ...] extended to `rows` rows with copies of its last row."""
  array = np.asarray(array)
  if rows == array.shape[0]:
    return array
  return np.concatenate([array, np.repeat(array[-1:], rows - array.shape[0], axis=0)], axis=0)


def put_batch(*, partitioner: partitioning.Partitioner,
              arrays: Sequence[np.ndarray]) -> Sequence[jax.Array]:
  """Batch-major host arrays (the whole batch on every process) sharded over ('data', 'fsdp')."""
  return [_put(a, partitioner.batch_sharding(np.ndim(a))) for a in arrays]
