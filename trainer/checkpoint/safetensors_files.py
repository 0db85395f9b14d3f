"""Writing Hugging Face weight files: one `model.safetensors`, or shards with an index.

The layout is `save_pretrained`'s: `model.safetensors` when the tensors fit in `max_shard_size`,
else `model-00001-of-0000N.safetensors` ... plus `model.safetensors.index.json` mapping every
tensor name to its file. Shared by the Gemma 2, Gemma 3, T5Gemma and T5Gemma 2 exports.
"""
import json
import os
from typing import Any, Dict, List

import ml_dtypes
import numpy as np

EXPORT_DTYPES = ('bfloat16', 'float16', 'float32')  # the names config.json's dtype takes
WEIGHTS_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'


class ShardSizeError(ValueError):
  """`max_shard_size` is neither a positive byte count nor a size like '5GB'."""


def parse_size(size: Any) -> int:
  """'5GB' / '200MB' / '50KB' / bytes -> bytes (decimal units, as transformers' save_pretrained)."""
  if isinstance(size, int) and not isinstance(size, bool) and size > 0:
    return size
  units = {'KB': 10**3, 'MB': 10**6, 'GB': 10**9, 'TB': 10**12, 'B': 1}
  text = str(size).strip().upper()
  for unit, factor in units.items():
    if text.endswith(unit) and text[:-len(unit)].strip().replace('.', '', 1).isdigit():
      return int(float(text[:-len(unit)]) * factor)
  raise ShardSizeError(f'max_shard_size must be bytes or like "5GB", got {size!r}')


def _usual_mode(path: str) -> None:
  """safetensors writes 0600 files (a temp file renamed); give them the mode `open()` would."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, 0o666 & ~umask)


def write_weights(tensors: Dict[str, np.ndarray], out_dir: str, max_shard_size: Any) -> List[str]:
  """Writes the tensors (names sorted) into `out_dir`; returns the weight files written.

  Weight files of an earlier export in `out_dir` (perhaps sharded differently) are removed first.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  limit = None if max_shard_size is None else parse_size(max_shard_size)
  shards, current, size = [], {}, 0
  for name in sorted(tensors):
    nbytes = tensors[name].nbytes
    if limit is not None and current and size + nbytes > limit:
      shards.append(current)
      current, size = {}, 0
    current[name] = tensors[name]
    size += nbytes
  shards.append(current)
  for stale in os.listdir(out_dir):
    if stale.endswith('.safetensors') or stale == INDEX_FILE:
      os.remove(os.path.join(out_dir, stale))
  metadata = {'format': 'pt'}  # transformers refuses safetensors files without it
  if len(shards) == 1:
    path = os.path.join(out_dir, WEIGHTS_FILE)
    save_file(shards[0], path, metadata=metadata)
    _usual_mode(path)
    return [path]
  paths, weight_map = [], {}
  for i, shard in enumerate(shards):
    name = f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
    save_file(shard, os.path.join(out_dir, name), metadata=metadata)
    _usual_mode(os.path.join(out_dir, name))
    paths.append(os.path.join(out_dir, name))
    weight_map.update({k: name for k in shard})
  index = {'metadata': {'total_size': int(sum(t.nbytes for t in tensors.values()))},
           'weight_map': weight_map}
  with open(os.path.join(out_dir, INDEX_FILE), 'w') as f:
    json.dump(index, f, indent=2, sort_keys=True)
  return paths


def write_cast(tensors: Dict[str, Any], out_dir: str, *, dtype=None, max_shard_size=None) -> str:
  """Casts every tensor to `dtype` (default: the first tensor's) and writes them as
  `write_weights` does; returns the dtype's name (what config.json records)."""
  if dtype is None:
    dtype = str(np.asarray(next(iter(tensors.values()))).dtype)
  if dtype not in EXPORT_DTYPES:
    raise ValueError(f'export dtype must be one of {sorted(EXPORT_DTYPES)}, got {dtype!r}')
  np_dtype = ml_dtypes.bfloat16 if dtype == 'bfloat16' else np.dtype(dtype)
  tensors = {name: np.ascontiguousarray(np.asarray(a).astype(np_dtype))
             for name, a in tensors.items()}
  os.makedirs(out_dir, exist_ok=True)
  write_weights(tensors, out_dir, max_shard_size)
  return dtype
