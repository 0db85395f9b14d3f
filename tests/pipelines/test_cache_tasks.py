"""The Beam cache job (pipelines/cache/, `python -m pipelines.cache_tasks`): read-back, equality with seqio, bad input,
resumability, clear errors. Runs the in-process Beam runner; the multi-process, Dask and kill tests
are in test_cache_runners.py (they reuse the fixtures below)."""
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import seqio  # noqa: E402

from pipelines.cache import driver  # noqa: E402
from pipelines.cache import layout  # noqa: E402
from pipelines.cache import plan as cache_plan  # noqa: E402
from pipelines.cache import registry as cache_registry  # noqa: E402

LENGTHS = {"inputs": 64, "targets": 16}

# Registers small tasks from env vars; imported by the job's workers via --module_import (the
# same way a user's own module is), so it is written to a temp dir on PYTHONPATH.
TASK_MODULE = textwrap.dedent('''
    import functools, os
    import seqio
    import t5.data.preprocessors as t5_prep
    from tasks import sources

    VOCAB = seqio.SentencePieceVocabulary(os.environ["CACHE_TEST_VOCAB"])
    def _features(keys):
      return {k: seqio.Feature(VOCAB, add_eos=True) for k in keys}
    _REKEY = functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"})
    _SPAN = [_REKEY, seqio.preprocessors.tokenize, t5_prep.span_corruption,
             seqio.preprocessors.append_eos_after_trim]
    TEXT = sources.CorpusSpec(name="cachetest", format="text",
                              splits={"train": os.environ["CACHE_TEST_TEXT"]})
    ONE = sources.CorpusSpec(name="cachetest1", format="text",
                             splits={"train": os.environ["CACHE_TEST_ONE"]})
    JSONL = sources.CorpusSpec(name="cachetestbad", format="jsonl", max_document_chars=300,
                               splits={"train": os.environ["CACHE_TEST_JSONL"]})
    for name, spec in (("cachetest_span", TEXT), ("cachetest1_span", ONE)):
      if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(name, source=spec.data_source(),
                               output_features=_features(["inputs", "targets"]),
                               preprocessors=_SPAN)
    # The project's own tasks (tasks.pretraining): UL2 and PrefixLM, and their mixture.
    from tasks import pretraining
    pretraining.register_corpus_tasks(
        corpus=sources.CorpusSpec(name="cachetestul2", format="text",
                                  splits={"train": os.environ["CACHE_TEST_ONE"]}),
        vocabulary=os.environ["CACHE_TEST_VOCAB"], objectives_to_register=("ul2", "prefix_lm"),
        mixtures={"ul2_prefix_lm": {"ul2": 0.5, "prefix_lm": 0.5}})
    if "cachetestbad_tokens" not in seqio.TaskRegistry.names():
      seqio.TaskRegistry.add(
          "cachetestbad_tokens", source=JSONL.data_source(), output_features=_features(["targets"]),
          preprocessors=[_REKEY, seqio.preprocessors.tokenize_and_append_eos])
''')

GOOD_DOCS = [f"Document {i}: {'to be or not to be that is the question ' * (1 + i % 3)}"
             for i in range(12)]


def _bad_records():
  """(raw line, reason) for each dead-letter reason the JSONL corpus can produce."""
  return [
      (b'{"text": "caf\xe9 au lait"}', "invalid_utf8"),
      (b'{"text": "unterminated', "malformed_json"),
      (b'{"body": "no text field here"}', "missing_field"),
      (b'{"text": "   "}', "empty"),
      (json.dumps({"text": "x" * 400}).encode(), "too_long"),
      (b'[1, 2, 3]', "malformed_json"),
  ]


