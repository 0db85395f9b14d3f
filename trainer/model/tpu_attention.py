"""TPU fused attention: JAX's Pallas splash attention with soft-cap, sliding windows and packing.

Same contract as `trainer.model.reference_attention.reference_attention` (query `[B, L, H, Dh]`,
key/value `[B, S, K, Dh]`, `mask`, `scale`, `soft_cap` -> `[B, L, H, Dh]` in the query dtype).
`trainer.model.fused_attention.fused_attention` sends `attention_impl='fused'` here on a TPU
backend (or anywhere inside `force_kernel(interpret=True)`, which the CPU tests use).

Why splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) and not tokamax's Mosaic
TPU attention: tokamax 0.0.12's TPU op rejects per-query key ranges (`k_start`/`k_end`) and
batched boolean masks, so it cannot express packed segments; splash takes `SegmentIds`, a static
`LocalMask`/`CausalMask` (blocks outside it are skipped), `attn_logits_soft_cap`, grouped-query
heads (`H` a multiple of `K`, no K/V repeat) and `L != S`, forward and backward, and it has an
interpret mode that runs on CPU. (tokamax's TPU op wraps the same kernel.)

How the project's `AttentionMask` maps onto it (array indices i = query, j = key):

  causal, no window           CausalMask                          j <= i
  causal, window w            LocalMask(window_size=(w - 1, 0))    i - w < j <= i
  not causal, window w        LocalMask(window_size=(w, w))        |i - j| <= w   (inclusive)
  not causal, no window       FullMask                             all j
  q and kv segment ids        SegmentIds(q, kv)                    same id
  kv segment ids only         SegmentIds(q=1, kv=(kv != 0))        no padding key (cross-attn)

Queries whose row sees no key (padding queries) get a finite output (splash gives them the same
uniform average as the reference; padding queries of segment 0 may also see padding keys of
segment 0); no real token's output or loss depends on them. Lengths that are not a multiple of
128 (the kernel's lane width) are padded at the end with segment-0 positions and cut back.

Not expressible, so the call falls back to the reference with one logged message: a PrefixLM
`bidirectional` prefix (per example, data dependent). Inside a mesh (`jax.set_mesh`, as the
trainer's `Partitioner.activate()` does) the kernel runs under `shard_map` with the batch split
over the mesh axes that the logical rules give `batch` and the heads over those of `heads` /
`kv_heads` (an axis that does not divide a dimension is dropped: replicated).

Block sizes (`block_sizes_for`, chosen for head_dim 256; not tuned on a TPU — see BLOCK_TABLE).
"""
import contextlib
import dataclasses
import logging
import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trainer.model import reference_attention as reference

LANES = 128  # splash blocks are multiples of the TPU lane width

# Block sizes by sequence length (q and kv chosen alike, each from its own length), for head_dim
# 256 in bf16. Per block the kernel holds q [bq, 256], k/v [bkv, 256] and fp32 logits
# [bq, bkv_compute] in VMEM: 512 x 512 x 4 B = 1 MiB of logits plus ~1.5 MiB of q/k/v tiles
# (double-buffered), inside v5e's 16 MiB / v5p's 16 MiB default scoped VMEM. Larger kv blocks
# (1024) halve the grid steps along kv at 2k-8k; the compute sub-block stays 512. The backward
# (separate dq and dkv kernels) uses the same tiles. Chosen from the VMEM budget and MaxText's
# published defaults for Gemma 2 (512 everywhere); NOT measured on a TPU.
#   length     block_q  block_kv  block_kv_compute   (backward: dkv q/kv/compute, dq q/kv)
#   <= 512     L        S         S                    same as forward
#   1024       512      1024      512                  512/1024/512, 512/1024
#   2048       512      1024      512                  512/1024/512, 512/1024
#   4096       512      1024      512                  512/1024/512, 512/1024
#   8192       512      1024      512                  512/1024/512, 512/1024
BLOCK_TABLE = (
    # (max length, block_q, block_kv, block_kv_compute)
    (512, None, None, None),     # None: the whole (padded) length in one block
    (1 << 30, 512, 1024, 512),
)

_WARNED = set()
_FORCED: Optional[dict] = None


class Unsupported(Exception):
  """The mask or shapes cannot be expressed by the splash kernel (the caller falls back)."""


def _warn_once(reason: str) -> None:
  if reason not in _WARNED:
    _WARNED.add(reason)
    logging.warning('attention_impl=fused (TPU splash attention): %s; using the reference '
                    'attention for these calls.', reason)


