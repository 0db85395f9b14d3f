"""Fused attention: tokamax's Pallas flash attention with soft-cap, local windows and packing.

Same interface as `trainer.model.reference_attention.reference_attention` (query `[B, L, H, Dh]`, key/value
`[B, S, K, Dh]`, `mask: AttentionMask | None`, `scale`, `soft_cap` -> `[B, L, H, Dh]` in the query
dtype); `trainer.model.attention` dispatches to it for `attention_impl='fused'`.

tokamax's public `dot_product_attention` has no segment ids, but its kernels take per-query key
ranges (`Mask(k_start=, k_end=)`: query i sees keys `k_start[i] <= j < k_end[i]`) and skip whole
key blocks outside them. Packing, causality, the PrefixLM prefix and the sliding window all
become such a range:

  segment:   [start of the query's segment, end of it)      (from kv segment ids, O(S) per row)
  causal:    end <= i + 1, or, for a query in the bidirectional prefix, end <= end of that prefix
  window:    causal: i - w < j < i + w;  bidirectional: i - w <= j <= i + w   (as the reference)

This is exact when every segment id occupies one contiguous run of positions and each segment's
PrefixLM prefix is contiguous from the segment's start — what seqio's packing and PrefixLM feature
converters produce. When there are kv segment ids but no query segment ids (cross-attention
without decoder segments), padding keys are excluded by a `[B, 1, 1, S]` boolean (broadcast, not
materialised per query). Queries that see no key at all (padding queries, segment id 0) get a
finite but unspecified output: the reference gives them a uniform average, and either way no real
token's output or loss depends on them.

On a TPU backend (or inside `trainer.model.tpu_attention.force_kernel`) the call goes to
`trainer.model.tpu_attention` (JAX's Pallas splash attention; see that module for which masks are
fused). Elsewhere off GPU (CPU), without tokamax, or when tokamax rejects the shapes, this falls
back to the reference path and logs one warning per reason.
"""
import logging
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from trainer.model import reference_attention as reference
from trainer.model import tpu_attention

# tokamax implementation names tried in order on GPU ('mosaic' = Mosaic GPU on sm90/sm100,
# 'triton' = Pallas Triton). 'xla' is tokamax's unfused reference (used by the CPU tests).
DEFAULT_GPU_IMPLEMENTATIONS = ('mosaic', 'triton')

_WARNED = set()


def _warn_once(reason: str) -> None:
  if reason not in _WARNED:
    _WARNED.add(reason)
    logging.warning('attention_impl=fused: %s; using the reference attention instead.', reason)


def _segment_bounds(segment_ids: jax.Array, num_segments: int):
  """Per row: first index and one-past-last index of each segment id (`[B, num_segments]`).

  Absent ids get (length, 0), i.e. an empty range."""
  length = segment_ids.shape[-1]
  idx = jnp.arange(length, dtype=jnp.int32)
  seg = jnp.clip(segment_ids.astype(jnp.int32), 0, num_segments - 1)

  def one_row(row):
    first = jax.ops.segment_min(idx, row, num_segments=num_segments)
    last = jax.ops.segment_max(idx, row, num_segments=num_segments)
    return jnp.minimum(first, length), jnp.maximum(last + 1, 0)

  return jax.vmap(one_row)(seg)


def _take_rows(table: jax.Array, ids: jax.Array) -> jax.Array:
  """table `[B, N]`, ids `[B, L]` -> `table[b, ids[b, l]]`."""
  return jnp.take_along_axis(table, ids, axis=1)


def key_ranges(mask: Optional[reference.AttentionMask], q_len: int, kv_len: int):
  """AttentionMask -> (k_start `[B or 1, L]`, k_end `[B or 1, L]`, kv_valid `[B, S]` or None).

  Query i may attend key j iff `k_start[i] <= j < k_end[i]` (and `kv_valid[j]` when given).
  Rows whose range would be empty get `[0, S)` (see the module docstring).
  """
  q_idx = jnp.arange(q_len, dtype=jnp.int32)[None, :]
  k_start = jnp.zeros((1, q_len), jnp.int32)
  k_end = jnp.full((1, q_len), kv_len, jnp.int32)
  kv_valid = None
  if mask is None:
    return k_start, k_end, kv_valid
  q_seg, kv_seg = mask.q_segment_ids, mask.kv_segment_ids
  if kv_seg is not None and q_seg is not None:
    num_segments = max(q_len, kv_len) + 1
    q_seg = jnp.clip(q_seg.astype(jnp.int32), 0, num_segments - 1)
    first, end = _segment_bounds(kv_seg, num_segments)
    k_start = _take_rows(first, q_seg)
    k_end = _take_rows(end, q_seg)
  elif kv_seg is not None:
    kv_valid = kv_seg != 0
  if mask.causal:
    limit = q_idx + 1
    if mask.bidirectional is not None:
      prefix = jnp.asarray(mask.bidirectional).astype(bool)
      # End of the prefix a prefix query belongs to: the prefix positions of its segment.
      if q_seg is not None and kv_seg is not None:
        prefix_seg = jnp.where(prefix, q_seg, 0)
        _, prefix_end = _segment_bounds(prefix_seg, max(q_len, kv_len) + 1)
        row_prefix_end = _take_rows(prefix_end, q_seg)
      else:
        row_prefix_end = jnp.max(jnp.where(prefix, q_idx + 1, 0), axis=1, keepdims=True)
      limit = jnp.where(prefix, jnp.maximum(limit, row_prefix_end), limit)
    k_end = jnp.minimum(k_end, limit)
    if mask.sliding_window is not None:
      w = int(mask.sliding_window)
      k_start = jnp.maximum(k_start, q_idx - w + 1)
      k_end = jnp.minimum(k_end, q_idx + w)
  elif mask.sliding_window is not None:
    left, right = mask.window_bounds()  # (w, w) unless `bidirectional_window` says otherwise
    k_start = jnp.maximum(k_start, q_idx - left)
    k_end = jnp.minimum(k_end, q_idx + right + 1)
  k_start = jnp.clip(k_start, 0, kv_len)
  k_end = jnp.clip(k_end, 0, kv_len)
  empty = k_end <= k_start
  k_start = jnp.where(empty, 0, k_start)
  k_end = jnp.where(empty, kv_len, k_end)
  return k_start, k_end, kv_valid


