"""The Grain loader over a real Beam cache: indexes, CRC-checked reads, seqio-identical rows,
deterministic sharded/mixed/shuffled streams, exact resume (SIGTERM), and training without TF."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pipelines.cache import layout
from pipelines.cache import records
from pipelines import cache_index
from trainer.training import data
from trainer.training import grain_loader
from trainer.training import numpy_converters

REPO = str(pathlib.Path(__file__).resolve().parents[3])
LENGTHS = {'inputs': 32, 'targets': 32}
TASK_MODULE = textwrap.dedent('''
    from tasks import pretraining, sources
    CORPUS = sources.CorpusSpec(name='grainc', format='text', text_mode='paragraph',
                                splits={{'train': {text!r}}})
    pretraining.register_corpus_tasks(
        CORPUS, {vocab!r}, objectives_to_register=('prefix_lm', 'span_corruption'),
        mixtures={{'mix': {{'prefix_lm': 0.7, 'span_corruption': 0.3}}}})
''')


@pytest.fixture(scope='module')
def cache(shared_data, tmp_path_factory):
  """A 2-task mixture cached at inputs:32,targets:32 by the cache job (4 shards per task)."""
  from pipelines.cache import driver as cache_driver
  from pipelines.cache import plan as cache_plan
  from tasks import vocab as vocab_lib
  work = tmp_path_factory.mktemp('grain_cache')
  text = (shared_data / 'tinyshakespeare' / 'input.txt').read_bytes()
  (work / 'corpus.txt').write_bytes(text[:20_000])
  (work / 'vocab.txt').write_bytes(text[:100_000])
  vocab, _ = vocab_lib.train_vocabulary(input_files=[str(work / 'vocab.txt')], vocab_size=500,
                                        output_prefix=str(work / 'spm'), num_sentinels=8)
  (work / 'grainc_tasks.py').write_text(TASK_MODULE.format(text=str(work / 'corpus.txt'),
                                                           vocab=vocab))
  sys.path.insert(0, str(work))
  __import__('grainc_tasks')
  config = cache_plan.CacheJobConfig(
      tasks=('grainc_mix',), output_cache_dir=str(work / 'cache'),
      feature_lengths=tuple(sorted(LENGTHS.items())), module_import=('grainc_tasks',),
      min_shards=4)
  cache_driver.run_cache_job(config, runner='local', num_workers=1, running_mode='in_memory',
                             progress_interval_s=60, log=lambda _: None)
  return str(work / 'cache')


def task_dir(cache, task='grainc_prefix_lm'):
  return os.path.join(cache, layout.cached_task_name(task, LENGTHS))


def loader(cache, name='grainc_prefix_lm', *, pack=True, batch_size=4, **kwargs):
  conv = numpy_converters.make('DecoderFeatureConverter', pack=pack, task_feature_lengths=LENGTHS)
  return grain_loader.GrainLoader(cache_dir=cache, name=name, task_feature_lengths=LENGTHS,
                                  converter=conv, batch_size=batch_size, **kwargs)


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_decode_example_reads_int64_and_float_lists_like_protobuf():
  from tensorflow.core.example import example_pb2  # the reference encoder (protobuf)
  ex = example_pb2.Example()
  ex.features.feature['targets'].int64_list.value.extend([0, 1, 127, 128, 2**21 + 5, 2**40, -3])
  ex.features.feature['score'].float_list.value.extend([0.5, -2.25])
  ex.features.feature['skipped'].bytes_list.value.append(b'x')
  got = records.decode_example(ex.SerializeToString(), {'targets': 'int64', 'score': 'float32'})
  np.testing.assert_array_equal(got['targets'], [0, 1, 127, 128, 2**21 + 5, 2**40, -3])
  np.testing.assert_array_equal(got['score'], np.array([0.5, -2.25], np.float32))
  with pytest.raises(ValueError, match="no feature 'inputs'"):
    records.decode_example(ex.SerializeToString(), {'inputs': 'int32'})
  # Many payloads decoded together (one varint pass, sliced back per example and feature): each
  # equals protobuf's values, for 1..3-byte ids (the fast path), longer ones, loose (unpacked)
  # values, empty lists; a bad payload is named by its position.
  rng = np.random.default_rng(0)
  protos, expected = [], []
  for i in range(40):
    high = [2**7, 2**14, 2**21, 2**35][i % 4]
    values = {k: rng.integers(0, min(high, top), rng.integers(0, 300)).tolist()
              for k, top in (('a', 2**62), ('b', 2**31))}
    ex = example_pb2.Example()
    for k, v in values.items():
      ex.features.feature[k].int64_list.value.extend(v)
    raw = ex.SerializeToString()
    if i == 7:  # Loose varints (an unpacked repeated field), as old writers produce.
      raw = b''.join(bytes([8]) + records_varint(v) for v in values['a'])
      raw = wrap_feature('a', raw) + wrap_feature('b', b'')
      values['b'] = []
    protos.append(raw)
    expected.append(values)
  got = records.decode_examples(protos, {'a': 'int64', 'b': 'int32'})
  for want, have in zip(expected, got):
    assert have['a'].dtype == np.int64 and have['b'].dtype == np.int32
    assert have['a'].tolist() == want['a'] and have['b'].tolist() == want['b']
  cut = wrap_feature('a', bytes([10, 2, 5, 0x85])) + wrap_feature('b', b'')  # Ends mid-varint.
  with pytest.raises(records.ExampleDecodeError, match="feature 'a': truncated varint") as e:
    records.decode_examples(protos[:3] + [cut] + protos[4:], {'a': 'int64', 'b': 'int32'})
  assert e.value.position == 3
  with pytest.raises(records.ExampleDecodeError, match='field past the end') as e:
    records.decode_examples(protos[:5] + [protos[5][:-1]], {'a': 'int64', 'b': 'int32'})
  assert e.value.position == 5


def records_varint(value):
  out = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def wrap_feature(name, int64_list_fields):
  """A tf.Example's bytes for one Int64List feature whose list message is `int64_list_fields`."""
  def field(number, payload):
    return bytes([number << 3 | 2]) + records_varint(len(payload)) + payload
  entry = field(1, name.encode()) + field(2, field(3, int64_list_fields))
  return field(1, field(1, entry))


