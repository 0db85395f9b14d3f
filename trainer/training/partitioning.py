"""Device mesh, logical-axis rules and shardings (the T5X "partitioner" idea, on jax.sharding).

Parameters and activations carry *logical* axis names (DESIGN.md: `vocab, embed, heads, kv_heads,
head_dim, mlp` on params, plus `layers` on the leading axis of scanned params; `batch, length, ...` on activations). A list of rules maps each logical
name to a mesh axis (`data`, `fsdp`, `tensor`) or to None (replicated). Rules are tried in order and
a mesh axis is used at most once per array (flax's `logical_to_mesh_axes` semantics), so with the
default rules an activation `[batch, length, embed]` gets `('data', 'fsdp'), None, None` while a
parameter `[vocab, embed]` gets `'tensor', 'fsdp'` (FSDP / ZeRO-3 style).

The same code runs on 1 device, on CPU with fake devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`), on GPU and on TPU; multi-host start goes
through `initialize_distributed` (`jax.distributed.initialize`, from flags or the environment).
Multi-slice TPU jobs add DCN sizes to `MeshConfig` (`dcn_data=<slices>`); `device_mesh` lays the
devices out with `jax.experimental.mesh_utils` (ICI torus order inside a slice, slices as blocks).
"""
import dataclasses
import logging
import math
import os
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from flax.core import meta
from jax.experimental import mesh_utils

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
  """Sizes of the named mesh axes: within a slice (ICI) and across slices (DCN).

  Each mesh axis `data`, `fsdp`, `tensor` has size `ici * dcn` (MaxText's `ici_*_parallelism` x
  `dcn_*_parallelism`). On one slice (or GPU/CPU) only the ICI sizes matter. On a multi-slice TPU
  job the DCN sizes say how the slices are laid out, usually `dcn_data=<number of slices>` (pure
  data parallelism over the slow data-centre network; `fsdp`/`tensor` stay inside a slice).

  Attributes:
    data: data-parallel replicas per slice (params replicated along this axis); -1 = the rest.
    fsdp: data-parallel shards per slice with parameters sharded along `embed` (ZeRO-3 style).
    tensor: tensor (model) parallelism per slice over heads / mlp / vocab.
    dcn_data, dcn_fsdp, dcn_tensor: how many slices along each axis (positive ints; their product
      is the number of slices).
  """
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  dcn_data: int = 1
  dcn_fsdp: int = 1
  dcn_tensor: int = 1

  def __post_init__(self):
    sizes = {'data': self.data, 'fsdp': self.fsdp, 'tensor': self.tensor}
    for name, size in sizes.items():
      if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
        raise ValueError(f'MeshConfig.{name} must be a positive int or -1, got {size!r}')
    if sum(1 for s in sizes.values() if s == -1) > 1:
      raise ValueError(f'MeshConfig: at most one axis may be -1, got {sizes}')
    for name in ('dcn_data', 'dcn_fsdp', 'dcn_tensor'):
      size = getattr(self, name)
      if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f'MeshConfig.{name} must be a positive int, got {size!r}')

  @property
  def num_slices(self) -> int:
    return self.dcn_data * self.dcn_fsdp * self.dcn_tensor

  def dcn_shape(self) -> Tuple[int, int, int]:
    return (self.dcn_data, self.dcn_fsdp, self.dcn_tensor)

  def ici_shape(self, devices_per_slice: int) -> Tuple[int, int, int]:
    """The per-slice (ICI) sizes for `devices_per_slice` devices (resolves -1)."""
    sizes = [self.data, self.fsdp, self.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if devices_per_slice % known:
        raise ValueError(f'MeshConfig {self}: {devices_per_slice} devices per slice are not '
                         f'divisible by the fixed axis sizes (product {known})')
      sizes = [devices_per_slice // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != devices_per_slice:
      raise ValueError(f'MeshConfig {self}: per-slice mesh shape {tuple(sizes)} needs '
                       f'{math.prod(sizes)} devices but {devices_per_slice} are available')
    return tuple(sizes)

  def shape(self, num_devices: int) -> Tuple[int, int, int]:
    """The whole mesh's shape (ICI x DCN per axis) for `num_devices` devices."""
    if num_devices % self.num_slices:
      raise ValueError(f'MeshConfig {self}: {num_devices} devices do not split into '
                       f'{self.num_slices} slices')
    ici = self.ici_shape(num_devices // self.num_slices)
    return tuple(i * d for i, d in zip(ici, self.dcn_shape()))


def device_mesh(mesh_config: MeshConfig, devices: Sequence[Any], *,
                slice_index_fn: Optional[Callable[[Any], int]] = None) -> np.ndarray:
  """Devices arranged as `mesh_config.shape(len(devices))` with `jax.experimental.mesh_utils`.

  One slice: `create_device_mesh(ici_shape)` (on TPU the ICI torus order). Several slices:
  `create_hybrid_device_mesh(ici_shape, dcn_shape)`, whose slices are the devices'
  `slice_index` (TPU multi-slice) or, where devices have none, their `process_index`; each slice
  is one contiguous block of the mesh (slice s of `dcn_data=n` holds data indices
  `[s * data, (s + 1) * data)`). `slice_index_fn(device) -> int` overrides which slice a device is
  in (fake slices on CPU devices in tests), building the same layout from per-slice
  `create_device_mesh` blocks.
  """
  devices = list(devices)
  mesh_config.shape(len(devices))  # raises the clear error for a device count that cannot fit
  ici = mesh_config.ici_shape(len(devices) // mesh_config.num_slices)
  dcn = mesh_config.dcn_shape()
  if mesh_config.num_slices == 1:
    return _with_split_retry(mesh_utils.create_device_mesh, ici, devices)
  by_attr = 'slice_index' if hasattr(devices[0], 'slice_index') else 'process_index'
  key = slice_index_fn or (lambda d: getattr(d, by_attr))
  slices = {}
  for d in devices:
    slices.setdefault(key(d), []).append(d)
  if len(slices) != mesh_config.num_slices:
    how = 'slice_index_fn' if slice_index_fn else by_attr
    raise ValueError(f'MeshConfig {mesh_config}: the devices form {len(slices)} slices (by '
                     f'{how}) but dcn_data * dcn_fsdp * dcn_tensor = {mesh_config.num_slices}')
  if slice_index_fn is None:
    return _with_split_retry(mesh_utils.create_hybrid_device_mesh, ici, dcn, devices,
                             process_is_granule=by_attr == 'process_index')
  blocks = [_with_split_retry(mesh_utils.create_device_mesh, ici, slices[k])
            for k in sorted(slices)]
  nested = np.vectorize(lambda i: blocks[i], otypes=[object])(
      np.arange(len(blocks)).reshape(dcn))
  return np.block(nested.tolist())


def _with_split_retry(build, *args, **kwargs):
  """`build(...)`; if the TPU torus cannot host the shape unsplit, again splitting physical axes."""
  try:
    return build(*args, **kwargs)
  except (ValueError, NotImplementedError) as e:
    if 'allow_split_physical_axes' not in str(e) and 'split' not in str(e):
      raise
    logging.info('mesh: %s; splitting physical axes', e)
    return build(*args, allow_split_physical_axes=True, **kwargs)


# Environment of a multi-host Cloud TPU job in which `jax.distributed.initialize()` finds the
# coordinator, process count and id by itself: GKE/xpk set TPU_WORKER_HOSTNAMES (all hosts of the
# slice) and, for multi-slice, MEGASCALE_COORDINATOR_ADDRESS; on TPU VMs started by hand
# (`gcloud ... ssh --worker=all`) set JAX_DISTRIBUTED=auto.
_AUTO_ENV = ('JAX_DISTRIBUTED', 'TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS')


def auto_distributed_env(environ=None) -> bool:
  """True when the environment says this is one host of a multi-host TPU job (see _AUTO_ENV)."""
  env = os.environ if environ is None else environ
  if env.get('JAX_DISTRIBUTED', '').lower() == 'auto':
    return True
  if env.get('MEGASCALE_COORDINATOR_ADDRESS'):
    return True
  return len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h.strip()]) > 1


def initialize_distributed(*, coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           local_device_ids: Optional[Sequence[int]] = None) -> None:
  """Starts multi-host JAX when asked (arguments, or environment variables).

  - Arguments or `JAX_COORDINATOR_ADDRESS` (+ `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`): explicit.
    On CPU this selects the gloo collectives so that several local processes can all-reduce.
  - A multi-host TPU job (`auto_distributed_env`: `JAX_DISTRIBUTED=auto`, several
    `TPU_WORKER_HOSTNAMES`, or `MEGASCALE_COORDINATOR_ADDRESS` of a multi-slice job):
    `jax.distributed.initialize()` with no arguments, which reads the TPU environment.
  - Otherwise nothing (single process).
  """
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if num_processes is None and os.environ.get('JAX_NUM_PROCESSES'):
    num_processes = int(os.environ['JAX_NUM_PROCESSES'])
  if process_id is None and os.environ.get('JAX_PROCESS_ID'):
    process_id = int(os.environ['JAX_PROCESS_ID'])
  if not coordinator_address:
    if auto_distributed_env():
      jax.distributed.initialize()
      logging.info('jax.distributed (from the TPU environment): process %d of %d',
                   jax.process_index(), jax.process_count())
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
               devices: Optional[Sequence[Any]] = None,
               slice_index_fn: Optional[Callable[[Any], int]] = None):
    """`devices`: default all (`jax.devices()`); `slice_index_fn`: see `device_mesh`."""
    self.mesh_config = mesh_config
    self.rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                       for name, axes in (logical_axis_rules or DEFAULT_RULES))
    for name, axes in self.rules:
      for axis in (axes if isinstance(axes, tuple) else (axes,)):
        if axis is not None and axis not in MESH_AXES:
          raise ValueError(f'logical_axis_rules: rule for {name!r} names mesh axis {axis!r}; '
                           f'mesh axes are {MESH_AXES}')
    devices = list(devices if devices is not None else jax.devices())
    mesh_config.shape(len(devices))  # the clear error first
    device_array = device_mesh(mesh_config, devices, slice_index_fn=slice_index_fn)
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
