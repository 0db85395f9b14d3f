"""The comparison's data stages: corpus files, SentencePiece vocabulary, Beam caches, SST-2 splits.

Corpus: tinyshakespeare + wikitext-2 + the SST-2 training sentences without their labels (the
shared data directory; only the sentences fine-tuning trains on, never its held-out slice or the
dev set) + the toolkit's built-in text: the pydoc topics (`tasks.builtin.prepare_pydoc_corpus`,
the demo's corpus) and the standard library's docstrings
(`tasks.builtin.prepare_docstrings_corpus`), as blank-line-separated paragraphs in `train.txt` /
`validation.txt` (the last `heldout_fraction` of each source's paragraphs is held out). Tasks
are `pipelines.demo_tasks` (`demo_causal_lm`, `demo_prefix_lm`, `demo_ul2`, ...), named by the
GEMMA_ADAPT_DEMO_* variables, so the Beam cache job (`pipelines.cache.driver.run_cache_job`, the
library form of `python -m pipelines.cache_tasks`) and the trainer see the same tasks.
"""
import dataclasses
import hashlib
import os
import random
import re
from typing import Dict, Optional, Sequence

CORPUS_TASKS_MODULE = 'pipelines.demo_tasks'
SST2_TASKS_MODULE = 'scripts.comparison.sst2_tasks'
TASK_PREFIX = 'demo'


def _paragraphs(path: str):
  with open(path, encoding='utf-8') as f:
    text = f.read()
  # Blank (or whitespace-only: wikitext's ' \n') lines separate paragraphs.
  return [p.strip() for p in re.split(r'\n[ \t]*\n', text) if p.strip()]


def _sentences(tsv_path: str):
  """The sentence column of a GLUE SST-2 file (header line skipped): one paragraph each."""
  with open(tsv_path, encoding='utf-8') as f:
    sentences = (row.split('\t')[0].strip() for row in f.read().splitlines()[1:])
    return [s for s in sentences if s]


# The files the comparison reads from --data_dir (../shared/data's layout).
DATA_FILES = {'tinyshakespeare': 'tinyshakespeare/input.txt', 'wikitext-2': 'wikitext-2/valid.txt',
              'sst2-train': 'glue/SST-2/train.tsv', 'sst2-dev': 'glue/SST-2/dev.tsv'}


def data_fingerprint(data_dir: str) -> str:
  """SHA-256 of the `DATA_FILES` under `data_dir` (names and bytes; absent ones as absent).

  Stage keys take this, not the directory's path: the same data elsewhere reuses the stages, and
  edited data reruns them (5.9 MB: a few tens of milliseconds).
  """
  digest = hashlib.sha256()
  for name, rel in sorted(DATA_FILES.items()):
    path = os.path.join(data_dir, rel)
    digest.update(name.encode() + b'\0')
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        digest.update(hashlib.sha256(f.read()).digest())
    else:
      digest.update(b'absent')
  return digest.hexdigest()[:16]


def _require_files(paths: Sequence[str], data_dir: str) -> None:
  """One-line UserError naming the files of `paths` that do not exist."""
  from tasks import cli  # pylint: disable=g-import-not-at-top
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise cli.UserError(f'compare: --data_dir={data_dir}: missing {missing}')


# Every source the corpus can take, in the order they are cut and shuffled.
SOURCES = ('tinyshakespeare', 'wikitext-2', 'sst2-train-sentences', 'pydoc', 'docstrings')
BUILTIN_SOURCES = ('pydoc', 'docstrings')


def build_corpus(*, out_dir: str, data_dir: str, sources: Sequence[str], max_chars: int,
                 heldout_fraction: float, sst2_train: Optional[str] = None) -> Dict:
  """Writes out_dir/{train,validation}.txt; returns character and paragraph counts per source.

  `sources`: names from `SOURCES` (taken in that order, whatever the order given).
  `sst2_train`: for 'sst2-train-sentences', the SST-2 file fine-tuning trains on (`sst2_splits`'
  train_fit.tsv); its sentences, without labels, are a source (task-adaptive pretraining text;
  never the held-out slice or the dev set).
  """
  from tasks import builtin  # pylint: disable=g-import-not-at-top
  from tasks import cli  # pylint: disable=g-import-not-at-top
  unknown = sorted(set(sources) - set(SOURCES))
  if unknown or not sources:
    raise cli.UserError(f'compare: corpus_sources={",".join(sources)}: expected names from '
                        f'{",".join(SOURCES)}' + (f' (unknown: {unknown})' if unknown else ''))
  files = {
      **{name: [os.path.join(data_dir, DATA_FILES[name])]
         for name in ('tinyshakespeare', 'wikitext-2')},
      'sst2-train-sentences': [sst2_train or '<sst2_train not given>'],
      **{name: [os.path.join(out_dir, name, 'train.txt'),
                os.path.join(out_dir, name, 'validation.txt')] for name in BUILTIN_SOURCES},
  }
  sources = {name: files[name] for name in SOURCES if name in sources}
  for name in BUILTIN_SOURCES:
    if name in sources:
      builtin.PREPARE[name](os.path.join(out_dir, name))
  _require_files([f for files in sources.values() for f in files], data_dir)
  train, held, counts = [], [], {}
  per_source = max_chars // len(sources) if max_chars else 0
  for name, files in sources.items():
    paras = [p for f in files for p in (_sentences(f) if f.endswith('.tsv') else _paragraphs(f))]
    if per_source:
      kept, total = [], 0
      for p in paras:
        if total >= per_source:
          break
        kept.append(p)
        total += len(p)
      paras = kept
    cut = max(1, int(len(paras) * (1 - heldout_fraction)))
    train += paras[:cut]
    held += paras[cut:]
    counts[name] = {'paragraphs': len(paras), 'chars': sum(len(p) for p in paras)}
  random.Random(0).shuffle(train)
  for split, paras in (('train', train), ('validation', held)):
    with open(os.path.join(out_dir, f'{split}.txt'), 'w', encoding='utf-8') as f:
      f.write('\n\n'.join(paras) + '\n')
  return {'sources': counts, 'train_chars': sum(map(len, train)),
          'validation_chars': sum(map(len, held))}


