r"""Benchmark: this project's cache job vs seqio's `cache_tasks_main`, and the SentencePiece ceiling.

    python -m pipelines.bench [--data_dir=../shared/data] [--corpus_mb=20] [--work_dir=/tmp/...]

1. Builds a corpus of >= --corpus_mb MB from tinyshakespeare + wikitext-2 (their lines shuffled
   with a fixed seed and repeated), in --num_files files, and a --vocab_size SentencePiece model.
2. Both jobs load `pipelines.bench_tasks` (`--module_import`), which registers
   `bench_<objective>`, the project's task, and `bench_<objective>_seqio`, the same work for
   seqio's tool (tokenize + objective before a `CacheDatasetPlaceholder`).
3. Runs `python -m pipelines.cache_tasks` and `python -m seqio.scripts.cache_tasks_main`, one
   after the other, with the same Beam runner (FnApiRunner, multi-process, one worker per core),
   and prints tokens/s of each (output tokens as seqio counts them in stats.<split>.json:
   `inputs_tokens + targets_tokens`, EOS and padding excluded, over the wall time of the whole
   command, start-up included) and the ratio; then SentencePiece's own batch encode throughput on
   the same text, one thread and all cores: the ceiling for the tokenisation part.
This prints figures; it is not a test.
"""
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402

from pipelines.bench_tasks import BENCH_ENV, build_corpus  # noqa: E402
from tasks import cli  # noqa: E402

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_DATA_DIR = flags.DEFINE_string("data_dir", os.path.join(_REPO, "..", "shared", "data"),
                                "Where tinyshakespeare/ and wikitext-2 are.")
_WORK_DIR = flags.DEFINE_string("work_dir", "/tmp/gemma_adapt_cache_bench", "Where everything goes.")
_CORPUS_MB = flags.DEFINE_float("corpus_mb", 20.0, "Corpus size in MB.")
_NUM_FILES = flags.DEFINE_integer("num_files", 8, "Corpus files.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 8000, "SentencePiece vocabulary size.")
_OBJECTIVE = flags.DEFINE_enum("objective", "span_corruption", ["ul2", "prefix_lm", "span_corruption"],
                               "The objective both jobs run.")
_FEATURE_LENGTHS = flags.DEFINE_string("feature_lengths", "inputs:512,targets:128",
                                       "NAME:LENGTH,... of the cached examples.")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1, "Beam worker processes.")
_SKIP_SEQIO = flags.DEFINE_boolean("skip_seqio", False, "Run only this project's job.")
_OBJECTIVE_IMPL = flags.DEFINE_enum("objective_impl", "numpy", ["numpy", "tf"],
                                    "this job's --objective_impl (tf: the objective in tf.data, as "
                                    "seqio)")


def _run(cmd, env, label):
  print(f"\n$ {' '.join(cmd)}", flush=True)
  start = time.time()
  proc = subprocess.run(cmd, env=env, cwd=_REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True, check=False)
  wall = time.time() - start
  if proc.returncode != 0:
    print(proc.stdout[-3000:])
    raise SystemExit(f"error: {label} failed (exit {proc.returncode})")
  return wall, proc.stdout


def _output_tokens(stats_path, features=("inputs", "targets")):
  with open(stats_path) as f:
    stats = json.load(f)
  return sum(stats.get(f"{k}_tokens", 0) for k in features), stats


def sentencepiece_ceiling(model: str, paths, threads: int):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  sp = spm.SentencePieceProcessor(model_file=model)
  lines = []
  for p in paths:
    with open(p, encoding="utf-8") as f:
      lines.extend(f.read().splitlines())
  out = {}
  for n in sorted({1, threads}):
    start = time.time()
    ids = sp.encode(lines, num_threads=n)
    wall = time.time() - start
    out[n] = (sum(len(x) for x in ids), wall)
  return out


