"""Device mesh, logical-axis rules and shardings (the T5X "partitioner" idea, on jax.sharding).

Parameters and activations carry *logical* axis names (DESIGN.md: `vocab, embed, heads, kv_heads,
head_dim, mlp` on params, plus `layers` on the leading axis of scanned params; `batch, length, ...` on activations). A list of rules maps each logical
name to a mesh axis (`data`, `fsdp`, `tensor`) or to None (replicated). Rules are tried in order and
a mesh axis is used at most once per array (flax's `logical_to_mesh_axes` semantics), so with the
default rules an activation `[batch, length, embed]` gets `('data', 'fsdp'), None, None` while a
parameter `[vocab, embed]` gets `'tensor', 'fsdp'` (FSDP / ZeRO-3 style).

The same code runs on 1 device, on CPU with fake devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`), on GPU and on TPU; multi-host start goes
through `initialize_distributed` (`jax.distributed.initialize`).
"""
import dataclasses
import logging
import math
import os
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from flax.core import meta

MESH_AXES = ('data', 'fsdp', 'tensor')

# (logical name, mesh axis or tuple of mesh axes or None), in order of precedence.
DEFAULT_RULES: Tuple[Tuple[str, Any], ...] = (
    ('batch', ('data', 'fsdp')),
    ('vocab', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('mlp', 'tensor'),
    ('embed', 'fsdp'),
    ('length', None),
    ('head_dim', None),
    ('layers', None),   # the stacked layer axis of scanned params (TransformerConfig.scan_layers)
)

# The mesh axes a batch's leading dimension is split over.
BATCH_AXES = ('data', 'fsdp')


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the named mesh axes; -1 on one axis means "all remaining devices".

  Attributes:
    data: data-parallel replicas (params replicated along this axis).
    fsdp: data-parallel shards with parameters sharded along `embed` (ZeRO-3 style).
    tensor: tensor (model) parallelism over heads / mlp / vocab.
  """
  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def __post_init__(self):
    sizes = {'data': self.data, 'fsdp': self.fsdp, 'tensor': self.tensor}
    for name, size in sizes.items():
      if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
        raise ValueError(f'MeshConfig.{name} must be a positive int or -1, got {size!r}')
    if sum(1 for s in sizes.values() if s == -1) > 1:
      raise ValueError(f'MeshConfig: at most one axis may be -1, got {sizes}')

  def shape(self, num_devices: int) -> Tuple[int, int, int]:
    sizes = [self.data, self.fsdp, self.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % known:
        raise ValueError(f'MeshConfig {self}: {num_devices} devices are not divisible by the '
                         f'fixed axis sizes (product {known})')
      sizes = [num_devices // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != num_devices:
      raise ValueError(f'MeshConfig {self}: mesh shape {tuple(sizes)} needs {math.prod(sizes)} '
                       f'devices but {num_devices} are available')
    return tuple(sizes)


def initialize_distributed(*, coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           local_device_ids: Optional[Sequence[int]] = None) -> None:
  """Starts multi-host JAX when asked (arguments, or env JAX_COORDINATOR_ADDRESS etc.).

  With no arguments and no `JAX_COORDINATOR_ADDRESS`/`JAX_NUM_PROCESSES`/`JAX_PROCESS_ID` in the
  environment this does nothing (single process). On CPU it selects the gloo collectives so that
  several local processes can all-reduce.
  """
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if num_processes is None and os.environ.get('JAX_NUM_PROCESSES'):
    num_processes = int(os.environ['JAX_NUM_PROCESSES'])
  if process_id is None and os.environ.get('JAX_PROCESS_ID'):
    process_id = int(os.environ['JAX_PROCESS_ID'])
  if not coordinator_address:
    return
  if os.environ.get('JAX_PLATFORMS', '').startswith('cpu'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             local_device_ids=local_device_ids)
  logging.info('jax.distributed: process %d of %d', jax.process_index(), jax.process_count())


def _divisible(shape: Sequence[int], spec: jax.sharding.PartitionSpec,
               mesh: jax.sharding.Mesh) -> jax.sharding.PartitionSpec:
  """Drops mesh axes from dimensions they do not divide (such a dimension is replicated)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      out.append(None)
      continue
    names = axes if isinstance(axes, tuple) else (axes,)
    kept = tuple(n for n in names if dim % mesh.shape[n] == 0)
    # Keep a prefix whose product divides the dimension.
    while kept and dim % math.prod(mesh.shape[n] for n in kept):
      kept = kept[:-1]
    out.append(None if not kept else (kept[0] if len(kept) == 1 else kept))
  return jax.sharding.PartitionSpec(*out)


class Partitioner:
  """Owns the mesh and the logical-axis rules; turns logical annotations into shardings."""

  def __init__(self, *, mesh_config: MeshConfig = MeshConfig(),
               logical_axis_rules: Optional[Sequence[Tuple[str, Any]]] = None,
               devices: Optional[Sequence[Any]] = None):
    self.mesh_config = mesh_config
    self.rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                       for name, axes in (logical_axis_rules or DEFAULT_RULES))
    for name, axes in self.rules:
      for axis in (axes if isinstance(axes, tuple) else (axes,)):
        if axis is not None and axis not in MESH_AXES:
          raise ValueError(f'logical_axis_rules: rule for {name!r} names mesh axis {axis!r}; '
                           f'mesh axes are {MESH_AXES}')
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_config.shape(len(devices))
    device_array = np.asarray(devices).reshape(shape)
    self.mesh = jax.sharding.Mesh(
        device_array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))

  @property
  def data_parallel_size(self) -> int:
    return self.mesh.shape['data'] * self.mesh.shape['fsdp']

  def activate(self):
    """Context (mesh + rules) under which model code's logical constraints take effect."""
    return _Activation(self)

  def logical_to_sharding(self, logical_specs: Any, shapes: Any) -> Any:
    """Tree of logical PartitionSpecs + tree of shapes -> tree of NamedShardings."""
    def one(spec, shape):
      mesh_spec = nn.logical_to_mesh_axes(tuple(spec) if spec is not None else (), self.rules)
      return jax.sharding.NamedSharding(self.mesh, _divisible(shape, mesh_spec, self.mesh))
    return jax.tree_util.tree_map(
        one, logical_specs, shapes,
        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec) or x is None)

  def params_sharding(self, boxed_abstract_params: Any) -> Any:
    """Shardings for a (possibly abstract) param tree whose leaves are `nn.Partitioned` boxes.

    Unannotated leaves are replicated.
    """
    specs = meta.get_partition_spec(boxed_abstract_params)
    shapes = jax.tree_util.tree_map(lambda x: tuple(x.shape), meta.unbox(boxed_abstract_params))
    return self.logical_to_sharding(specs, shapes)

  def replicated(self) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())

  def batch_sharding(self, ndim: int = 2) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))

  def shard_batch(self, local_batch: dict) -> dict:
    """Host-local numpy batch (this process's rows) -> global jax arrays sharded over the batch."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding(np.ndim(v)),
                                                      np.asarray(v))
            for k, v in local_batch.items()}


class _Activation:

  def __init__(self, partitioner: Partitioner):
    self._p = partitioner

  def __enter__(self):
    self._mesh_ctx = jax.set_mesh(self._p.mesh)
    self._mesh_ctx.__enter__()
    self._rules_ctx = nn.logical_axis_rules(self._p.rules)
    self._rules_ctx.__enter__()
    return self._p

  def __exit__(self, *exc):
    self._rules_ctx.__exit__(*exc)
    self._mesh_ctx.__exit__(*exc)
    return False
