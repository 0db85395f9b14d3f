"""Training / eval data: the DatasetConfig and its two loaders (seqio + tf.data, or Grain).

`DatasetConfig.data_loader` picks the reader ('grain' | 'seqio', gin `DATA_LOADER`): 'grain'
(`trainer.training.grain_loader`, no TensorFlow) reads the Beam job's caches by random access;
it applies to cached tasks (`use_cached=True` with a `cache_dir`), on-the-fly tasks are always read
by seqio. `dataset_fn_for_model(cfg, model)` builds either. Importing this module imports neither
TensorFlow nor seqio: they load on the seqio path's first use.

`DatasetConfig` says which mixture or task, at which feature lengths, from which split, whether to
read the materialised caches (`use_cached=True`, with `cache_dir` registering the Beam job's cached
tasks) or to run seqio's preprocessing on the fly, and whether the feature converter packs.

`dataset_fn(cfg, feature_converter)` returns the trainer's TF-free data interface:
`fn(start_batch=0) -> iterator of host-local numpy batches`. Each process reads its own shard
(`seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())`) and makes batches of
`batch_size // process_count` rows. Everything is seeded, so the stream is a deterministic function
of (config, seed); the data position is the number of batches consumed, and a resumed run skips that
many batches (`Dataset.skip`) to see exactly the batches the interrupted run would have seen.

Feature dicts before / after the feature converter, e.g. decoder-only, packed, lengths {targets: 8}:
  task:  {'targets': [5, 6, 1]}, {'targets': [7, 1]}
  model: {'decoder_target_tokens': [[5, 6, 1, 7, 1, 0, 0, 0]],
          'decoder_input_tokens':  [[0, 5, 6, 0, 7, 0, 0, 0]],
          'decoder_loss_weights':  [[1, 1, 1, 1, 1, 0, 0, 0]],
          'decoder_segment_ids':   [[1, 1, 1, 2, 2, 0, 0, 0]],
          'decoder_positions':     [[0, 1, 2, 0, 1, 0, 0, 0]]}
"""
import dataclasses
import os
from typing import Callable, Iterator, Mapping, Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from pipelines.cache import layout as cache_layout
from tasks import cli

DATA_LOADERS = ('grain', 'seqio')


def _seqio_tf():
  """(seqio, tf), imported on first use with TF's native start-up noise silenced."""
  with cli.quiet_native_stderr():
    import seqio  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    # Keep TF off the accelerators (JAX owns them) and quiet.
    tf.config.set_visible_devices([], 'GPU')
    tf.get_logger().setLevel('ERROR')
  return seqio, tf


def preload_tf() -> bool:
  """Imports TF/seqio now (quietly) when they are installed; False where they are not."""
  try:
    _seqio_tf()
  except ImportError:
    return False
  return True


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """Which examples, how many per step, in which order.

  Attributes:
    mixture_or_task_name: a registered seqio Task or Mixture.
    task_feature_lengths: e.g. {'inputs': 512, 'targets': 512} (decoder-only: {'targets': N} or
      {'inputs': N, 'targets': M} for PrefixLM).
    split: dataset split name.
    batch_size: global batch size (all hosts together); must divide by the number of processes.
    shuffle: shuffle examples (seeded).
    seed: seed for seqio's preprocessing randomness and the shuffle.
    use_cached: read the task's materialised cache instead of preprocessing on the fly.
    cache_dir: a cache directory written by `python -m pipelines.cache_tasks`; its cached tasks are
      registered (and seqio's cache search path extended) before the dataset is built.
    pack: let the feature converter pack several examples per row.
    num_epochs: None repeats forever (training); an int stops (evaluation).
    data_loader: 'grain' (random access over the cache, TF-free; only for cached tasks, others
      fall back to seqio) or 'seqio' (tf.data).
    worker_count: Grain worker processes (0: read in this process, with `prefetch` threads).
    prefetch: Grain read-ahead, in packing windows (chunks of examples).
  """
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str = 'train'
  batch_size: int = 8
  shuffle: bool = True
  seed: Optional[int] = 0
  use_cached: bool = False
  cache_dir: Optional[str] = None
  pack: bool = True
  num_epochs: Optional[int] = None
  data_loader: str = 'seqio'
  worker_count: int = 0
  prefetch: int = 2

  def __post_init__(self):
    if self.data_loader not in DATA_LOADERS:
      raise ValueError(f'DatasetConfig.data_loader (DATA_LOADER) must be one of {DATA_LOADERS}, '
                       f'got {self.data_loader!r}')
    for name in ('worker_count', 'prefetch'):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'DatasetConfig.{name} must be an int >= 0, got {value!r}')
    if not isinstance(self.mixture_or_task_name, str) or not self.mixture_or_task_name:
      raise ValueError('DatasetConfig.mixture_or_task_name must be a non-empty string, got '
                       f'{self.mixture_or_task_name!r}')
    if not isinstance(self.task_feature_lengths, Mapping) or not self.task_feature_lengths:
      raise ValueError('DatasetConfig.task_feature_lengths must be a dict like '
                       f"{{'inputs': 512, 'targets': 512}}, got {self.task_feature_lengths!r}")
    for key, value in self.task_feature_lengths.items():
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f'DatasetConfig.task_feature_lengths[{key!r}] must be a positive int, '
                         f'got {value!r}')
    if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or (
        self.batch_size <= 0):
      raise ValueError(f'DatasetConfig.batch_size must be a positive int, got {self.batch_size!r}')
    if self.num_epochs is not None and (not isinstance(self.num_epochs, int) or
                                        self.num_epochs <= 0):
      raise ValueError(f'DatasetConfig.num_epochs must be a positive int or None, got '
                       f'{self.num_epochs!r}')


