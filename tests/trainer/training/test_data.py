"""trainer/data.py: seqio datasets for the trainer — determinism, resume by skipping, packing,
per-host sharding, and reading the Beam job's caches."""
import os
import sys
import textwrap

import numpy as np
import pytest

from trainer.training import data

import seqio  # noqa: E402  (trainer.training.data imported TF/seqio quietly first)

TASK = 'datatest_bytes_lm'


@pytest.fixture(scope='module')
def text_task(shared_data, tmp_path_factory):
  lines = (shared_data / 'tinyshakespeare' / 'input.txt').read_text().splitlines()[:600]
  path = tmp_path_factory.mktemp('data') / 'lines.txt'
  path.write_text('\n'.join(l for l in lines if l.strip()) + '\n')
  if TASK not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        TASK, source=seqio.TextLineDataSource({'train': str(path), 'validation': str(path)}),
        preprocessors=[seqio.map_over_dataset(lambda line: {'targets': line}),
                       seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={'targets': seqio.Feature(seqio.ByteVocabulary())})
  return TASK


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def cfg(**kw):
  kw.setdefault('mixture_or_task_name', TASK)
  kw.setdefault('task_feature_lengths', {'targets': 64})
  kw.setdefault('batch_size', 4)
  return data.DatasetConfig(**kw)


