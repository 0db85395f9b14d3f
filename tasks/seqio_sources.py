"""The seqio face of `tasks.sources.CorpusSpec` (imports TensorFlow; `sources` itself does not).

`CorpusSpec.data_source()` builds these; this module does not import `tasks.sources` (the spec
comes in as an argument), so the two do not import each other.

File formats (text, JSONL, TFRecord) read through `CorpusSpec.read_range` and `CorpusSpec.parse`
inside `tf.data.Dataset.from_generator`: seqio's own `TextLineDataSource`/`TFExampleDataSource`
would be faster, but could not do paragraph mode, and would apply different rules for bad records
than the Beam cache job. One reader for both faces means they agree on every document; the
on-the-fly path is for small corpora and inspection, big corpora go through the Beam cache.

TFDS corpora are read with `tfds.builder(name, data_dir=...)` (never downloaded); the text feature
goes through the same `check_text` rules.
"""
from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from tasks import record_formats

_OUTPUT_SIGNATURE = {'text': tf.TensorSpec(shape=(), dtype=tf.string)}


class CorpusFileDataSource(seqio.FileDataSource):
  """seqio `FileDataSource` over a text/JSONL/TFRecord `CorpusSpec`: yields `{'text': str}`.

  Shards are files (`list_shards(split) == spec.files(split)`); `shuffle=True` shuffles file order
  (seqio's `Task` shuffles examples after preprocessing).
  """

  def __init__(self, spec,
               num_input_examples: Optional[Mapping[str, int]] = None):
    self._spec = spec

    def generate(path):
      path = path.decode('utf-8') if isinstance(path, bytes) else str(path)
      for _, raw in spec.read_range(path, 0, None):
        try:
          yield {'text': spec.parse(raw)}
        except record_formats.BadRecord:
          continue

    def read_file_fn(path_tensor):
      return tf.data.Dataset.from_generator(
          generate, args=(path_tensor,), output_signature=_OUTPUT_SIGNATURE)

    super().__init__(read_file_fn=read_file_fn, split_to_filepattern=dict(spec.splits),
                     num_input_examples=num_input_examples, cycle_length=1, block_length=1)

  @property
  def spec(self):
    return self._spec

  def list_shards(self, split: str) -> Sequence[str]:
    return list(self._spec.files(split))


class TfdsCorpusDataSource(seqio.DataSource):
  """seqio `DataSource` over a prepared TFDS dataset: yields `{'text': str}` (valid docs only)."""

  def __init__(self, spec):
    self._spec = spec
    self._builder = None
    super().__init__(splits=spec.tfds_splits)

  @property
  def spec(self):
    return self._spec

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def builder(self):
    """The TFDS builder; a clear error when the dataset is not prepared under `tfds_data_dir`."""
    if self._builder is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      spec = self._spec
      # Check the directory first: tfds.builder would otherwise raise a registry error that does
      # not say where it looked.
      path = record_formats.tfds_dataset_dir(spec.tfds_name, spec.tfds_data_dir)
      try:
        builder = tfds.builder(spec.tfds_name, data_dir=spec.tfds_data_dir)
      except Exception:  # pylint: disable=broad-except
        # Not registered in code (e.g. prepared elsewhere): read it from its files.
        builder = tfds.builder_from_directory(path)
      if not tf.io.gfile.exists(builder.data_dir):
        raise FileNotFoundError(f'TFDS dataset {spec.tfds_name!r} is not prepared in '
                                f'{spec.tfds_data_dir!r}; datasets are never downloaded.')
      features = getattr(builder.info, 'features', None)
      if features is not None and spec.feature_key not in features:
        raise ValueError(f'TFDS dataset {spec.tfds_name!r} has no feature '
                         f'feature_key={spec.feature_key!r}; features: {list(features)}')
      self._builder = builder
    return self._builder

  def list_shards(self, split: str) -> Sequence[str]:
    return list(self._spec.files(split))

  def get_dataset(self, split: str = 'train', shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached=False, num_epochs=1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = self.builder()
    read_config = tfds.ReadConfig(shuffle_seed=seed)
    if shard_info and shard_info.num_shards > 1:
      read_config.input_context = tf.distribute.InputContext(
          num_input_pipelines=shard_info.num_shards, input_pipeline_id=shard_info.index)
    ds = builder.as_dataset(split=split, shuffle_files=shuffle, read_config=read_config)
    spec, key = self._spec, self._spec.feature_key

    def check(value):
      try:
        return spec.check_text(value.decode('utf-8')).encode('utf-8'), True
      except (record_formats.BadRecord, UnicodeDecodeError):
        return b'', False

    def to_text(ex):
      text, ok = tf.numpy_function(check, [ex[key]], [tf.string, tf.bool], stateful=False)
      return {'text': tf.ensure_shape(text, [])}, tf.ensure_shape(ok, [])

    ds = ds.map(to_text).filter(lambda ex, ok: ok).map(lambda ex, ok: ex)
    return ds


def make_data_source(spec) -> seqio.DataSource:
  if spec.format == 'tfds':
    return TfdsCorpusDataSource(spec)
  return CorpusFileDataSource(spec)

