"""The two tasks the cache-job benchmark (`python -m pipelines.bench`) caches, one per job.

`bench_<objective>`: the project's pretraining task on the benchmark corpus; `bench_<objective>_seqio`:
the same source, features and preprocessors, the objective's lengths bound, then a
`CacheDatasetPlaceholder`, so seqio's `cache_tasks_main` does the same work (tokenize + objective)
before caching. Both jobs load this module with `--module_import=pipelines.bench_tasks`; it
registers the tasks when `$GEMMA_ADAPT_BENCH_DIR` names the benchmark's work directory (written by
`pipelines.bench`: `bench.json`, `corpus/*.txt`).
"""
import json
import os
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BENCH_ENV = "GEMMA_ADAPT_BENCH_DIR"


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


if os.environ.get(BENCH_ENV):  # Imported by both jobs' --module_import.
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