def test_job_writes_indexes_and_the_command_adds_the_same_bytes(cache, tmp_path):
  import tensorflow as tf
  src = task_dir(cache)
  shards = sorted(p for p in os.listdir(src) if p.startswith('train.tfrecord-'))
  assert len(shards) == 4
  split = records.CachedSplit(src, 'train')
  # The index the job wrote == the one built from the shard; examples == TF's parse of the shard.
  tf_examples = []
  for shard in shards:
    index = open(os.path.join(src, layout.index_of_shard(shard)), 'rb').read()
    assert index == records.build_index(os.path.join(src, shard))
    for raw in tf.data.TFRecordDataset(os.path.join(src, shard)).as_numpy_iterator():
      ex = tf.train.Example.FromString(raw).features.feature
      tf_examples.append({k: list(ex[k].int64_list.value) for k in ('inputs', 'targets')})
  ours = [{k: split[i][k].tolist() for k in ('inputs', 'targets')} for i in range(len(split))]
  assert len(ours) > 50 and ours == tf_examples
  assert split[0]['inputs'].dtype == np.int32
  # A cache written before indexes existed: one-line error naming the command, which fixes it.
  old = tmp_path / 'old'
  shutil.copytree(cache, old)
  for path in old.glob('*/train.tfrecord_index-*'):
    path.unlink()
  with pytest.raises(records.CacheReadError,
                     match=r'no record index .* python -m pipelines.cache_index --cache_dir='):
    records.CachedSplit(task_dir(str(old)), 'train')
  written = cache_index.add_indexes(str(old), log=lambda _: None)
  assert len(written) == 8
  for path in written:
    rel = os.path.relpath(path, old)
    assert open(path, 'rb').read() == open(os.path.join(cache, rel), 'rb').read()
  assert len(records.CachedSplit(task_dir(str(old)), 'train')) == len(split)


