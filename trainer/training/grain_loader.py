"""The Grain loader: the Beam job's caches by random access, exactly resumable, no TensorFlow.

    loader = GrainLoader(cache_dir='/data/cache', name='wiki_ul2_mix',
                         task_feature_lengths={'inputs': 512, 'targets': 512},
                         converter=numpy_converters.for_model(model, pack=True, ...),
                         batch_size=64, seed=0)
    it = loader.iterator()              # or loader.iterator(state) to resume
    batch = next(it)                    # {'encoder_input_tokens': int32[64, 512], ...}
    state = it.get_state()              # {'chunk': 17, 'row': 3, ...}: JSON, O(1) to restore

The example stream, a pure function of (cache, name, lengths, seed, process index and count):
  1. each task of `name` (a task, or a mixture's tasks and rates, `pipelines.cache.records`) is a
     Grain `MapDataset` over its cached examples, shuffled globally with a seeded permutation that
     changes every epoch (`EpochShuffle`; its seed from the run's seed and the task name);
  2. a mixture interleaves its tasks deterministically in proportion to their rates
     (`MapDataset.mix`);
  3. host h of n takes positions h, h + n, h + 2n, ... (per-host sharding);
  4. consecutive examples form packing chunks of `converter.chunk_size` (seqio's packing
     window), each planned into rows by the NumPy feature converter (identical to seqio's rows;
     a batch's rows are written and converted to the model's features when it is taken);
  5. rows are read ahead by Grain (`prefetch` threads, or `worker_count` processes via
     `mp_prefetch`, which keeps the order) and stacked into batches of `batch_size` rows.
The state is (next chunk, rows of it already used): resuming starts Grain at that chunk, so the
first batch after a restore costs the same at step 10 or 10^6 and nothing is replayed. With
`num_epochs` set (evaluation) the tasks are not repeated and the stream ends.
"""
from __future__ import annotations

import inspect
import logging
import zlib
from typing import Any, Dict, Iterator, Mapping, Optional

import numpy as np

from pipelines.cache import records
from trainer.training import numpy_packing

STATE_VERSION = 1


# The length of an endless stream: 2**62 examples. Not sys.maxsize: Grain's `batch` computes its
# length through a float, and ceil(sys.maxsize / 1) rounds up past the largest index, so an
# unpacked (chunk of 1) stream failed with OverflowError.
ENDLESS = 2**62


def _grain():
  import grain  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags (defaults suffice).
    flags.FLAGS.mark_as_parsed()
  return grain


def task_seed(seed: int, task_dir: str) -> int:
  """The shuffle seed of one task of the stream: from the run's seed and the task's name."""
  name = task_dir.rstrip('/').rsplit('/', 1)[-1]
  return (int(seed) * 1_000_003 + zlib.crc32(name.encode('utf-8'))) % 2**32


class EpochShuffle:
  """Stream position -> example: epoch e = position // N is a permutation of the N examples.

  The permutation of epoch e is `PCG64(SeedSequence([seed, e])).permutation(N)` (one per epoch,
  computed on first use and kept for the two most recent epochs; Grain's own index shuffle costs
  about 1 ms per element). `shuffle=False`: the cache's order every epoch. Picklable.
  """

  def __init__(self, source, *, seed: int, shuffle: bool, raw: bool = False):
    self.source = source
    self.seed = seed
    self.shuffle = shuffle
    self.raw = raw  # Give `(source, index, CRC-checked payload)`, decoded later in a batch.
    self._perms: Dict[int, np.ndarray] = {}

  def __getstate__(self):
    return {**self.__dict__, '_perms': {}}

  def permutation(self, epoch: int) -> np.ndarray:
    perm = self._perms.get(epoch)
    if perm is None:
      rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
      perm = rng.permutation(len(self.source))
      if len(self._perms) >= 2:
        self._perms.pop(min(self._perms))
      self._perms[epoch] = perm
    return perm

  def __call__(self, position: int):
    epoch, index = divmod(int(position), len(self.source))
    if self.shuffle:
      index = int(self.permutation(epoch)[index])
    if self.raw:
      return self.source, index, self.source.raw(index)
    return self.source[index]


