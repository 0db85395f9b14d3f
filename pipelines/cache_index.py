r"""Adds the record indexes of random-access reading to caches written before they existed.

  python -m pipelines.cache_index --cache_dir=/data/cache            # every completed cached task
  python -m pipelines.cache_index --cache_dir=/data/cache --overwrite   # rebuild them all

For each completed task directory (`COMPLETED`) of `--cache_dir`, each shard
`<split>.tfrecord-SSSSS-of-NNNNN` without its `<split>.tfrecord_index-SSSSS-of-NNNNN` gets one
(`pipelines.cache.records.build_index`: every record's length and payload CRC32C checked; a
corrupted shard is an error naming it). The bytes are those the cache job writes itself. Written
via a temporary name and renamed, so a killed run leaves no half index. Seqio reads the cache as
before. No TensorFlow.
"""
import glob
import os
import sys
import uuid
from typing import Callable, List

from absl import flags

from pipelines.cache import layout
from pipelines.cache import records
from tasks import cli

_CACHE_DIR = flags.DEFINE_string('cache_dir', None, 'A pipelines.cache_tasks --output_cache_dir.')
_OVERWRITE = flags.DEFINE_boolean('overwrite', False, 'Rebuild indexes that exist.')


class CacheIndexError(cli.UserError, ValueError):
  """A cache that cannot be indexed (one line)."""


def add_indexes(cache_dir: str, *, overwrite: bool = False,
                log: Callable[[str], None] = print) -> List[str]:
  """Writes the missing record indexes under `cache_dir`; returns the index paths written."""
  if not os.path.isdir(cache_dir):
    raise CacheIndexError(f'--cache_dir: {cache_dir!r} is not a directory')
  written = []
  task_dirs = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(cache_dir, '*',
                                                                      layout.COMPLETED)))
  for task_dir in task_dirs:
    shards = sorted(p for p in glob.glob(os.path.join(task_dir, '*.tfrecord-*-of-*'))
                    if not p.endswith('.tmp') and '.tmp-' not in p)
    for shard in shards:
      path = os.path.join(task_dir, layout.index_of_shard(os.path.basename(shard)))
      if os.path.exists(path) and not overwrite:
        continue
      try:
        data = records.build_index(shard)
      except ValueError as e:
        raise CacheIndexError(f'{e}') from None
      tmp = f'{path}.tmp-{uuid.uuid4().hex}'
      with open(tmp, 'wb') as f:
        f.write(data)
      os.replace(tmp, path)
      written.append(path)
    log(f'{os.path.basename(task_dir)}: {len(shards)} shard(s) indexed')
  if not task_dirs:
    log(f'no completed cached task in {cache_dir}')
  return written


def main(argv) -> int:
  del argv
  if not _CACHE_DIR.value:
    raise CacheIndexError('--cache_dir is required')
  written = add_indexes(_CACHE_DIR.value, overwrite=_OVERWRITE.value)
  print(f'cache_index: {len(written)} index file(s) written')
  return 0


if __name__ == '__main__':
  sys.exit(cli.run(main, program='cache_index'))
