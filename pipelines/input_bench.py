r"""Input-pipeline benchmark: read a materialised Beam cache through the trainer's data path.

Reads a cached task (written by `pipelines.cache_tasks`) with `trainer.training.data.dataset_fn` and the
model's own feature converter (packing on), exactly as training does, and prints examples/s
(packed rows) and tokens/s. It compares that with what the trainer consumes at a target MFU:

  tokens/s needed = MFU x peak FLOP/s / (training FLOPs per token)

with FLOPs per token from the model wrapper (`trainer/flops.py`: `training_flops_per_example /
tokens_per_example`, tokens = encoder + decoder positions), and says whether the reader has the
wanted headroom (default 10x).

  # an existing cache (any task the cache job wrote; name the source task or the cached one):
  python -m pipelines.input_bench --gin_file=gin/models/t5gemma_2b_2b.gin \
      --cache_dir=/data/cache --task=wiki_prefix_lm --module_import=my_tasks \
      --feature_lengths=inputs:2048,targets:2048 --batch_size=8 --batches=40
  # or build a small PrefixLM cache from a text file first (trains a small vocabulary):
  python -m pipelines.input_bench --gin_file=gin/models/t5gemma_2b_2b.gin \
      --text_file=../shared/data/wikitext-2/valid.txt --work_dir=/tmp/input_bench

Both loaders read the same cache side by side (`--loaders=grain,seqio`): Grain (random access,
NumPy feature converter, no TF) and seqio (tf.data + seqio's converter). Output: one line per
loader with its rows/s and tokens/s; one with the time from building the pipeline to the first
batch when resuming at each batch of `--resume_at` (default 10 and 10,000: Grain restores its
saved state, seqio skips that many batches, as the trainer does); and one with the tokens/s the
trainer consumes at the target MFU and each reader's headroom against it (docs/performance.md).
The cache's task module must be importable when reading (`cache_job.json` names it), e.g.
`PYTHONPATH=/tmp/input_bench --module_import=input_bench_tasks` for a cache this tool built.
"""
import os
import sys
import textwrap
import time
from typing import Mapping, Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import flags  # noqa: E402  pylint: disable=g-import-not-at-top

from tasks import cli  # noqa: E402  pylint: disable=g-import-not-at-top
from trainer import gin_flags  # noqa: E402  pylint: disable=g-import-not-at-top

_TASK_MODULE = textwrap.dedent('''
    """Written by pipelines.input_bench: the PrefixLM task over {text_file!r}."""
    from tasks import pretraining, sources
    CORPUS = sources.CorpusSpec(name='input_bench', format='text', text_mode='paragraph',
                                splits={{'train': {text_file!r}}})
    pretraining.register_corpus_tasks(CORPUS, {vocab!r}, objectives_to_register=('prefix_lm',),
                                      mixtures={{}})
''')
TASK_MODULE_NAME = 'input_bench_tasks'
TASK_NAME = 'input_bench_prefix_lm'


def parse_lengths(text: str) -> dict:
  """'inputs:2048,targets:2048' -> {'inputs': 2048, 'targets': 2048}."""
  out = {}
  for item in str(text).split(','):
    name, _, value = item.partition(':')
    if not name or not value.isdigit() or int(value) <= 0:
      raise ValueError(f'--feature_lengths: expected NAME:LENGTH,..., got {text!r}')
    out[name.strip()] = int(value)
  return out


def build_cache(*, text_file: str, work_dir: str, feature_lengths: Mapping[str, int],
                vocab_size: int = 2000, log=print) -> str:
  """Trains a small vocabulary on `text_file`, registers a PrefixLM task over it and runs the
  Beam cache job (in-process runner) into `work_dir/cache`. Returns the cache dir.

  The task module is written to `work_dir` (put on sys.path) so the job's `module_import` finds it.
  """
  from pipelines.cache import driver as cache_driver  # pylint: disable=g-import-not-at-top
  from pipelines.cache import plan as cache_plan  # pylint: disable=g-import-not-at-top
  from tasks import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(text_file):
    raise ValueError(f'--text_file: {text_file!r} is not a file')
  os.makedirs(work_dir, exist_ok=True)
  vocab_path = os.path.join(work_dir, 'spm.model')
  if not os.path.exists(vocab_path):
    t0 = time.perf_counter()
    vocab_lib.train_vocabulary(input_files=[text_file], vocab_size=vocab_size,
                               output_prefix=os.path.join(work_dir, 'spm'), num_sentinels=8)
    log(f'input_bench: trained a {vocab_size}-piece vocabulary in {time.perf_counter() - t0:.1f} s')
  with open(os.path.join(work_dir, TASK_MODULE_NAME + '.py'), 'w') as f:
    f.write(_TASK_MODULE.format(text_file=os.path.abspath(text_file), vocab=vocab_path))
  if work_dir not in sys.path:
    sys.path.insert(0, work_dir)
  __import__(TASK_MODULE_NAME)
  cache_dir = os.path.join(work_dir, 'cache')
  config = cache_plan.CacheJobConfig(
      tasks=(TASK_NAME,), output_cache_dir=cache_dir,
      feature_lengths=tuple(sorted(feature_lengths.items())),
      module_import=(TASK_MODULE_NAME,), min_shards=4)
  t0 = time.perf_counter()
  cache_driver.run_cache_job(config, runner='local', num_workers=1, running_mode='in_memory',
                             progress_interval_s=60, log=lambda _: None)
  log(f'input_bench: cache job wrote {cache_dir} in {time.perf_counter() - t0:.1f} s')
  return cache_dir