def decode_raw(items) -> list:
  """`(source, index, payload)` items -> their examples, each source's payloads decoded together
  (`CachedSplit.decode`: one vectorised varint pass per ~256 KB)."""
  out = [None] * len(items)
  by_source = {}
  for position, (source, index, raw) in enumerate(items):
    by_source.setdefault(id(source), (source, []))[1].append((position, index, raw))
  for source, entries in by_source.values():
    decoded = source.decode([e[1] for e in entries], [e[2] for e in entries])
    for (position, _, _), example in zip(entries, decoded):
      out[position] = example
  return out


class _Plan:
  """Packing chunk (list of raw examples) -> its packing plan (`numpy_packing.PackedChunk`: the
  kept values as flat arrays, so little crosses a process boundary); picklable for workers. The
  rows are written when a batch takes them (`LoaderIterator`), never a whole window at once."""

  def __init__(self, converter):
    self.converter = converter

  def __call__(self, items):
    # As a dict of arrays: a worker process hands those over in shared memory, not pickled.
    return self.converter.plan(decode_raw(list(items))).as_tree()


class GrainLoader:
  """A cached task or mixture as a resumable stream of host-local numpy batches."""

  def __init__(self, *, cache_dir: str, name: str, task_feature_lengths: Mapping[str, int],
               converter, batch_size: int, split: str = 'train', seed: int = 0,
               shuffle: bool = True, num_epochs: Optional[int] = None, process_index: int = 0,
               process_count: int = 1, worker_count: int = 0, prefetch: int = 2):
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index {process_index} not in [0, {process_count})')
    self.sources = records.resolve_cached(cache_dir, name, task_feature_lengths, split)
    for source, _ in self.sources:
      missing = [k for k in converter.task_feature_lengths if k not in source.dtypes]
      if missing:
        raise ValueError(f'{source.task_dir}: the cached examples have no feature '
                         f'{missing[0]!r} (they have {sorted(source.dtypes)}); the model reads '
                         f'{sorted(converter.task_feature_lengths)}')
      if not len(source):
        raise ValueError(f'{source.task_dir}: split {split!r} holds no example')
    self.name = name
    self.converter = converter
    self.batch_size = batch_size
    self.seed = 0 if seed is None else int(seed)
    self.shuffle = shuffle
    self.num_epochs = num_epochs
    self.process_index = process_index
    self.process_count = process_count
    self.worker_count = worker_count
    self.prefetch = prefetch

  def examples(self, raw: bool = False):
    """This host's example stream (a Grain MapDataset; infinite unless `num_epochs`). `raw`:
    `(source, index, payload)` items, for `decode_raw`."""
    grain = _grain()
    streams, rates = [], []
    for source, rate in self.sources:
      total = ENDLESS if self.num_epochs is None else len(source) * self.num_epochs
      ds = grain.MapDataset.range(total).map(EpochShuffle(
          source, seed=task_seed(self.seed, source.task_dir), shuffle=self.shuffle, raw=raw))
      streams.append(ds)
      rates.append(rate)
    ds = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, rates)
    if self.process_count > 1:
      ds = ds[self.process_index::self.process_count]
    return ds

  def chunks(self):
    """Packing chunks -> their packing plans (`PackedChunk.as_tree()`; a Grain MapDataset)."""
    size = self.converter.chunk_size
    return self.examples(raw=True).batch(size, batch_fn=list).map(_Plan(self.converter))

  def iterator(self, state: Optional[Mapping[str, Any]] = None) -> 'LoaderIterator':
    return LoaderIterator(self, state)

  def check_state(self, state: Mapping[str, Any]) -> None:
    expected = {'version': STATE_VERSION, 'process_count': self.process_count,
                'batch_size': self.batch_size, 'seed': self.seed}
    for key, value in expected.items():
      if state.get(key) != value:
        raise ValueError(f'the checkpoint\'s data loader state has {key}={state.get(key)!r}, '
                         f'this run {value!r}: the data position cannot be restored exactly '
                         '(resume with the same BATCH_SIZE, SEED and number of hosts)')