def test_corrupted_record_and_wrong_lengths_are_clear_errors(cache, tmp_path):
  bad = tmp_path / 'bad'
  shutil.copytree(cache, bad)
  split = records.CachedSplit(task_dir(str(bad)), 'train')
  shard = split.shards[0]
  raw = bytearray(open(shard, 'rb').read())
  raw[40] ^= 0xFF  # Inside the first record's payload.
  open(shard, 'wb').write(bytes(raw))
  with pytest.raises(records.CacheReadError, match='fails its CRC32C check'):
    records.CachedSplit(task_dir(str(bad)), 'train')[0]
  with pytest.raises(ValueError, match='CRC32C'):
    cache_index.add_indexes(str(bad), overwrite=True, log=lambda _: None)
  with pytest.raises(records.CacheReadError, match=r"mixture 'grainc_mix' is cached .* other "
                     r'lengths \(grainc_mix.in32_tg32\)'):
    records.resolve_cached(cache, 'grainc_mix', {'inputs': 16, 'targets': 16})
  # A mixture whose tasks were cached at other lengths.
  record = json.load(open(os.path.join(cache, 'grainc_mix.in32_tg32.mixture.json')))
  record['tasks'] = [[t.replace('in32_tg32', 'in16_tg16'), r] for t, r in record['tasks']]
  record['cached_mixture'] = 'grainc_mix.in16_tg16'
  (bad / 'grainc_mix.in16_tg16.mixture.json').write_text(json.dumps(record))
  with pytest.raises(records.CacheReadError, match='cached at other lengths'):
    records.resolve_cached(str(bad), 'grainc_mix', {'inputs': 16, 'targets': 16})


@pytest.mark.parametrize('task,converter,lengths,pack', [
    ('grainc_prefix_lm', 'DecoderFeatureConverter', LENGTHS, True),
    ('grainc_span_corruption', 'EncDecFeatureConverter', LENGTHS, True),
    ('grainc_span_corruption', 'DecoderFeatureConverter', {'targets': 32}, True),  # short: packs
    # Unpacked rows of the endless stream (a chunk of one example: Grain's batch(1) overflowed).
    ('grainc_span_corruption', 'EncDecFeatureConverter', LENGTHS, False)])
def test_rows_equal_seqios_converter_on_the_same_cached_examples(cache, task, converter, lengths,
                                                                 pack):
  import seqio
  import tensorflow as tf
  conv = numpy_converters.make(converter, pack=pack, task_feature_lengths=lengths)
  ld = grain_loader.GrainLoader(cache_dir=cache, name=task, task_feature_lengths=LENGTHS,
                                converter=conv, batch_size=1)
  examples = [{k: ld.examples()[i][k] for k in lengths} for i in range(3 * conv.chunk_size)]
  spec = {k: tf.TensorSpec([None], tf.int32) for k in lengths}
  ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)
  expected = list(getattr(seqio, converter)(pack=pack)(ds, lengths).as_numpy_iterator())
  ours = [{k: v[0] for k, v in b.items()} for b in take(ld.iterator(), len(expected))]
  assert_batches_equal(expected, ours)
  if pack and 'inputs' not in lengths:
    assert len(expected) < len(examples) / 2  # packed


