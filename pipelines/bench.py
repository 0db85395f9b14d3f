r"""Benchmark: this project's cache job vs seqio's `cache_tasks_main`, and the SentencePiece ceiling.

    python -m pipelines.bench [--data_dir=../shared/data] [--corpus_mb=20] [--work_dir=/tmp/...]

1. Builds a corpus of >= --corpus_mb MB from tinyshakespeare + wikitext-2 (their lines shuffled
   with a fixed seed and repeated), in --num_files files, and a --vocab_size SentencePiece model.
2. Registers (when this module is imported with $GEMMA_ADAPT_BENCH_DIR set, i.e. by both jobs'
   --module_import) `bench_<objective>`, the project's task, and `bench_<objective>_seqio`: the same
   source, features and preprocessors, the objective's lengths bound, then a
   `CacheDatasetPlaceholder` — so seqio's tool does the same work (tokenize + objective) before
   caching.
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
import random
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BENCH_ENV = "GEMMA_ADAPT_BENCH_DIR"
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench_config(bench_dir):
  with open(os.path.join(bench_dir, "bench.json")) as f:
    return json.load(f)


def register_bench_tasks(bench_dir: str) -> None:
  """`bench_<objective>` (ours) and `bench_<objective>_seqio` (placeholder after the objective)."""
  import seqio  # pylint: disable=g-import-not-at-top
  from tasks import pretraining, sources  # pylint: disable=g-import-not-at-top
  config = _bench_config(bench_dir)
  objective, lengths = config["objective"], config["feature_lengths"]
  corpus = sources.CorpusSpec(name="bench", format="text",
                              splits={"train": os.path.join(bench_dir, "corpus", "*.txt")})
  pretraining.register_corpus_tasks(corpus=corpus, vocabulary=config["vocab"],
                                    objectives_to_register=(objective,), mixtures={})
  ours = seqio.TaskRegistry.get(f"bench_{objective}")
  preps = list(ours.preprocessors)
  # seqio's tool runs pre-cache preprocessors without sequence lengths (and refuses any with a
  # `sequence_length` argument before the placeholder): bind ours in a wrapper without it.
  objective_fn, bound = preps[-1], dict(lengths)

  def bound_objective(dataset, output_features):
    return objective_fn(dataset, sequence_length=bound, output_features=output_features)

  preps[-1] = bound_objective
  name = f"bench_{objective}_seqio"
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=ours.source, output_features=ours.output_features,
                         preprocessors=preps + [seqio.CacheDatasetPlaceholder()], metric_fns=[])


if os.environ.get(BENCH_ENV):  # Imported by the jobs' --module_import.
  register_bench_tasks(os.environ[BENCH_ENV])


def build_corpus(data_dir: str, out_dir: str, *, corpus_mb: float, num_files: int,
                 seed: int = 0) -> list:
  lines = []
  for rel in ("tinyshakespeare/input.txt", "wikitext-2/valid.txt"):
    with open(os.path.join(data_dir, rel), encoding="utf-8") as f:
      lines.extend(l.rstrip("\n") for l in f if l.strip())
  rng = random.Random(seed)
  target = int(corpus_mb * 1e6)
  out, size = [], 0
  while size < target:
    batch = lines[:]
    rng.shuffle(batch)
    for line in batch:
      out.append(line)
      size += len(line.encode()) + 1
      if size >= target:
        break
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  per_file = -(-len(out) // num_files)
  for i in range(num_files):
    path = os.path.join(out_dir, f"part-{i:03d}.txt")
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n".join(out[i * per_file:(i + 1) * per_file]) + "\n")
    paths.append(path)
  return paths


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


def main(argv=None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default=os.path.join(_REPO, "..", "shared", "data"))
  parser.add_argument("--work_dir", default="/tmp/gemma_adapt_cache_bench")
  parser.add_argument("--corpus_mb", type=float, default=20.0)
  parser.add_argument("--num_files", type=int, default=8)
  parser.add_argument("--vocab_size", type=int, default=8000)
  parser.add_argument("--objective", default="span_corruption",
                      choices=["ul2", "prefix_lm", "span_corruption"])
  parser.add_argument("--feature_lengths", default="inputs:512,targets:128")
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--skip_seqio", action="store_true")
  parser.add_argument("--objective_impl", default="numpy", choices=["numpy", "tf"],
                      help="this job's --objective_impl (tf: the objective in tf.data, as seqio)")
  args = parser.parse_args(argv)

  from pipelines import cache_plan  # pylint: disable=g-import-not-at-top
  lengths = cache_plan.parse_feature_lengths(args.feature_lengths)
  work = os.path.abspath(args.work_dir)
  corpus_dir = os.path.join(work, "corpus")
  print(f"Building a {args.corpus_mb:g} MB corpus in {args.num_files} files under {corpus_dir}",
        flush=True)
  paths = build_corpus(args.data_dir, corpus_dir, corpus_mb=args.corpus_mb,
                       num_files=args.num_files)
  vocab_prefix = os.path.join(work, f"spm{args.vocab_size}")
  if not os.path.exists(vocab_prefix + ".model"):
    from tasks import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
    sample = os.path.join(work, "vocab_sample.txt")
    with open(paths[0], encoding="utf-8") as f, open(sample, "w", encoding="utf-8") as g:
      g.write(f.read()[:3_000_000])
    print(f"Training a {args.vocab_size}-piece SentencePiece model ...", flush=True)
    vocab_lib.train_vocabulary(input_files=[sample], vocab_size=args.vocab_size,
                               output_prefix=vocab_prefix)
  with open(os.path.join(work, "bench.json"), "w") as f:
    json.dump({"objective": args.objective, "feature_lengths": lengths,
               "vocab": vocab_prefix + ".model"}, f)
  env = {**os.environ, BENCH_ENV: work,
         "PYTHONPATH": os.pathsep.join(filter(None, [_REPO, os.environ.get("PYTHONPATH")]))}
  n = args.workers
  corpus_bytes = sum(os.path.getsize(p) for p in paths)
  print(f"corpus: {corpus_bytes / 1e6:.1f} MB, {len(paths)} files; {n} worker processes; "
        f"load average now {os.getloadavg()[0]:.1f}", flush=True)

  lengths_flag = ",".join(f"{k}:{v}" for k, v in lengths.items())
  ours_dir = os.path.join(work, "out_ours")
  ours_wall, ours_log = _run(
      [sys.executable, "-m", "pipelines.cache_tasks", "--module_import=pipelines.bench",
       f"--tasks=bench_{args.objective}", f"--output_cache_dir={ours_dir}",
       f"--feature_lengths={lengths_flag}", f"--min_shards={args.num_files}",
       f"--direct_num_workers={n}", "--overwrite", "--progress_interval_s=30",
       f"--objective_impl={args.objective_impl}"], env, "cache_tasks")
  print(ours_log.rstrip())
  cached = cache_plan.cached_task_name(f"bench_{args.objective}", lengths)
  ours_tokens, ours_stats = _output_tokens(os.path.join(ours_dir, cached, "stats.train.json"))
  ours_rate = ours_tokens / ours_wall

  seqio_rate = None
  if not args.skip_seqio:
    seqio_dir = os.path.join(work, "out_seqio")
    seqio_wall, _ = _run(
        [sys.executable, "-m", "seqio.scripts.cache_tasks_main",
         "--module_import=pipelines.bench", f"--tasks=bench_{args.objective}_seqio",
         f"--output_cache_dir={seqio_dir}", f"--min_shards={args.num_files}", "--overwrite",
         "--base_seed=1",
         f"--pipeline_options=--runner=FnApiRunner,--direct_num_workers={n},"
         "--direct_running_mode=multi_processing"], env, "seqio cache_tasks_main")
    seqio_tokens, seqio_stats = _output_tokens(
        os.path.join(seqio_dir, f"bench_{args.objective}_seqio", "stats.train.json"))
    seqio_rate = seqio_tokens / seqio_wall

  ceiling = sentencepiece_ceiling(vocab_prefix + ".model", paths, n)

  print("\n==== cache job benchmark ====")
  print(f"corpus {corpus_bytes / 1e6:.1f} MB, objective {args.objective} at {lengths_flag} "
        f"(this job: --objective_impl={args.objective_impl}), "
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
  sys.exit(main())