def uses_grain(cfg: DatasetConfig) -> bool:
  """Whether `cfg` is read by the Grain loader: DATA_LOADER='grain' on a cached task."""
  return cfg.data_loader == 'grain' and cfg.use_cached and bool(cfg.cache_dir)


def dataset_fn_for_model(cfg: DatasetConfig, model) -> Callable[..., Iterator]:
  """The data interface for `model` (a trainer model wrapper): Grain or seqio, as `cfg` says."""
  if uses_grain(cfg):
    from trainer.training import grain_loader  # pylint: disable=g-import-not-at-top
    from trainer.training import numpy_converters  # pylint: disable=g-import-not-at-top
    converter = numpy_converters.for_model(model, pack=cfg.pack,
                                           task_feature_lengths=cfg.task_feature_lengths)
    return grain_loader.dataset_fn(cfg, converter)
  from trainer.training import feature_converters  # pylint: disable=g-import-not-at-top
  return dataset_fn(cfg, feature_converters.for_model(model, pack=cfg.pack))


def register_cache_dir(cache_dir: str) -> list:
  """Registers the Beam job's completed cached tasks under `cache_dir`; returns their names."""
  _, tf = _seqio_tf()
  if not tf.io.gfile.isdir(cache_dir):
    raise ValueError(f'DatasetConfig.cache_dir: {cache_dir!r} is not a directory')
  from pipelines.cache import registry  # pylint: disable=g-import-not-at-top
  return registry.register_cached_tasks(cache_dir)


def resolve_task_name(cfg: DatasetConfig) -> str:
  """The seqio name to read: with `use_cached`, a source task name maps to its cached task.

  The Beam job registers `<task>.<lengths>` (e.g. `wiki_ul2.in512_tg512`, see
  `pipelines.cache.layout.cached_task_name`) holding finished examples at those lengths; a run that
  names the source task and sets USE_CACHED_TASKS reads that cached task.
  """
  seqio, _ = _seqio_tf()
  name = cfg.mixture_or_task_name
  if cfg.use_cached and name in seqio.TaskRegistry.names():
    cached = cache_layout.cached_task_name(name, cfg.task_feature_lengths)
    if cached in seqio.TaskRegistry.names():
      return cached
  return name


def _check_registered(name: str) -> None:
  seqio, _ = _seqio_tf()
  if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
    return
  import difflib  # pylint: disable=g-import-not-at-top
  known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
  close = difflib.get_close_matches(name, known, n=5)
  hint = f' Close names: {close}.' if close else (
      ' (Did you forget --module_import=tasks, or USE_CACHED_TASKS with a cache dir?)')
  raise ValueError(f'DatasetConfig.mixture_or_task_name: {name!r} is not a registered seqio task '
                   f'or mixture.{hint}')


def get_tf_dataset(cfg: DatasetConfig, feature_converter):
  """This host's batched tf.data pipeline (deterministic for a given cfg)."""
  seqio, tf = _seqio_tf()
  if cfg.cache_dir:
    register_cache_dir(cfg.cache_dir)
  name = resolve_task_name(cfg)
  _check_registered(name)
  num_hosts = jax.process_count()
  if cfg.batch_size % num_hosts:
    raise ValueError(f'DatasetConfig.batch_size={cfg.batch_size} must divide by the number of '
                     f'processes ({num_hosts})')
  ds = seqio.get_dataset(
      name, task_feature_lengths=dict(cfg.task_feature_lengths),
      feature_converter=feature_converter, dataset_split=cfg.split, use_cached=cfg.use_cached,
      shuffle=cfg.shuffle, num_epochs=cfg.num_epochs,
      shard_info=seqio.ShardInfo(index=jax.process_index(), num_shards=num_hosts),
      verbose=False, seed=cfg.seed)
  ds = ds.batch(cfg.batch_size // num_hosts, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def dataset_fn(cfg: DatasetConfig, feature_converter
               ) -> Callable[..., Iterator[Mapping[str, np.ndarray]]]:
  """The trainer's data interface: `fn(start_batch=0)` -> iterator of numpy batches."""

  def make(start_batch: int = 0) -> Iterator[Mapping[str, np.ndarray]]:
    # Building the pipeline and reading its first batch load the vocabularies, whose native code
    # logs to stderr (e.g. SentencePiece's normalizer notes): keep those out of the progress output.
    with cli.quiet_native_stderr():
      ds = get_tf_dataset(cfg, feature_converter)
      if start_batch:
        ds = ds.skip(start_batch)
      iterator = ds.prefetch(2).as_numpy_iterator()
      first = next(iterator, None)
    if first is None:
      return
    yield first
    yield from iterator

  return make