def tokamax_attention(query, key, value, *, mask: Optional[reference.AttentionMask],
                      scale: float, soft_cap: Optional[float],
                      implementation: Sequence[str]) -> jax.Array:
  """tokamax attention with the mask given as key ranges (raises what tokamax raises)."""
  from tokamax._src.ops.attention import api as tk_api  # pylint: disable=g-import-not-at-top
  from tokamax._src.ops.attention import base as tk_base  # pylint: disable=g-import-not-at-top
  # The public `tokamax.dot_product_attention` builds its own Mask from lengths and a symmetric
  # window; per-query k_start/k_end (segments, PrefixLM) need `base.Mask`, which the same
  # implementations accept (`api.IMPLEMENTATIONS[name](q, k, v, mask=Mask, ...)`).
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    # tokamax reads its options from absl flags and, when nothing has parsed them, parses
    # `sys.argv` itself — which fails on any other program's arguments (pytest's, our gin
    # `--gin.X=` ones). Keep every absl flag at its default instead.
    flags.FLAGS.mark_as_parsed()
  q_len, kv_len = query.shape[1], key.shape[1]
  k_start, k_end, kv_valid = key_ranges(mask, q_len, kv_len)
  bool_mask = None if kv_valid is None else kv_valid[:, None, None, :]
  tk_mask = tk_base.Mask(bool_mask, k_start=k_start[:, None, :], k_end=k_end[:, None, :])
  errors = []
  for name in implementation:
    if name == 'mosaic':
      name = 'mosaic_gpu' if 'NVIDIA' in jax.devices()[0].device_kind else 'mosaic_tpu'
    if name not in tk_api.IMPLEMENTATIONS:
      errors.append(NotImplementedError(f'tokamax has no implementation {name!r} here'))
      continue
    try:
      return tk_api.IMPLEMENTATIONS[name](query, key, value, mask=tk_mask, logits_scale=scale,
                                          logits_soft_cap=soft_cap)
    except NotImplementedError as e:
      errors.append(e)
  raise NotImplementedError('; '.join(f'{type(e).__name__}: {str(e)[:200]}' for e in errors))


def fused_attention(query, key, value, *, mask: Optional[reference.AttentionMask],
                    scale: float, soft_cap: Optional[float],
                    implementation: Optional[Sequence[str]] = None) -> jax.Array:
  """Fast path with the reference path's contract (see the module docstring).

  `implementation`: tokamax implementation names to try in order (default
  `DEFAULT_GPU_IMPLEMENTATIONS` on GPU). With the default: on TPU the splash kernel
  (`trainer.model.tpu_attention`), elsewhere off GPU the reference.
  """
  if implementation is None and tpu_attention.wanted():
    return tpu_attention.tpu_fused_attention(query, key, value, mask=mask, scale=scale,
                                             soft_cap=soft_cap)
  if implementation is None:
    if jax.default_backend() != 'gpu':
      _warn_once(f'no GPU (backend {jax.default_backend()!r}); the Pallas kernels need one')
      return reference.reference_attention(query, key, value, mask=mask, scale=scale,
                                               soft_cap=soft_cap)
    implementation = DEFAULT_GPU_IMPLEMENTATIONS
  try:
    import tokamax  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    _warn_once('tokamax is not installed (pip install tokamax==0.0.12)')
    return reference.reference_attention(query, key, value, mask=mask, scale=scale,
                                             soft_cap=soft_cap)
  try:
    return tokamax_attention(query, key, value, mask=mask, scale=scale, soft_cap=soft_cap,
                             implementation=tuple(implementation))
  except NotImplementedError as e:
    _warn_once(f'tokamax cannot run these shapes here ({str(e)[:300]})')
    return reference.reference_attention(query, key, value, mask=mask, scale=scale,
                                             soft_cap=soft_cap)
