"""The on-disk contract of a cache: what the cache job writes and what the reader looks for.

    <output_cache_dir>/
      <task>.in512_tg512/                 one directory per cached task (`cached_task_name`)
        <split>.tfrecord-00000-of-00016   shards of serialized tf.Example (`shard_file_name`)
        <split>.tfrecord_index-00000-of-00016   each shard's record index (`index_file_name`)
        info.<split>.json                 seqio's: number of shards, feature dtypes and ranks
        stats.<split>.json                counts and token figures (`pipelines.cache.stats`)
        deadletter.<split>.jsonl          bad input records, one JSON object per line
        cache_job.json                    what was cached (`JOB_INFO`: task, lengths, seed, modules)
        COMPLETED                         written last: only then is the directory read
      <mixture>.in512_tg512.mixture.json  a cached mixture over cached tasks (same rates)
      .progress/                          the running job's progress files (removed at the end)

A record index (`INDEX_MAGIC`, then the record count and one `(frame offset, payload length)`
pair per record, all little-endian uint64) makes a shard randomly accessible without TensorFlow
(`pipelines.cache.records`, the Grain loader); the job writes it beside each shard, before
`COMPLETED`, and `python -m pipelines.cache_index --cache_dir=DIR` (`INDEX_COMMAND`) adds it to
caches written before it existed. Its name does not match seqio's shard glob, so seqio reads the
cache as before.

The shard, info and `COMPLETED` names are seqio's (`seqio.get_task_dir_from_name` and
`_CachedDataSource`), so seqio reads a cached task as any cache. Plain Python: no TF at import.
"""
import json
import os
from typing import Mapping

COMPLETED = 'COMPLETED'
JOB_INFO = 'cache_job.json'
PROGRESS_DIR = '.progress'
MIXTURE_SUFFIX = '.mixture.json'
# Seqio's task names allow `[\w\d\.\:_#]`; `:` would become a sub-folder in the cache layout
# (seqio.get_task_dir_from_name), so the length suffix is joined with a dot.
_SHORT_FEATURE_NAMES = {'inputs': 'in', 'targets': 'tg'}


def cached_task_name(task_name: str, feature_lengths: Mapping[str, int]) -> str:
  """The seqio task name of `task_name` cached at `feature_lengths`.

  >>> cached_task_name('wiki_ul2', {'inputs': 512, 'targets': 256})
  'wiki_ul2.in512_tg256'
  """
  parts = [f'{_SHORT_FEATURE_NAMES.get(k, k)}{v}' for k, v in sorted(feature_lengths.items())]
  return f"{task_name}.{'_'.join(parts)}"


def task_output_dir(output_cache_dir: str, cached_name: str) -> str:
  return os.path.join(output_cache_dir, *cached_name.split(':'))


def shard_file_name(split: str, shard: int, num_shards: int) -> str:
  # seqio's _CachedDataSource globs '<split>.tfrecord-*-of-*<num_shards>'.
  return f'{split}.tfrecord-{shard:05d}-of-{num_shards:05d}'


def shard_glob(split: str) -> str:
  return f'{split}.tfrecord-*'


INDEX_MAGIC = b'GAIDX001'
INDEX_COMMAND = 'python -m pipelines.cache_index --cache_dir='


def index_file_name(split: str, shard: int, num_shards: int) -> str:
  """The record index of `shard_file_name(split, shard, num_shards)`.

  >>> index_file_name('train', 3, 16)
  'train.tfrecord_index-00003-of-00016'
  """
  return f'{split}.tfrecord_index-{shard:05d}-of-{num_shards:05d}'


def index_of_shard(shard_name: str) -> str:
  """`train.tfrecord-00003-of-00016` -> `train.tfrecord_index-00003-of-00016`."""
  head, sep, tail = shard_name.rpartition('.tfrecord-')
  if not sep:
    raise ValueError(f'{shard_name!r} is not a cache shard name')
  return f'{head}.tfrecord_index-{tail}'


def info_file_name(split: str) -> str:
  return f'info.{split}.json'


def stats_file_name(split: str) -> str:
  return f'stats.{split}.json'


def dead_letter_file_name(split: str) -> str:
  return f'deadletter.{split}.jsonl'


def mixture_file_name(cached_mixture: str) -> str:
  return f'{cached_mixture}{MIXTURE_SUFFIX}'


def info_json(output_features, num_shards: int, seqio_version: str) -> dict:
  """seqio's info.<split>.json: what `_CachedDataSource` needs to parse the shards."""
  return {'num_shards': num_shards,
          'features': {k: {'shape': [None] * f.rank, 'dtype': f.dtype.name}
                       for k, f in sorted(output_features.items())},
          'seqio_version': seqio_version}


def write_json(path: str, obj) -> None:
  """Writes `obj` as indented, key-sorted JSON (local path or any tf.io.gfile URL)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write(json.dumps(obj, indent=2, sort_keys=True) + '\n')


def read_json(path: str):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)