def main(argv) -> int:
  del argv

  from pipelines.cache import layout  # pylint: disable=g-import-not-at-top
  from pipelines.cache import plan as cache_plan  # pylint: disable=g-import-not-at-top
  lengths = cache_plan.parse_feature_lengths(_FEATURE_LENGTHS.value)
  work = os.path.abspath(_WORK_DIR.value)
  corpus_dir = os.path.join(work, "corpus")
  print(f"Building a {_CORPUS_MB.value:g} MB corpus in {_NUM_FILES.value} files under {corpus_dir}",
        flush=True)
  paths = build_corpus(_DATA_DIR.value, corpus_dir, corpus_mb=_CORPUS_MB.value,
                       num_files=_NUM_FILES.value)
  vocab_prefix = os.path.join(work, f"spm{_VOCAB_SIZE.value}")
  if not os.path.exists(vocab_prefix + ".model"):
    from tasks import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
    sample = os.path.join(work, "vocab_sample.txt")
    with open(paths[0], encoding="utf-8") as f, open(sample, "w", encoding="utf-8") as g:
      g.write(f.read()[:3_000_000])
    print(f"Training a {_VOCAB_SIZE.value}-piece SentencePiece model ...", flush=True)
    vocab_lib.train_vocabulary(input_files=[sample], vocab_size=_VOCAB_SIZE.value,
                               output_prefix=vocab_prefix)
  with open(os.path.join(work, "bench.json"), "w") as f:
    json.dump({"objective": _OBJECTIVE.value, "feature_lengths": lengths,
               "vocab": vocab_prefix + ".model"}, f)
  env = {**os.environ, BENCH_ENV: work,
         "PYTHONPATH": os.pathsep.join(filter(None, [_REPO, os.environ.get("PYTHONPATH")]))}
  n = _WORKERS.value
  corpus_bytes = sum(os.path.getsize(p) for p in paths)
  print(f"corpus: {corpus_bytes / 1e6:.1f} MB, {len(paths)} files; {n} worker processes; "
        f"load average now {os.getloadavg()[0]:.1f}", flush=True)

  lengths_flag = ",".join(f"{k}:{v}" for k, v in lengths.items())
  ours_dir = os.path.join(work, "out_ours")
  ours_wall, ours_log = _run(
      [sys.executable, "-m", "pipelines.cache_tasks", "--module_import=pipelines.bench_tasks",
       f"--tasks=bench_{_OBJECTIVE.value}", f"--output_cache_dir={ours_dir}",
       f"--feature_lengths={lengths_flag}", f"--min_shards={_NUM_FILES.value}",
       f"--direct_num_workers={n}", "--overwrite", "--progress_interval_s=30",
       f"--objective_impl={_OBJECTIVE_IMPL.value}"], env, "cache_tasks")
  print(ours_log.rstrip())
  cached = layout.cached_task_name(f"bench_{_OBJECTIVE.value}", lengths)
  ours_tokens, ours_stats = _output_tokens(os.path.join(ours_dir, cached, "stats.train.json"))
  ours_rate = ours_tokens / ours_wall

  seqio_rate = None
  if not _SKIP_SEQIO.value:
    seqio_dir = os.path.join(work, "out_seqio")
    seqio_wall, _ = _run(
        [sys.executable, "-m", "seqio.scripts.cache_tasks_main",
         "--module_import=pipelines.bench_tasks", f"--tasks=bench_{_OBJECTIVE.value}_seqio",
         f"--output_cache_dir={seqio_dir}", f"--min_shards={_NUM_FILES.value}", "--overwrite",
         "--base_seed=1",
         f"--pipeline_options=--runner=FnApiRunner,--direct_num_workers={n},"
         "--direct_running_mode=multi_processing"], env, "seqio cache_tasks_main")
    seqio_tokens, seqio_stats = _output_tokens(
        os.path.join(seqio_dir, f"bench_{_OBJECTIVE.value}_seqio", "stats.train.json"))
    seqio_rate = seqio_tokens / seqio_wall

  ceiling = sentencepiece_ceiling(vocab_prefix + ".model", paths, n)

  print("\n==== cache job benchmark ====")
  print(f"corpus {corpus_bytes / 1e6:.1f} MB, objective {_OBJECTIVE.value} at {lengths_flag} "
        f"(this job: --objective_impl={_OBJECTIVE_IMPL.value}), "
        f"{n} workers, load average {os.getloadavg()[0]:.1f} at the end")
  print(f"pipelines.cache_tasks : {ours_tokens:,} output tokens ({ours_stats['examples']:,} "
        f"examples, {ours_stats['source_tokens']:,} source tokens) in {ours_wall:.1f}s = "
        f"{ours_rate:,.0f} tokens/s ({ours_stats['source_tokens'] / ours_wall:,.0f} source "
        f"tokens/s)")
  if seqio_rate is not None:
    print(f"seqio cache_tasks_main: {seqio_tokens:,} output tokens ({seqio_stats['examples']:,} "
          f"examples) in {seqio_wall:.1f}s = {seqio_rate:,.0f} tokens/s")
    print(f"ratio: {ours_rate / seqio_rate:.2f}x seqio's tool (target >= 1.5x)")
  for threads, (tokens, wall) in sorted(ceiling.items()):
    print(f"SentencePiece encode, {threads} thread(s): {tokens:,} tokens in {wall:.1f}s = "
          f"{tokens / wall:,.0f} tokens/s")
  best = max(t / w for t, w in ceiling.values())
  print(f"cache job source tokens/s = {ours_stats['source_tokens'] / ours_wall / best:.1%} of "
        f"the SentencePiece ceiling ({best:,.0f} tokens/s)")
  return 0


if __name__ == "__main__":
  cli.main_exit(main, program="bench")