@pytest.fixture(scope="session")
def cache_env(tmp_path_factory, shared_data):
  """Vocabulary, corpora and the task module; sets the env vars workers inherit."""
  from tasks import vocab as vocab_lib
  root = tmp_path_factory.mktemp("cache_env")
  text = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()
  wiki = (shared_data / "wikitext-2" / "valid.txt").read_bytes()
  corpus = root / "corpus"
  corpus.mkdir()
  (corpus / "a.txt").write_bytes(text[:40_000])
  (corpus / "b.txt").write_bytes(wiki[:30_000])
  one = root / "one.txt"
  one.write_bytes(text[50_000:70_000])
  train = root / "vocab_train.txt"
  train.write_bytes(text[:200_000])
  model, _ = vocab_lib.train_vocabulary(input_files=[str(train)], vocab_size=400,
                                        output_prefix=str(root / "spm"), num_sentinels=20)
  lines = []
  bad = _bad_records()
  for i, doc in enumerate(GOOD_DOCS):
    lines.append(json.dumps({"text": doc}).encode())
    if i < len(bad):
      lines.append(bad[i][0])
  (root / "docs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
  (root / "cache_test_tasks.py").write_text(TASK_MODULE)
  env = {"CACHE_TEST_VOCAB": model, "CACHE_TEST_TEXT": str(corpus / "*.txt"),
         "CACHE_TEST_ONE": str(one), "CACHE_TEST_JSONL": str(root / "docs.jsonl"),
         "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  sys.path.insert(0, str(root))
  import cache_test_tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  yield {"root": root, "vocab": model, "env": env, "bad": bad}
  sys.path.remove(str(root))
  for k, v in old.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


def make_config(out_dir, tasks, **kw):
  kw.setdefault("feature_lengths", LENGTHS)
  kw.setdefault("min_shards", 3)
  kw.setdefault("min_input_ranges", 4)
  kw.setdefault("min_range_bytes", 4096)
  return cache_plan.CacheJobConfig(tasks=tuple(tasks), output_cache_dir=str(out_dir),
                                   module_import=("cache_test_tasks",), **kw)


def run_job(out_dir, tasks, *, runner="local", num_workers=1, running_mode="in_memory", **kw):
  config = make_config(out_dir, tasks, **kw)
  logs = []
  result = driver.run_cache_job(config, runner=runner, num_workers=num_workers,
                                     running_mode=running_mode, progress_interval_s=60,
                                     quiet=False, log=logs.append)
  result["logs"] = logs
  return result


def dir_digest(out_dir) -> dict:
  """sha256 of every output file; stats files without the wall-time figures."""
  out = {}
  for path in sorted(pathlib.Path(out_dir).rglob("*")):
    if not path.is_file() or ".progress" in path.parts:
      continue
    data = path.read_bytes()
    if path.name.startswith("stats."):
      stats = json.loads(data)
      for k in ("wall_time_s", "tokens_per_s", "source_tokens_per_s"):
        stats.pop(k)
      data = json.dumps(stats, sort_keys=True).encode()
    out[str(path.relative_to(out_dir))] = hashlib.sha256(data).hexdigest()
  return out


def read_cached(cached_name, split="train"):
  task = seqio.get_mixture_or_task(cached_name)
  ds = task.get_dataset(None, split=split, use_cached=True, shuffle=False)
  return [{k: v.tolist() for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


def _as_set(examples):
  return sorted(json.dumps(ex, sort_keys=True) for ex in examples)


def test_cached_task_equals_task_get_dataset(cache_env, tmp_path):
  """One input range: the cache holds exactly what task.get_dataset(seed=range seed) yields."""
  result = run_job(tmp_path, ["cachetest1_span"], min_input_ranges=1)
  assert result["units"] == 1
  cached = layout.cached_task_name("cachetest1_span", LENGTHS)
  assert cached == "cachetest1_span.in64_tg16"
  out_dir = tmp_path / cached
  assert sorted(p.name for p in out_dir.iterdir()) == [
      "COMPLETED", "cache_job.json", "deadletter.train.jsonl", "info.train.json",
      "stats.train.json", "train.tfrecord-00000-of-00003", "train.tfrecord-00001-of-00003",
      "train.tfrecord-00002-of-00003", "train.tfrecord_index-00000-of-00003",
      "train.tfrecord_index-00001-of-00003", "train.tfrecord_index-00002-of-00003"]
  assert cache_registry.register_cached_tasks(str(tmp_path)) == [cached]
  got = read_cached(cached)

  one = os.environ["CACHE_TEST_ONE"]
  seed = cache_plan.derive_seed(0, "cachetest1_span", "train", os.path.basename(one), 0,
                                os.path.getsize(one))
  task = seqio.get_mixture_or_task("cachetest1_span")
  want = [{k: ex[k].tolist() for k in ("inputs", "targets")} for ex in
          task.get_dataset(LENGTHS, split="train", shuffle=False, seed=seed).as_numpy_iterator()]
  assert len(want) > 20
  assert _as_set(got) == _as_set(want)
  stats = json.loads((out_dir / "stats.train.json").read_text())
  assert stats["examples"] == len(want)
  assert stats["inputs_length_tokens"] == sum(len(ex["inputs"]) for ex in want)
  assert 0 <= stats["targets_padding_fraction"] < 1
  assert stats["targets_padding_fraction"] == pytest.approx(
      1 - stats["targets_length_tokens"] / (len(want) * LENGTHS["targets"]))
  # Read back through a feature converter, as the trainer does, with no preprocessing.
  ds = seqio.get_dataset(cached, task_feature_lengths=LENGTHS, use_cached=True, shuffle=False,
                         feature_converter=seqio.EncDecFeatureConverter(pack=False))
  first = next(ds.as_numpy_iterator())
  assert first["encoder_input_tokens"].shape == (LENGTHS["inputs"],)
  with pytest.raises(ValueError, match="requires caching"):
    seqio.get_mixture_or_task(cached).get_dataset(LENGTHS, use_cached=False)


def test_bad_records_are_counted_and_no_valid_document_is_lost(cache_env, tmp_path):
  result = run_job(tmp_path, ["cachetestbad_tokens"], feature_lengths={"targets": 256},
                   min_input_ranges=3, min_range_bytes=200)
  assert result["units"] >= 3
  cached = "cachetestbad_tokens.tg256"
  stats = result["summary"][cached]["train"]
  want_reasons = {}
  for _, reason in cache_env["bad"]:
    want_reasons[reason] = want_reasons.get(reason, 0) + 1
  assert stats["dead_letters"] == want_reasons
  assert stats["documents"] == len(GOOD_DOCS)
  assert stats["records"] == len(GOOD_DOCS) + len(cache_env["bad"])
  # Beam metrics carry the same counts.
  for reason, n in want_reasons.items():
    assert result["metrics"][f"dead_letter_{reason}"] == n
  dead = [json.loads(l) for l in
          (tmp_path / cached / "deadletter.train.jsonl").read_text().splitlines()]
  assert sorted(d["reason"] for d in dead) == sorted(r for _, r in cache_env["bad"])
  assert any("unterminated" in d["raw"] for d in dead)
  # Exactly the valid documents' tokens (+EOS), each once.
  cache_registry.register_cached_tasks(str(tmp_path))
  got = sorted(tuple(ex["targets"]) for ex in read_cached(cached))
  vocab = seqio.SentencePieceVocabulary(cache_env["vocab"])
  want = sorted(tuple(vocab.encode(doc) + [vocab.eos_id]) for doc in GOOD_DOCS)
  assert got == want


def test_rerun_skips_completed_and_cleans_partial_output(cache_env, tmp_path):
  ref = tmp_path / "ref"
  units = run_job(ref, ["cachetest_span"])["units"]
  reference = dir_digest(ref)
  assert units == 5  # 40 kB + 30 kB in ranges of about 70 kB / min_input_ranges=4.
  assert len([k for k in reference if ".tfrecord-" in k]) == 5  # One shard per range (>= 3).

  # A killed run leaves shards but no COMPLETED: it is not registered, and a rerun redoes it.
  out = tmp_path / "out"
  cached = layout.cached_task_name("cachetest_span", LENGTHS)
  partial = out / cached
  partial.mkdir(parents=True)
  (partial / "train.tfrecord-00000-of-00005").write_bytes(b"half a shard")
  (partial / "cache_job.json").write_text(json.dumps({"task": "cachetest_span"}))
  assert cache_registry.register_cached_tasks(str(out)) == []
  result = run_job(out, ["cachetest_span"])
  assert any("partial output" in line for line in result["logs"])
  assert dir_digest(out) == reference

  # COMPLETED: skipped (files untouched) unless --overwrite.
  shard = partial / "train.tfrecord-00003-of-00005"
  mtime = shard.stat().st_mtime_ns
  result = run_job(out, ["cachetest_span"])
  assert result["units"] == 0 and any(line.startswith("skip ") for line in result["logs"])
  assert shard.stat().st_mtime_ns == mtime
  run_job(out, ["cachetest_span"], overwrite=True)
  assert shard.stat().st_mtime_ns != mtime
  assert dir_digest(out) == reference


def test_seed_and_lengths_change_the_output(cache_env, tmp_path):
  run_job(tmp_path / "a", ["cachetest1_span"], base_seed=1)
  run_job(tmp_path / "b", ["cachetest1_span"], base_seed=2)
  a, b = dir_digest(tmp_path / "a"), dir_digest(tmp_path / "b")
  shards = [k for k in a if ".tfrecord-" in k]
  assert shards and all(a[k] != b[k] for k in shards)


def test_planning_splits_large_files_and_sizes_shards():
  ranges = cache_plan.plan_ranges([("big", 10_000), ("small", 100)], range_bytes=1000,
                                  min_ranges=4, min_range_bytes=10)
  assert len([r for r in ranges if r[0] == "big"]) == 10  # One file, ten ranges.
  assert [r for r in ranges if r[0] == "small"] == [("small", 0, 100)]
  big = [r for r in ranges if r[0] == "big"]
  assert big[0][1] == 0 and big[-1][2] == 10_000
  assert all(x[2] == y[1] for x, y in zip(big, big[1:]))
  # min_ranges splits a small corpus further, but not below min_range_bytes.
  assert len(cache_plan.plan_ranges([("f", 1000)], range_bytes=1 << 20, min_ranges=8,
                                    min_range_bytes=10)) == 8
  assert len(cache_plan.plan_ranges([("f", 1000)], range_bytes=1 << 20, min_ranges=8,
                                    min_range_bytes=500)) == 2
  assert cache_plan.num_output_shards(5, min_shards=16, max_shards=0) == 16
  assert cache_plan.num_output_shards(40, min_shards=16, max_shards=32) == 32
  keys = [cache_plan.example_key(7, i) for i in range(1000)]
  counts = np.bincount([cache_plan.shard_of(k, 4) for k in keys], minlength=4)
  assert counts.min() > 200  # Examples spread over the shards.
  assert cache_plan.derive_seed(0, "t", "train", "f", 0, 10) == cache_plan.derive_seed(
      0, "t", "train", "f", 0, 10) != cache_plan.derive_seed(1, "t", "train", "f", 0, 10)


def test_plan_errors_are_one_line(cache_env, tmp_path):
  with pytest.raises(cache_plan.CacheJobError, match=r"no registered task matches 'cachetest_nope'"
                     r".*close names: cachetest"):
    driver.plan_job(make_config(tmp_path, ["cachetest_nope"]), log=lambda s: None)
  with pytest.raises(cache_plan.CacheJobError, match="needs a length for inputs"):
    driver.plan_job(make_config(tmp_path, ["cachetest_span"],
                                     feature_lengths={"targets": 16}), log=lambda s: None)
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(cache_plan.CacheJobError, match="--output_cache_dir: cannot write"):
    driver.plan_job(make_config(blocker / "cache", ["cachetest_span"]), log=lambda s: None)
  with pytest.raises(cache_plan.CacheJobError, match="feature_lengths"):
    cache_plan.parse_feature_lengths("inputs=512")


def _cli(args, env):
  return subprocess.Popen(
      [sys.executable, "-m", "pipelines.cache_tasks", "--module_import=cache_test_tasks",
       *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, **env}, cwd=pathlib.Path(__file__).resolve().parents[2])


def test_cli_errors_are_one_line_without_traceback(cache_env, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  cases = {
      "unknown task": (["--tasks=cachetest_nope", f"--output_cache_dir={tmp_path}",
                        "--feature_lengths=inputs:64,targets:16"],
                       "cache_tasks: --tasks: no registered task matches 'cachetest_nope'"),
      "too short": (["--tasks=cachetest_span", f"--output_cache_dir={tmp_path / 'c'}",
                     "--feature_lengths=inputs:64,targets:1"],
                    "cache_tasks: task 'cachetest_span': its preprocessing fails at "
                    "--feature_lengths=inputs:64,targets:1"),
      "unwritable": (["--tasks=cachetest_span", f"--output_cache_dir={blocker}/cache",
                      "--feature_lengths=inputs:64,targets:16"],
                     f"cache_tasks: --output_cache_dir: cannot write to '{blocker}/cache'"),
  }
  procs = {name: _cli(args, cache_env["env"]) for name, (args, _) in cases.items()}
  for name, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 2, (name, stdout, stderr)
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith(cases[name][1]), (name, stderr)
    assert "Traceback" not in stdout + stderr


def test_project_ul2_and_prefix_lm_mixture(cache_env, tmp_path):
  """A mixture pattern caches its tasks and registers a cached mixture; UL2 modes are counted."""
  lengths = {"inputs": 64, "targets": 32}
  result = run_job(tmp_path, ["cachetestul2_ul2_prefix_lm"], feature_lengths=lengths,
                   min_input_ranges=1)
  names = cache_registry.register_cached_tasks(str(tmp_path))
  assert names == ["cachetestul2_prefix_lm.in64_tg32", "cachetestul2_ul2.in64_tg32",
                   "cachetestul2_ul2_prefix_lm.in64_tg32"]
  ul2 = result["summary"]["cachetestul2_ul2.in64_tg32"]["train"]
  assert set(ul2["mode_examples"]) == {"[NLU]", "[NLG]", "[S2S]"}
  assert sum(ul2["mode_examples"].values()) == ul2["examples"] > 50
  assert any(line.startswith("  examples per mode token: [NLG]") for line in result["logs"])
  assert ul2["inputs_truncated_tokens"] == ul2["targets_truncated_tokens"] == 0
  # PrefixLM loses no token: every source token and each document's EOS is in an example.
  plm = result["summary"]["cachetestul2_prefix_lm.in64_tg32"]["train"]
  assert plm["inputs_length_tokens"] + plm["targets_length_tokens"] == (
      plm["source_tokens"] + plm["documents"])
  ds = seqio.get_dataset("cachetestul2_ul2_prefix_lm.in64_tg32", task_feature_lengths=lengths,
                         use_cached=True, shuffle=False, num_epochs=1,
                         feature_converter=seqio.EncDecFeatureConverter(pack=True))
  batch = next(ds.as_numpy_iterator())
  assert batch["encoder_input_tokens"].shape == (64,)


@pytest.mark.parametrize("objective_impl", ["numpy", "tf"])
def test_project_objective_runs_as_numpy_twin_or_in_tf(cache_env, tmp_path, objective_impl):
  """One input range of the project's UL2 task: 'tf' gives exactly task.get_dataset(seed=range
  seed); 'numpy' (the default) gives exactly tasks.objectives.numpy_impl on the range's documents."""
  from tasks.objectives import numpy_impl  # pylint: disable=g-import-not-at-top
  lengths = {"inputs": 64, "targets": 32}
  run_job(tmp_path, ["cachetestul2_ul2"], feature_lengths=lengths, min_input_ranges=1,
          objective_impl=objective_impl)
  cached = layout.cached_task_name("cachetestul2_ul2", lengths)
  cache_registry.register_cached_tasks(str(tmp_path))
  got = read_cached(cached)
  assert json.loads((tmp_path / cached / "cache_job.json").read_text())["objective_impl"] == (
      objective_impl)
  one = os.environ["CACHE_TEST_ONE"]
  seed = cache_plan.derive_seed(0, "cachetestul2_ul2", "train", os.path.basename(one), 0,
                                os.path.getsize(one))
  task = seqio.get_mixture_or_task("cachetestul2_ul2")
  if objective_impl == "tf":
    want = [{k: ex[k].tolist() for k in ("inputs", "targets")} for ex in
            task.get_dataset(lengths, split="train", shuffle=False, seed=seed).as_numpy_iterator()]
  else:
    vocab = task.output_features["targets"].vocabulary
    docs = [np.asarray(vocab.encode(ex["text"].decode()) + [vocab.eos_id], np.int32) for ex in
            task.source.get_dataset(split="train", shuffle=False).as_numpy_iterator()]
    want = [{k: v.tolist() for k, v in ex.items()} for ex in numpy_impl.run_objective(
        task.preprocessors[-1], docs, sequence_length=lengths,
        output_features=task.output_features, seed=(seed, 0, len(task.preprocessors) - 1))]
  assert len(want) > 50
  assert _as_set(got) == _as_set(want)