@contextlib.contextmanager
def force_kernel(*, interpret: bool = True):
  """Within the context (at trace time), `attention_impl='fused'` uses this kernel on any backend.

  `interpret=True` runs the Pallas kernel in interpret mode (CPU; slow, for tests and checks);
  `interpret=False` emits the Mosaic TPU kernel (only a TPU compiles it; lowering for a TPU
  target works anywhere, see `scripts/tpu_compile_check.py`).
  """
  global _FORCED
  previous, _FORCED = _FORCED, {'interpret': interpret}
  try:
    yield
  finally:
    _FORCED = previous


def wanted() -> bool:
  """True when the fused path should use this kernel: a TPU backend, or `force_kernel`."""
  return _FORCED is not None or jax.default_backend() == 'tpu'


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _pick(length: int, preferred: Optional[int]) -> int:
  """Largest multiple of LANES <= preferred that divides `length` (a multiple of LANES)."""
  if preferred is None or preferred >= length:
    return length
  block = preferred
  while length % block:
    block -= LANES
  return block


def block_sizes_for(q_len: int, kv_len: int):
  """BLOCK_TABLE -> splash `BlockSizes` for padded lengths (multiples of LANES)."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top
  longest = max(q_len, kv_len)
  _, bq, bkv, bkv_c = next(row for row in BLOCK_TABLE if longest <= row[0])
  bq, bkv = _pick(q_len, bq), _pick(kv_len, bkv)
  bkv_c = _pick(bkv, bkv_c)
  return splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv_c,
                           block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv_c,
                           block_q_dq=bq, block_kv_dq=bkv)


def _static_mask(mask: Optional[reference.AttentionMask], q_len: int, kv_len: int):
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top
  shape = (q_len, kv_len)
  window = None if mask is None else mask.sliding_window
  causal = mask is not None and mask.causal
  if causal and window is not None:
    return splash.LocalMask(shape, window_size=(int(window) - 1, 0), offset=0)
  if causal:
    return splash.CausalMask(shape)
  if window is not None:
    return splash.LocalMask(shape, window_size=(int(window), int(window)), offset=0)
  return splash.FullMask(shape)


def _segment_ids(mask: Optional[reference.AttentionMask], batch: int, q_len: int, kv_len: int,
                 q_pad: int, kv_pad: int) -> Optional[Tuple[jax.Array, jax.Array]]:
  """(q `[B, Lp]`, kv `[B, Sp]`) int32 segment ids for the padded lengths, or None."""
  q_seg = kv_seg = None
  if mask is not None and mask.kv_segment_ids is not None:
    kv_seg = mask.kv_segment_ids.astype(jnp.int32)
    if mask.q_segment_ids is not None:
      q_seg = mask.q_segment_ids.astype(jnp.int32)
    else:
      kv_seg = (kv_seg != 0).astype(jnp.int32)
      q_seg = jnp.ones((batch, q_len), jnp.int32)
  elif kv_pad:
    kv_seg = jnp.ones((batch, kv_len), jnp.int32)
    q_seg = jnp.ones((batch, q_len), jnp.int32)
  if kv_seg is None:
    return None
  q_seg = jnp.broadcast_to(q_seg, (batch, q_len))
  kv_seg = jnp.broadcast_to(kv_seg, (batch, kv_len))
  return (jnp.pad(q_seg, ((0, 0), (0, q_pad))), jnp.pad(kv_seg, ((0, 0), (0, kv_pad))))


_KNOWN_FIELDS = ('q_segment_ids', 'kv_segment_ids', 'bidirectional', 'causal', 'sliding_window')


def _check_known_fields(mask: Optional[reference.AttentionMask]) -> None:
  """A mask field added after this module (e.g. a decode offset) that is set: not expressible
  here until this module maps it, so the call falls back instead of silently ignoring it."""
  if mask is None:
    return
  for field in dataclasses.fields(mask):
    value = getattr(mask, field.name)
    if field.name in _KNOWN_FIELDS or value is None:
      continue
    if not isinstance(value, (jax.Array, np.ndarray)) and value == field.default:
      continue
    raise Unsupported(f'AttentionMask.{field.name} is not mapped onto the splash kernel')


def _mesh_specs(batch: int, num_heads: int, num_kv_heads: int):
  """PartitionSpecs for q/out `[B, L, H, D]`, k/v `[B, S, K, D]` and segment ids `[B, L]` under
  the active mesh and logical rules, or None outside a mesh of more than one device."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or mesh.size == 1:
    return None
  P = jax.sharding.PartitionSpec

  def axes_for(logical: str, dim: int):
    spec = nn.logical_to_mesh_axes((logical,))
    axes = spec[0] if len(spec) else None
    if axes is None:
      return None
    names = axes if isinstance(axes, tuple) else (axes,)
    kept = tuple(n for n in names if n in mesh.shape and mesh.shape[n] > 1)
    while kept and dim % math.prod(mesh.shape[n] for n in kept):
      kept = kept[:-1]
    return kept or None

  batch_axes = axes_for('batch', batch)
  head_axes = axes_for('heads', num_heads)
  kv_axes = axes_for('kv_heads', num_kv_heads)
  if head_axes != kv_axes:  # GQA groups must stay on one device: shard heads only together
    head_axes = kv_axes = None
  if batch_axes is None and head_axes is None:
    return None
  return mesh, P(batch_axes, None, head_axes, None), P(batch_axes, None, kv_axes, None), P(
      batch_axes, None)