def test_stream_is_seeded_shuffled_per_epoch_sharded_and_mixed_by_rate(cache):
  one = loader(cache, seed=3)
  n = len(one.sources[0][0])
  stream = one.examples()
  order = [tuple(stream[i]['targets'].tolist()) for i in range(2 * n)]
  everything = sorted(tuple(one.sources[0][0][i]['targets'].tolist()) for i in range(n))
  assert sorted(order[:n]) == everything and sorted(order[n:]) == everything  # each epoch whole
  assert order[:n] != order[n:]  # and reshuffled
  assert order[:n] != [tuple(one.sources[0][0][i]['targets'].tolist()) for i in range(n)]
  assert order != [tuple(loader(cache, seed=4).examples()[i]['targets'].tolist())
                   for i in range(2 * n)]
  # Host h of 2 reads global positions h, h + 2, ...
  hosts = [loader(cache, seed=3, process_index=h, process_count=2).examples() for h in (0, 1)]
  for i in range(20):
    assert tuple(hosts[i % 2][i // 2]['targets'].tolist()) == order[i]
  # Mixture: 70/30 by rate, deterministic.
  mix = loader(cache, 'grainc_mix', seed=1)
  prefix = {tuple(mix.sources[0][0][i]['targets'].tolist()) for i in range(len(mix.sources[0][0]))}
  picks = [tuple(mix.examples()[i]['targets'].tolist()) in prefix for i in range(200)]
  assert sum(picks) == 140
  assert_batches_equal(take(mix.iterator(), 3), take(loader(cache, 'grainc_mix', seed=1).iterator(), 3))


def test_resume_from_state_continues_exactly_and_workers_change_nothing(cache):
  full = take(loader(cache, seed=5).iterator(), 12)
  it = loader(cache, seed=5).iterator()
  take(it, 5)
  state = json.loads(json.dumps(it.get_state()))
  resumed = loader(cache, seed=5).iterator(state)
  assert_batches_equal(take(resumed, 7), full[5:])
  with pytest.raises(ValueError, match='batch_size=4, this run 8'):
    loader(cache, seed=5, batch_size=8).iterator(state)
  workers = loader(cache, seed=5, worker_count=2).iterator()
  try:
    assert_batches_equal(take(workers, 12), full)
  finally:
    workers.close()


def test_two_hosts_read_disjoint_halves_of_each_epoch_and_resume_their_own_position(
    cache, monkeypatch):
  # Host h of 2 (process_index h, process_count 2): which examples of the split it reads.
  hosts = [loader(cache, seed=7, process_index=h, process_count=2) for h in (0, 1)]
  n = len(hosts[0].sources[0][0])
  read = [[index for _, index, _ in (h.examples(raw=True)[i] for i in range((n + 1 - p) // 2))]
          for p, h in enumerate(hosts)]
  assert not set(read[0]) & set(read[1])                     # disjoint
  assert sorted(read[0] + read[1]) == list(range(n))         # together: the whole epoch
  assert abs(len(read[0]) - len(read[1])) <= 1
  # Their batches differ; each host's saved state restores its own position exactly, through
  # the trainer's dataset fn (the checkpoint holds every host's (chunk, row)).
  import jax
  cfg = data.DatasetConfig(mixture_or_task_name='grainc_prefix_lm', task_feature_lengths=LENGTHS,
                           batch_size=8, use_cached=True, cache_dir=cache, data_loader='grain',
                           seed=7)
  conv = numpy_converters.make('DecoderFeatureConverter', pack=True, task_feature_lengths=LENGTHS)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  saved, after = [], []
  for h in (0, 1):
    monkeypatch.setattr(jax, 'process_index', lambda h=h: h)
    it = grain_loader.dataset_fn(cfg, conv)()
    assert it._loader.batch_size == 4 and it._loader.process_index == h  # 8 rows over 2 hosts
    take(it, 5 + h)  # The hosts stop at different positions.
    saved.append(it.get_state())
    after.append(take(it, 6))
  assert not all(np.array_equal(a['decoder_target_tokens'], b['decoder_target_tokens'])
                 for a, b in zip(after[0], after[1]))
  checkpoint = {**saved[0], 'per_process': [[s['chunk'], s['row']] for s in saved]}
  assert checkpoint['per_process'][0] != checkpoint['per_process'][1]
  for h in (0, 1):
    monkeypatch.setattr(jax, 'process_index', lambda h=h: h)
    resumed = grain_loader.dataset_fn(cfg, conv)(start_batch=99,
                                                 loader_state=json.loads(json.dumps(checkpoint)))
    assert_batches_equal(take(resumed, 6), after[h])
  # A state saved with another number of hosts is refused, not silently misread.
  monkeypatch.setattr(jax, 'process_count', lambda: 4)
  with pytest.raises(ValueError, match='process_count=2, this run 4'):
    grain_loader.dataset_fn(cfg, conv)(loader_state=checkpoint)


TWO_PROCESS_HOST = textwrap.dedent('''
    import json, sys
    import jax
    import numpy as np
    host, port, cache = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=f'localhost:{port}', num_processes=2,
                               process_id=host)
    from trainer.training import data, grain_loader, numpy_converters
    lengths = {'inputs': 32, 'targets': 32}
    cfg = data.DatasetConfig(mixture_or_task_name='grainc_mix', task_feature_lengths=lengths,
                             batch_size=8, use_cached=True, cache_dir=cache, data_loader='grain',
                             seed=11)
    conv = numpy_converters.make('DecoderFeatureConverter', pack=True, task_feature_lengths=lengths)
    it = grain_loader.dataset_fn(cfg, conv)()
    for _ in range(3 + 2 * host):  # The hosts stop at different positions.
      next(it)
    local = it.get_state()
    saved = it.checkpoint_state()  # All hosts together (process_allgather).
    after = [next(it)['decoder_target_tokens'].tolist() for _ in range(3)]
    resumed = grain_loader.dataset_fn(cfg, conv)(loader_state=json.loads(json.dumps(saved)))
    again = [next(resumed)['decoder_target_tokens'].tolist() for _ in range(3)]
    print('RESULT ' + json.dumps({'local': [local['chunk'], local['row']], 'saved': saved,
                                  'after': after, 'same': again == after}), flush=True)
''')


def test_two_real_processes_save_every_hosts_state_and_each_restores_its_own(cache):
  """jax.distributed over two CPU processes: `checkpoint_state()` gathers both hosts' positions
  into the one saved state; each process resumes from it at its own position."""
  import socket
  with socket.socket() as sock:
    sock.bind(('localhost', 0))
    port = sock.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')])))
  procs = [subprocess.Popen([sys.executable, '-c', TWO_PROCESS_HOST, str(h), str(port), cache],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for h in (0, 1)]
  results = []
  for proc in procs:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    results.append(json.loads([l for l in out.splitlines() if l.startswith('RESULT ')][-1][7:]))
  per_process = [r['local'] for r in results]
  assert per_process[0] != per_process[1]
  for r in results:  # Every host saved both positions, in host order.
    assert r['saved']['per_process'] == per_process and r['saved']['process_count'] == 2
    assert r['same']  # ... and resumed at its own.
  assert results[0]['after'] != results[1]['after']


def test_uri_caches_are_read_through_etils_epath_the_same_way(cache, monkeypatch):
  """gs:// (any `scheme://`) goes through `storage.EpathFiles`; here that code path reads the
  local cache (epath's local backend), and gives the same examples and batches."""
  import pickle
  from pipelines.cache import storage
  assert isinstance(storage.for_path('gs://bucket/cache'), storage.EpathFiles)
  assert isinstance(storage.for_path(cache), storage.LocalFiles)
  local = loader(cache, 'grainc_mix', seed=2)
  expected = take(local.iterator(), 4)
  made = []

  def epath_files(path):
    made.append(path)
    return storage.EpathFiles()

  monkeypatch.setattr(storage, 'for_path', epath_files)
  remote = loader(cache, 'grainc_mix', seed=2)
  assert made == [cache] and all(isinstance(s._files, storage.EpathFiles)
                                 for s, _ in remote.sources)
  assert_batches_equal(take(remote.iterator(), 4), expected)
  split = pickle.loads(pickle.dumps(remote.sources[0][0]))  # As a worker process gets it.
  assert split.raw(3) == local.sources[0][0].raw(3)
  with pytest.raises(records.CacheReadError, match='not a directory'):
    records.resolve_cached(cache + '/nothing', 'grainc_mix', LENGTHS)


def tiny_prefix_lm():
  from trainer.model.config import TransformerConfig
  from trainer.training import models
  cfg = TransformerConfig(vocab_size=512, embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=1,
                          head_dim=16, mlp_dim=64, query_pre_attn_scalar=16, sliding_window=8,
                          dropout_rate=0.1)
  return models.DecoderOnlyModel(config=cfg, prefix_lm=True)


def test_sigterm_and_resume_reproduce_the_losses_with_no_replay(cache, tmp_path):
  import optax
  from trainer.checkpoint import checkpoints
  from trainer.training import loop
  cfg = data.DatasetConfig(mixture_or_task_name='grainc_mix', task_feature_lengths=LENGTHS,
                           batch_size=4, use_cached=True, cache_dir=cache, data_loader='grain')
  model = tiny_prefix_lm()
  calls = []

  def data_fn(kill_at=None):
    inner = data.dataset_fn_for_model(cfg, model)

    def fn(start_batch=0, loader_state=None):
      calls.append((start_batch, loader_state))
      it = inner(start_batch=start_batch, loader_state=loader_state)

      class Wrapped:
        read = 0

        def __iter__(self):
          return self

        def __next__(self):
          if kill_at is not None and self.read == kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
          self.read += 1
          return next(it)

        def checkpoint_state(self):
          return it.checkpoint_state()

      return Wrapped()
    return fn

  def run(model_dir, fn, steps=6, **kw):
    return loop.train(model=model, model_dir=str(model_dir), total_steps=steps,
                      optimizer=optax.adam(1e-2), train_dataset_fn=fn, seed=3, log_period=100,
                      **kw)

  full = run(tmp_path / 'full', data_fn())
  first = run(tmp_path / 'cut', data_fn(kill_at=3), checkpoint_cfg=checkpoints.CheckpointConfig(
      period=0))
  # SIGTERM while batch 3 is read: step 4 finishes, the checkpoint holds the loader's state.
  assert first.interrupted and first.step == 4
  calls.clear()
  second = run(tmp_path / 'cut', data_fn())
  (start, state), = calls
  # The loader got its position back (64 rows per chunk: 16 rows of chunk 0 used): no replay.
  assert start == 4 and state['per_process'] == [[0, 16]] and (state['chunk'], state['row']) == (
      0, 16)
  losses = {**first.losses, **second.losses}
  assert sorted(losses) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([losses[s] for s in range(1, 7)],
                             [full.losses[s] for s in range(1, 7)], rtol=1e-6)


BLOCKED_TRAIN = textwrap.dedent('''
    import sys
    BLOCKED = ('tensorflow', 'seqio', 'apache_beam', 'tensorflow_datasets', 't5')

    class Hide:
      """As if not installed: `import` raises ModuleNotFoundError, `find_spec` gives None."""
      def __init__(self, inner):
        self.inner = inner
      def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
          return None
        return self.inner.find_spec(name, path, target)
      def __getattr__(self, attr):
        return getattr(self.inner, attr)

    sys.meta_path[:] = [Hide(f) if hasattr(f, 'find_spec') else f for f in sys.meta_path]
    from trainer import train
    rc = train.run(sys.argv[1:])
    leaked = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED)
    print('RESULT ' + __import__('json').dumps({'rc': rc, 'leaked': leaked}))
''')


def test_train_on_a_cached_mixture_runs_without_tensorflow(cache, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')])))
  args = ['--gin_file=gin/models/t5gemma_tiny.gin', '--gin_file=gin/runs/pretrain.gin',
          '--gin.VOCAB_SIZE=512', f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
          "--gin.MIXTURE_OR_TASK_NAME='grainc_mix'", f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}',
          '--gin.TRAIN_STEPS=2', '--gin.BATCH_SIZE=2', '--gin.USE_CACHED_TASKS=True',
          f"--gin.CACHE_DIR='{cache}'", '--gin.WARMUP_STEPS=1']
  proc = subprocess.run([sys.executable, '-c', BLOCKED_TRAIN, *args], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  result = json.loads([l for l in proc.stdout.splitlines() if l.startswith('RESULT ')][-1][7:])
  assert result == {'rc': 0, 'leaked': []}, proc.stderr[-3000:]
  assert 'train: done at step 2' in proc.stdout