def use_corpus(*, corpus_dir: str, vocab_model: str) -> None:
  """Points `pipelines.demo_tasks` at the corpus and vocabulary, and registers its tasks here."""
  import importlib  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from tasks import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  os.environ['GEMMA_ADAPT_DEMO_TRAIN'] = os.path.join(corpus_dir, 'train.txt')
  os.environ['GEMMA_ADAPT_DEMO_VALIDATION'] = os.path.join(corpus_dir, 'validation.txt')
  os.environ['GEMMA_ADAPT_DEMO_FORMAT'] = 'paragraphs'
  os.environ[vocab_lib.VOCAB_ENV] = vocab_model
  if CORPUS_TASKS_MODULE in sys.modules:
    importlib.reload(sys.modules[CORPUS_TASKS_MODULE])
  else:
    importlib.import_module(CORPUS_TASKS_MODULE)


def cache_tasks(*, cache_dir: str, task_names: Sequence[str], feature_lengths: Dict[str, int],
                num_workers: int, running_mode: str,
                module_import: Sequence[str] = (CORPUS_TASKS_MODULE,)) -> Dict:
  """Runs the Beam cache job for `task_names` at `feature_lengths` (every split of each)."""
  from pipelines.cache import driver  # pylint: disable=g-import-not-at-top
  from pipelines.cache import plan  # pylint: disable=g-import-not-at-top
  config = plan.CacheJobConfig(
      tasks=tuple(task_names), output_cache_dir=cache_dir,
      feature_lengths=tuple(sorted(feature_lengths.items())),
      module_import=tuple(module_import), min_shards=2)
  out = driver.run_cache_job(config, num_workers=num_workers, running_mode=running_mode,
                             log=lambda m: print(f'  cache: {m}', flush=True))
  return {'summary': out.get('summary', {}), 'wall_time_s': out.get('wall_time_s')}


def sst2_splits(*, out_dir: str, data_dir: str, heldout_examples: int, train_examples: int,
                seed: int = 0) -> Dict:
  """SST-2 files for early stopping: out_dir/SST-2/{train_fit,train_heldout,dev}.tsv.

  `train_heldout` is a seeded random slice of GLUE train (never trained on), `train_fit` the rest
  (first `train_examples` of a seeded shuffle when nonzero), `dev` the whole GLUE dev set.
  """
  train_tsv, dev_tsv = (os.path.join(data_dir, DATA_FILES[k]) for k in ('sst2-train', 'sst2-dev'))
  _require_files([train_tsv, dev_tsv], data_dir)
  with open(train_tsv, encoding='utf-8') as f:
    header, *rows = f.read().splitlines()
  rows = [r for r in rows if r]
  random.Random(seed).shuffle(rows)
  held, fit = rows[:heldout_examples], rows[heldout_examples:]
  if train_examples:
    fit = fit[:train_examples]
  dst = os.path.join(out_dir, 'SST-2')
  os.makedirs(dst, exist_ok=True)
  for name, part in (('train_fit.tsv', fit), ('train_heldout.tsv', held)):
    with open(os.path.join(dst, name), 'w', encoding='utf-8') as f:
      f.write('\n'.join([header] + part) + '\n')
  with open(dev_tsv, encoding='utf-8') as f:
    dev = f.read()
  with open(os.path.join(dst, 'dev.tsv'), 'w', encoding='utf-8') as f:
    f.write(dev)
  return {'train_fit': len(fit), 'train_heldout': len(held),
          'dev': len([l for l in dev.splitlines()[1:] if l])}


def register_sst2(*, glue_dir: str, vocab_model: str) -> Dict[str, str]:
  """Registers `glue_sst2cmp_{text_to_text,classification}` with splits train / heldout /
  validation over `sst2_splits`' files; returns {'text_to_text': name, 'classification': name}.

  Also sets the environment `scripts.comparison.sst2_tasks` registers them from, so the Beam cache
  job's workers (`module_import=(SST2_TASKS_MODULE,)`) see the same tasks.
  """
  from scripts.comparison import sst2_tasks  # pylint: disable=g-import-not-at-top
  from tasks import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  from tasks.downstream import glue  # pylint: disable=g-import-not-at-top
  os.environ[sst2_tasks.SST2_DIR_ENV] = glue_dir
  os.environ[vocab_lib.VOCAB_ENV] = vocab_model
  bench = dataclasses.replace(glue.SST2, name='sst2cmp', split_files={
      'train': 'train_fit.tsv', 'heldout': 'train_heldout.tsv', 'validation': 'dev.tsv'})
  glue.register_glue_tasks(data_dir=glue_dir, vocabulary=vocab_model, benchmarks=(bench,))
  return {'text_to_text': 'glue_sst2cmp_text_to_text',
          'classification': 'glue_sst2cmp_classification'}