def test_deterministic_and_resumable_by_batch_count(text_task):
  fn = data.dataset_fn(cfg(seed=7), seqio.DecoderFeatureConverter(pack=True))
  first = take(fn(), 4)
  again = take(fn(), 4)
  resumed = take(fn(start_batch=2), 2)
  for a, b in zip(first, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  for a, b in zip(first[2:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  other_seed = take(data.dataset_fn(cfg(seed=8), seqio.DecoderFeatureConverter(pack=True))(), 1)
  assert not np.array_equal(other_seed[0]['decoder_target_tokens'],
                            first[0]['decoder_target_tokens'])


def test_packing_on_and_off(text_task):
  packed = next(data.dataset_fn(cfg(shuffle=False), seqio.DecoderFeatureConverter(pack=True))())
  plain = next(data.dataset_fn(cfg(shuffle=False, pack=False),
                               seqio.DecoderFeatureConverter(pack=False))())
  assert set(plain) == {'decoder_target_tokens', 'decoder_input_tokens', 'decoder_loss_weights'}
  assert {'decoder_segment_ids', 'decoder_positions'} <= set(packed)
  assert packed['decoder_target_tokens'].shape == (4, 64)
  # Short lines: packing puts several segments in a row, positions restart in each.
  assert packed['decoder_segment_ids'].max() >= 2
  row_seg, row_pos = packed['decoder_segment_ids'][0], packed['decoder_positions'][0]
  starts = np.flatnonzero((row_seg[1:] != row_seg[:-1]) & (row_seg[1:] > 0)) + 1
  assert all(row_pos[s] == 0 for s in starts)
  assert (packed['decoder_loss_weights'] > 0).sum() > (plain['decoder_loss_weights'] > 0).sum()


def test_each_host_reads_its_own_shard(text_task, monkeypatch):
  rows = []
  for index in (0, 1):
    monkeypatch.setattr(data.jax, 'process_count', lambda: 2)
    monkeypatch.setattr(data.jax, 'process_index', lambda index=index: index)
    batch = next(data.dataset_fn(cfg(shuffle=False, pack=False, num_epochs=1),
                                 seqio.DecoderFeatureConverter(pack=False))())
    assert batch['decoder_target_tokens'].shape == (2, 64)  # global 4 over 2 hosts
    rows.append(batch['decoder_target_tokens'])
  assert not np.array_equal(rows[0], rows[1])
  monkeypatch.setattr(data.jax, 'process_count', lambda: 3)
  with pytest.raises(ValueError, match=r'batch_size=4 must divide by the number of processes \(3\)'):
    data.get_tf_dataset(cfg(), seqio.DecoderFeatureConverter(pack=False))


def test_errors_name_the_field_or_task(text_task):
  with pytest.raises(ValueError, match=r"'datatest_bytes_l' is not a registered seqio task or "
                                       r"mixture. Close names: \['datatest_bytes_lm'"):
    data.get_tf_dataset(cfg(mixture_or_task_name='datatest_bytes_l'),
                        seqio.DecoderFeatureConverter())
  with pytest.raises(ValueError, match=r"task_feature_lengths\['targets'\] must be a positive int"):
    cfg(task_feature_lengths={'targets': 0})
  with pytest.raises(ValueError, match=r"DatasetConfig.cache_dir: '/nonexistent' is not a dir"):
    data.get_tf_dataset(cfg(cache_dir='/nonexistent', use_cached=True),
                        seqio.DecoderFeatureConverter())


CACHE_TASK_MODULE = textwrap.dedent('''
    import functools
    import os
    import seqio
    from tasks import sources
    SPEC = sources.CorpusSpec(name='datacache', format='text',
                              splits={'train': os.environ['DATACACHE_TEXT']})
    if 'datacache_tokens' not in seqio.TaskRegistry.names():
      seqio.TaskRegistry.add(
          'datacache_tokens', source=SPEC.data_source(),
          output_features={'targets': seqio.Feature(
              seqio.SentencePieceVocabulary(os.environ['DATACACHE_VOCAB']), add_eos=True)},
          preprocessors=[functools.partial(seqio.preprocessors.rekey, key_map={'targets': 'text'}),
                         seqio.preprocessors.tokenize_and_append_eos])
''')


def test_use_cached_reads_the_beam_cache_like_the_on_the_fly_pipeline(shared_data, tmp_path,
                                                                       monkeypatch):
  from pipelines.cache import driver as cache_driver
  from pipelines.cache import plan as cache_plan
  from tasks import vocab as vocab_lib
  text = (shared_data / 'tinyshakespeare' / 'input.txt').read_bytes()
  (tmp_path / 'corpus.txt').write_bytes(text[:12_000])
  (tmp_path / 'vocab_train.txt').write_bytes(text[:100_000])
  model, _ = vocab_lib.train_vocabulary(input_files=[str(tmp_path / 'vocab_train.txt')],
                                        vocab_size=500, output_prefix=str(tmp_path / 'spm'),
                                        num_sentinels=4)
  (tmp_path / 'datacache_tasks.py').write_text(CACHE_TASK_MODULE)
  monkeypatch.setenv('DATACACHE_TEXT', str(tmp_path / 'corpus.txt'))
  monkeypatch.setenv('DATACACHE_VOCAB', model)
  monkeypatch.syspath_prepend(str(tmp_path))
  import datacache_tasks  # noqa: F401  pylint: disable=unused-import
  lengths = {'targets': 32}
  config = cache_plan.CacheJobConfig(
      tasks=('datacache_tokens',), output_cache_dir=str(tmp_path / 'cache'),
      feature_lengths=tuple(lengths.items()), module_import=('datacache_tasks',), min_shards=2)
  cache_driver.run_cache_job(config, runner='local', num_workers=1, running_mode='in_memory',
                             progress_interval_s=60, log=lambda _: None)

  def rows(**kw):
    c = cfg(mixture_or_task_name='datacache_tokens', task_feature_lengths=lengths, shuffle=False,
            pack=False, num_epochs=1, batch_size=1, **kw)
    return sorted(tuple(b['decoder_target_tokens'][0].tolist())
                  for b in data.dataset_fn(c, seqio.DecoderFeatureConverter(pack=False))())

  cached_cfg = cfg(mixture_or_task_name='datacache_tokens', task_feature_lengths=lengths,
                   use_cached=True, cache_dir=str(tmp_path / 'cache'))
  data.register_cache_dir(str(tmp_path / 'cache'))
  assert data.resolve_task_name(cached_cfg) == 'datacache_tokens.tg32'
  cached = rows(use_cached=True, cache_dir=str(tmp_path / 'cache'))
  on_the_fly = rows()
  assert len(cached) > 20
  assert cached == on_the_fly