def required_tokens_per_s(model, feature_lengths: Mapping[str, int], *, mfu: float,
                          peak_flops: float) -> dict:
  """Tokens/s (and rows/s) the trainer consumes at `mfu` of `peak_flops` (one device)."""
  from trainer.training import feature_converters  # pylint: disable=g-import-not-at-top
  fc = feature_converters.for_model(model, pack=True)
  shapes = {k: (1, v) for k, v in fc.get_model_feature_lengths(dict(feature_lengths)).items()}
  flops_example = model.training_flops_per_example(shapes)
  tokens_example = model.tokens_per_example(shapes)
  rows_per_s = mfu * peak_flops / flops_example
  return {'flops_per_token': flops_example / tokens_example, 'tokens_per_example': tokens_example,
          'rows_per_s': rows_per_s, 'tokens_per_s': rows_per_s * tokens_example}


def _time_batches(iterator, batches: int, warmup_batches: int) -> dict:
  t_start = time.perf_counter()
  for _ in range(warmup_batches):
    next(iterator)
  first_s = time.perf_counter() - t_start
  rows = slots = real = 0
  t0 = time.perf_counter()
  for _ in range(batches):
    batch = next(iterator)
    token_keys = [k for k in ('encoder_input_tokens', 'decoder_target_tokens') if k in batch]
    rows += batch[token_keys[0]].shape[0]
    slots += sum(batch[k].size for k in token_keys)
    real += sum(int((batch[k] != 0).sum()) for k in token_keys)
  elapsed = time.perf_counter() - t0
  return {'rows': rows, 'seconds': elapsed, 'startup_s': first_s,
          'examples_per_s': rows / elapsed, 'tokens_per_s': slots / elapsed,
          'real_tokens_per_s': real / elapsed}


def read_throughput(dataset_cfg, feature_converter, *, batches: int, warmup_batches: int = 2
                    ) -> dict:
  """Reads `warmup_batches + batches` batches with `trainer.training.data.dataset_fn` (seqio);
  times the last `batches`. Tokens: all positions of the model features (what a step consumes)
  and the real (non-padding) ones."""
  from trainer.training import data  # pylint: disable=g-import-not-at-top  (imports TF)
  if batches <= 0 or warmup_batches < 0:
    raise ValueError(f'batches must be > 0 and warmup_batches >= 0, got {batches}, '
                     f'{warmup_batches}')
  return _time_batches(data.dataset_fn(dataset_cfg, feature_converter)(), batches,
                       warmup_batches)


def grain_read_throughput(dataset_cfg, converter, *, batches: int, warmup_batches: int = 2
                          ) -> dict:
  """As `read_throughput`, with the Grain loader and the NumPy feature converter."""
  from trainer.training import grain_loader  # pylint: disable=g-import-not-at-top
  if batches <= 0 or warmup_batches < 0:
    raise ValueError(f'batches must be > 0 and warmup_batches >= 0, got {batches}, '
                     f'{warmup_batches}')
  iterator = grain_loader.dataset_fn(dataset_cfg, converter)()
  try:
    return _time_batches(iterator, batches, warmup_batches)
  finally:
    iterator.close()