class LoaderIterator:
  """Iterator of numpy batches with `get_state()` (JSON-able) and `close()`."""

  def __init__(self, loader: GrainLoader, state: Optional[Mapping[str, Any]] = None):
    self._loader = loader
    if state is not None:
      loader.check_state(state)
    self._chunk = int(state['chunk']) if state else 0
    self._skip = int(state['row']) if state else 0
    self._window = None                      # the current window's packing plan
    self._n = 0                              # rows in the current window
    self._used = 0
    self._it = None

  def _source(self):
    grain = _grain()
    ds = self._loader.chunks()[self._chunk:]
    if self._loader.worker_count > 0:
      ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                prefetch_buffer_size=self._loader.prefetch))
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self._loader.worker_count,
          per_worker_buffer_size=max(1, self._loader.prefetch)))
    else:
      # One reader thread: the first window is ready after one window's work (several threads
      # would build `prefetch` windows at once); more parallelism = worker processes.
      ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                prefetch_buffer_size=self._loader.prefetch))
    return iter(ds)

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    if self._it is None:
      self._it = self._source()
    parts, have = [], 0
    while have < self._loader.batch_size:
      if self._used == self._n:
        window = next(self._it, None)
        if window is None:
          raise StopIteration
        window = numpy_packing.chunk_from_tree(window)
        self._window, self._used = window, self._skip
        self._n = window.num_rows
        self._skip = 0
      take = min(self._loader.batch_size - have, self._n - self._used)
      parts.append(self._window.rows(self._used, self._used + take))
      have += take
      self._used += take
      if self._used == self._n:
        self._chunk += 1
        self._window, self._n, self._used = None, 0, 0
    return self._loader.converter.finish(numpy_packing.concat_rows(parts))

  def get_state(self) -> Dict[str, Any]:
    """The position after the last batch returned: restore with `loader.iterator(state)`."""
    return {'version': STATE_VERSION, 'chunk': self._chunk, 'row': self._used + self._skip,
            'process_count': self._loader.process_count, 'batch_size': self._loader.batch_size,
            'seed': self._loader.seed}

  def checkpoint_state(self) -> Dict[str, Any]:
    """Every host's `get_state()` (gathered; all hosts call this together), for the checkpoint."""
    local = self.get_state()
    if self._loader.process_count == 1:
      return {**local, 'per_process': [[local['chunk'], local['row']]]}
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    gathered = np.asarray(multihost_utils.process_allgather(
        np.array([local['chunk'], local['row']], np.int64)))
    return {**local, 'per_process': gathered.reshape(-1, 2).tolist()}

  def close(self):
    it, self._it = self._it, None
    if it is not None and hasattr(it, 'close'):
      it.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except  (interpreter shutdown)
      pass


def dataset_fn(cfg, converter):
  """The trainer's data interface for a `trainer.training.data.DatasetConfig` read by Grain.

  `fn(start_batch=0, loader_state=None) -> LoaderIterator`: `loader_state` is what
  `checkpoint_state()` saved (this host's entry is used); without it, a non-zero `start_batch`
  (a checkpoint written by the seqio loader) is reached by reading and dropping that many batches.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if not cfg.cache_dir:
    raise ValueError("DATA_LOADER='grain' reads the Beam cache: set CACHE_DIR (and "
                     'USE_CACHED_TASKS=True)')
  num_hosts = jax.process_count()
  if cfg.batch_size % num_hosts:
    raise ValueError(f'DatasetConfig.batch_size={cfg.batch_size} must divide by the number of '
                     f'processes ({num_hosts})')
  loaders = []

  def get_loader() -> GrainLoader:  # On first use (an eval split may never be read).
    if not loaders:
      loaders.append(GrainLoader(
          cache_dir=cfg.cache_dir, name=cfg.mixture_or_task_name,
          task_feature_lengths=cfg.task_feature_lengths, converter=converter,
          batch_size=cfg.batch_size // num_hosts, split=cfg.split, seed=cfg.seed,
          shuffle=cfg.shuffle, num_epochs=cfg.num_epochs, process_index=jax.process_index(),
          process_count=num_hosts, worker_count=cfg.worker_count, prefetch=cfg.prefetch))
    return loaders[0]

  def make(start_batch: int = 0, loader_state: Optional[Mapping[str, Any]] = None
           ) -> Iterator[Dict[str, np.ndarray]]:
    loader = get_loader()
    if loader_state is not None:
      state = dict(loader_state)
      chunk, row = state.pop('per_process', [[state['chunk'], state['row']]])[
          loader.process_index]
      state.update(chunk=chunk, row=row)
      return loader.iterator(state)
    it = loader.iterator()
    if start_batch:
      logging.warning('no data loader state in the checkpoint: replaying %d batches',
                      start_batch)
      for _ in range(start_batch):
        next(it)
    return it

  make.get_loader = get_loader
  return make


def accepts_loader_state(fn) -> bool:
  """Whether a dataset fn takes `loader_state` (the Grain loader's does)."""
  try:
    return 'loader_state' in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False