def splash_attention(query, key, value, *, mask: Optional[reference.AttentionMask],
                     scale: float, soft_cap: Optional[float],
                     interpret: bool = False) -> jax.Array:
  """The splash kernel under the reference contract; raises `Unsupported` for what it cannot do."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top
  _check_known_fields(mask)
  if mask is not None and mask.bidirectional is not None:
    raise Unsupported('a PrefixLM bidirectional prefix (per example) is not a static splash mask')
  batch, q_len, num_heads, _ = query.shape
  kv_len, num_kv_heads = key.shape[1], key.shape[2]
  if num_heads % num_kv_heads:
    raise Unsupported(f'{num_heads} query heads are not a multiple of {num_kv_heads} kv heads')
  if query.dtype not in (jnp.float32, jnp.bfloat16):
    raise Unsupported(f'dtype {query.dtype} (splash takes float32 and bfloat16)')
  q_len_p, kv_len_p = _round_up(q_len, LANES), _round_up(kv_len, LANES)
  q_pad, kv_pad = q_len_p - q_len, kv_len_p - kv_len
  segments = _segment_ids(mask, batch, q_len, kv_len, q_pad, kv_pad)
  static = _static_mask(mask, q_len_p, kv_len_p)
  block_sizes = block_sizes_for(q_len_p, kv_len_p)
  # [B, L, H, D] -> [B, H, L, D] (the kernel's head-major layout); scale folded into q.
  q = jnp.swapaxes(jnp.pad(query * jnp.asarray(scale, query.dtype),
                           ((0, 0), (0, q_pad), (0, 0), (0, 0))), 1, 2)
  k = jnp.swapaxes(jnp.pad(key, ((0, 0), (0, kv_pad), (0, 0), (0, 0))), 1, 2)
  v = jnp.swapaxes(jnp.pad(value, ((0, 0), (0, kv_pad), (0, 0), (0, 0))), 1, 2)

  def run(q, k, v, q_seg, kv_seg):
    # Built inside (per shard under shard_map): the mask info depends only on static shapes.
    kernel = splash.make_splash_mha(
        splash.MultiHeadMask([static] * q.shape[1]), block_sizes=block_sizes, head_shards=1,
        q_seq_shards=1, attn_logits_soft_cap=soft_cap, interpret=interpret)
    if q_seg is None:
      return jax.vmap(kernel)(q, k, v)
    return jax.vmap(kernel)(q, k, v, splash.SegmentIds(q=q_seg, kv=kv_seg))

  q_seg, kv_seg = segments if segments is not None else (None, None)
  specs = _mesh_specs(batch, num_heads, num_kv_heads)
  if specs is None:
    out = run(q, k, v, q_seg, kv_seg)
  else:
    mesh, _, _, seg_spec = specs
    head_major = lambda s: jax.sharding.PartitionSpec(s[0], s[2], s[1], s[3])
    q_spec, kv_spec = head_major(specs[1]), head_major(specs[2])
    args, in_specs = [q, k, v], [q_spec, kv_spec, kv_spec]
    if q_seg is not None:
      args += [q_seg, kv_seg]
      in_specs += [seg_spec, seg_spec]
    sharded = jax.shard_map(
        lambda *a: run(*a[:3], *(a[3:] if len(a) > 3 else (None, None))),
        mesh=mesh, in_specs=tuple(in_specs), out_specs=q_spec, check_vma=False)
    out = sharded(*args)
  return jnp.swapaxes(out, 1, 2)[:, :q_len].astype(query.dtype)


def tpu_fused_attention(query, key, value, *, mask: Optional[reference.AttentionMask],
                        scale: float, soft_cap: Optional[float],
                        interpret: Optional[bool] = None) -> jax.Array:
  """Splash attention, or the reference (one logged message per reason) where it cannot apply.

  `interpret`: None = as `force_kernel` says (False on a TPU outside it).
  """
  if interpret is None:
    interpret = bool(_FORCED and _FORCED['interpret'])
  try:
    return splash_attention(query, key, value, mask=mask, scale=scale, soft_cap=soft_cap,
                            interpret=interpret)
  except Unsupported as e:
    _warn_once(str(e))
    return reference.reference_attention(query, key, value, mask=mask, scale=scale,
                                         soft_cap=soft_cap)