def resume_first_batch_s(dataset_cfg, *, loader: str, converter, at) -> dict:
  """Seconds from building the data pipeline to its first batch when resuming at each batch of
  `at`: Grain restores the saved loader state (obtained by reading that far first, not timed);
  seqio re-creates the stream and skips that many batches (what the trainer does)."""
  out = {}
  if loader == 'grain':
    from trainer.training import grain_loader  # pylint: disable=g-import-not-at-top
    walker = grain_loader.dataset_fn(dataset_cfg, converter)()
    states, done = {}, 0
    for n in sorted(at):
      for _ in range(n - done):
        next(walker)
      done = n
      states[n] = walker.checkpoint_state()
    walker.close()
    for n in sorted(at):
      t0 = time.perf_counter()
      it = grain_loader.dataset_fn(dataset_cfg, converter)(start_batch=n, loader_state=states[n])
      next(it)
      out[n] = time.perf_counter() - t0
      it.close()
  else:
    from trainer.training import data  # pylint: disable=g-import-not-at-top
    for n in sorted(at):
      t0 = time.perf_counter()
      next(data.dataset_fn(dataset_cfg, converter)(start_batch=n))
      out[n] = time.perf_counter() - t0
  return out


def configured_model(model):
  """Gin hook: `input_bench.configured_model.model = %MODEL`."""
  return model


def run(*, model, feature_lengths: Mapping[str, int], cache_dir: Optional[str] = None,
        task: Optional[str] = None, text_file: Optional[str] = None,
        work_dir: Optional[str] = None, batch_size: int = 8, batches: int = 20,
        mfu: float = 0.55, peak_flops: float = 989e12, headroom: float = 10.0,
        seed: int = 0, loaders=('grain', 'seqio'), resume_at=(10, 10_000), grain_workers: int = 0,
        log=print) -> dict:
  """Builds (optional) and reads the cache with each loader; prints and returns the figures
  (`{loader: figures}`, the first loader's figures also at the top level)."""
  from trainer.training import data  # pylint: disable=g-import-not-at-top
  if (cache_dir is None) == (text_file is None):
    raise ValueError('give either --cache_dir (with --task) or --text_file (with --work_dir)')
  unknown = [name for name in loaders if name not in data.DATA_LOADERS]
  if unknown or not loaders:
    raise ValueError(f'--loaders: give some of {data.DATA_LOADERS}, got {list(loaders)}')
  if any(n < 0 for n in resume_at):
    raise ValueError(f'--resume_at: batch numbers must be >= 0, got {list(resume_at)}')
  if text_file is not None:
    if not work_dir:
      raise ValueError('--text_file needs --work_dir (where the vocabulary and cache go)')
    cache_dir = build_cache(text_file=text_file, work_dir=work_dir,
                            feature_lengths=feature_lengths, log=log)
    task = TASK_NAME
  if not task:
    raise ValueError('--cache_dir needs --task (the source task name or the cached task name)')
  need = required_tokens_per_s(model, feature_lengths, mfu=mfu, peak_flops=peak_flops)
  results = {}
  for name in loaders:
    cfg = data.DatasetConfig(mixture_or_task_name=task,
                             task_feature_lengths=dict(feature_lengths), batch_size=batch_size,
                             seed=seed, use_cached=True, cache_dir=cache_dir, pack=True,
                             shuffle=True, data_loader=name, worker_count=grain_workers)
    if name == 'grain':
      from trainer.training import numpy_converters  # pylint: disable=g-import-not-at-top
      converter = numpy_converters.for_model(model, pack=True,
                                             task_feature_lengths=feature_lengths)
      figures = grain_read_throughput(cfg, converter, batches=batches)
    else:
      from trainer.training import feature_converters  # pylint: disable=g-import-not-at-top
      converter = feature_converters.for_model(model, pack=True)
      figures = read_throughput(cfg, converter, batches=batches)
    ratio = figures['tokens_per_s'] / need['tokens_per_s']
    figures.update({'needed_tokens_per_s': need['tokens_per_s'],
                    'needed_examples_per_s': need['rows_per_s'],
                    'flops_per_token': need['flops_per_token'], 'headroom': ratio,
                    'enough': ratio >= headroom, 'cpu_count': os.cpu_count()})
    if resume_at:
      figures['resume_first_batch_s'] = resume_first_batch_s(cfg, loader=name,
                                                             converter=converter, at=resume_at)
    results[name] = figures
    workers = f' ({grain_workers} workers)' if name == 'grain' and grain_workers else ''
    log(f"input_bench: {name:5s}{workers} read {figures['rows']} rows in {figures['seconds']:.2f} s "
        f"(first batches {figures['startup_s']:.1f} s) | {figures['examples_per_s']:,.1f} "
        f"examples/s | {figures['tokens_per_s']:,.0f} tokens/s (real "
        f"{figures['real_tokens_per_s']:,.0f}) | {os.cpu_count()} CPUs")
  if resume_at:
    parts = []
    for n in sorted(resume_at):
      parts.append(f'at batch {n:,}: ' + ', '.join(
          f"{name} {results[name]['resume_first_batch_s'][n]:.2f} s" for name in loaders))
    log('input_bench: resume -> first batch | ' + ' | '.join(parts))
  ratios = ', '.join(f"{results[name]['headroom']:,.2f}x {name}" for name in loaders)
  first = results[loaders[0]]
  log(f"input_bench: trainer at {100 * mfu:.0f}% MFU of {peak_flops / 1e12:.0f} TFLOP/s needs "
      f"{need['tokens_per_s']:,.0f} tokens/s ({need['rows_per_s']:.2f} examples/s, "
      f"{need['flops_per_token'] / 1e9:.2f} GFLOP/token) -> reader {ratios} "
      f"({'enough' if first['enough'] else 'NOT enough'} for {loaders[0]}: want {headroom:g}x)")
  return {**first, **results}


_CACHE_DIR = flags.DEFINE_string('cache_dir', None, 'A materialised Beam cache to read.',
                                 allow_override=True)
_TASK = flags.DEFINE_string('task', None, 'The cached task (source or cached name).',
                            allow_override=True)
_TEXT_FILE = flags.DEFINE_string('text_file', None, 'Build a small PrefixLM cache from this text.',
                                 allow_override=True)
_WORK_DIR = flags.DEFINE_string('work_dir', None, 'Where --text_file\'s cache is built.',
                                allow_override=True)
_FEATURE_LENGTHS = flags.DEFINE_string('feature_lengths', 'inputs:2048,targets:2048',
                                       'NAME:LENGTH,...', allow_override=True)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Rows per batch.', allow_override=True)
_BATCHES = flags.DEFINE_integer('batches', 20, 'Batches to time.', allow_override=True)
_MFU = flags.DEFINE_float('mfu', 0.55, 'The trainer\'s target MFU.', allow_override=True)
_PEAK_FLOPS = flags.DEFINE_float('peak_flops', 989e12, 'Peak FLOP/s per device.',
                                 allow_override=True)
_HEADROOM = flags.DEFINE_float('headroom', 10.0, 'Wanted reader headroom (x).',
                               allow_override=True)
_LOADERS = flags.DEFINE_list('loaders', ['grain', 'seqio'], 'Loaders to compare (grain, seqio).',
                             allow_override=True)
_GRAIN_WORKERS = flags.DEFINE_integer('grain_workers', 0, 'Grain worker processes (0: one reader '
                                      'thread in this process).', allow_override=True)
_RESUME_AT = flags.DEFINE_list('resume_at', ['10', '10000'], 'Batches at which to time a resume '
                               '(to the first batch); empty: none.', allow_override=True)
flags.adopt_module_key_flags(gin_flags)


def main(argv) -> int:
  del argv
  import gin  # pylint: disable=g-import-not-at-top
  from pipelines import input_bench  # pylint: disable=g-import-not-at-top  (not __main__'s copy)
  model = gin.get_configurable(input_bench.configured_model)()
  try:
    kwargs = dict(
        feature_lengths=parse_lengths(_FEATURE_LENGTHS.value),
        cache_dir=_CACHE_DIR.value, task=_TASK.value, text_file=_TEXT_FILE.value,
        work_dir=_WORK_DIR.value, batch_size=_BATCH_SIZE.value, batches=_BATCHES.value,
        mfu=_MFU.value, peak_flops=_PEAK_FLOPS.value, headroom=_HEADROOM.value,
        loaders=tuple(_LOADERS.value), resume_at=tuple(int(n) for n in _RESUME_AT.value),
        grain_workers=_GRAIN_WORKERS.value)
  except ValueError as e:
    raise cli.UserError(str(e)) from e
  try:
    input_bench.run(model=model, **kwargs)
  except ValueError as e:
    raise cli.UserError(str(e)) from e
  return 0


def run_cli(argv=None) -> int:
  # t5/seqio register gin configurables on import, which must happen before gin is finalised.
  import tasks  # pylint: disable=g-import-not-at-top
  with cli.quiet_native_stderr():
    tasks.register_tasks()  # Imports seqio (and so t5's gin configurables) too.
  return gin_flags.run(main, argv=argv, program='input_bench',
                       prelude=['from __gin__ import dynamic_registration',
                                'from pipelines import input_bench',
                                'input_bench.configured_model.model = %MODEL'])


if __name__ == '__main__':
  sys.exit(run_cli())
