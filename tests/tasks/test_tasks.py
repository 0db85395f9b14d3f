"""Task and mixture registries, built-in tasks, SST-2 downstream tasks, module_import, inspect."""
import os
import subprocess
import sys

import pytest
import seqio

import tasks
from pipelines import inspect_task
from tasks import builtin
from tasks import downstream
from tasks import cli
from tasks import objectives
from tasks import pretraining
from tasks import sources
from tasks import vocab as vocab_lib

TEXT_BYTES = 200_000
LENGTHS = {"inputs": 64, "targets": 64}


@pytest.fixture(scope="module")
def corpus_dir(shared_data, tmp_path_factory):
  d = tmp_path_factory.mktemp("corpus")
  text = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()[:TEXT_BYTES]
  (d / "train.txt").write_bytes(text[:180_000])
  (d / "validation.txt").write_bytes(text[180_000:])
  return d


@pytest.fixture(scope="module")
def vocab_path(corpus_dir, tmp_path_factory):
  model, _ = vocab_lib.train_vocabulary(
      input_files=[str(corpus_dir / "train.txt")], vocab_size=600,
      output_prefix=str(tmp_path_factory.mktemp("vocab") / "spm"))
  return model


@pytest.fixture(scope="module")
def shk_tasks(corpus_dir, vocab_path):
  corpus = sources.CorpusSpec(
      name="shk", text_mode="paragraph",
      splits={"train": str(corpus_dir / "train.txt"),
              "validation": str(corpus_dir / "validation.txt")})
  return pretraining.register_corpus_tasks(corpus=corpus, vocabulary=vocab_path)


@pytest.fixture(scope="module", autouse=True)
def builtin_tasks():
  tasks.register_tasks()


def test_importing_tasks_registers_nothing_and_loads_no_tensorflow():
  code = ("import sys, tasks, tasks.sources, tasks.cli, tasks.special_tokens\n"
          "from tasks.objectives import planning, numpy_impl\n"
          "from tasks import objectives\n"
          "objectives.UL2_DENOISERS\n"
          "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'seqio'))\n"
          "assert not bad, bad[:5]\n")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_register_tasks_registers_builtin_tasks_without_reading_files():
  tasks.register_tasks()  # Idempotent: a second call changes nothing.
  names = set(seqio.TaskRegistry.names())
  for objective in pretraining.OBJECTIVES:
    assert f"pydoc_{objective}" in names
  assert "pydoc_ul2_prefix_lm" in seqio.MixtureRegistry.names()
  assert {"glue_sst2_text_to_text", "glue_sst2_classification"} <= names
  # The objective is the last preprocessor and nothing is cached before it (Beam cache contract).
  task = seqio.get_mixture_or_task("pydoc_ul2")
  assert not any(isinstance(p, seqio.CacheDatasetPlaceholder) for p in task.preprocessors)
  assert task.preprocessors[-1].func is objectives.ul2
  assert task.preprocessors[1].func is seqio.preprocessors.tokenize
  assert task.preprocessors[2] is seqio.preprocessors.append_eos


def test_registered_tasks_and_mixture_produce_examples(shk_tasks, vocab_path):
  assert shk_tasks == ("shk_prefix_lm", "shk_ul2", "shk_span_corruption", "shk_causal_lm",
                       "shk_ul2_prefix_lm")
  vocab = vocab_lib.get_vocabulary(vocab_path)
  special = vocab_lib.special_tokens(vocab)
  for name in shk_tasks:
    provider = seqio.get_mixture_or_task(name)
    lengths = {"targets": 64} if name.endswith("causal_lm") else LENGTHS
    examples = list(provider.get_dataset(lengths, split="validation", shuffle=False,
                                         seed=5).take(40).as_numpy_iterator())
    assert len(examples) == 40, name
    for ex in examples:
      for k, v in lengths.items():
        assert 0 < len(ex[k]) <= v
    if name == "shk_ul2":
      assert {int(ex["inputs"][0]) for ex in examples} <= set(special.mode_ids.values())
    if name == "shk_span_corruption":
      assert all(int(ex["targets"][0]) == special.sentinel_ids[0] for ex in examples)
    if name == "shk_prefix_lm":
      assert all(len(ex["inputs"]) == 64 for ex in examples)
  # Same seed, same examples through the seqio API as well.
  task = seqio.get_mixture_or_task("shk_ul2")
  a = [ex["inputs"].tolist() for ex in task.get_dataset(LENGTHS, split="train", shuffle=False,
                                                        seed=9).take(20).as_numpy_iterator()]
  b = [ex["inputs"].tolist() for ex in task.get_dataset(LENGTHS, split="train", shuffle=False,
                                                        seed=9).take(20).as_numpy_iterator()]
  assert a == b


def test_mixture_rates(shk_tasks):
  mixture = seqio.get_mixture_or_task("shk_ul2_prefix_lm")
  assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == {"shk_ul2": 0.5,
                                                                 "shk_prefix_lm": 0.5}


def test_missing_vocabulary_fails_when_used_not_at_registration(corpus_dir, tmp_path):
  corpus = sources.CorpusSpec(name="novocab", splits={"train": str(corpus_dir / "train.txt")})
  names = pretraining.register_corpus_tasks(corpus=corpus,
                                            vocabulary=str(tmp_path / "absent.model"))
  task = seqio.get_mixture_or_task(names[0])
  with pytest.raises(vocab_lib.MissingVocabularyError, match="absent.model"):
    task.get_dataset(LENGTHS, split="train", shuffle=False)


def test_registration_errors():
  corpus = sources.CorpusSpec(name="x", splits={"train": "/nonexistent/*.txt"})
  with pytest.raises(ValueError, match=r"unknown \['mlm'\]"):
    pretraining.register_corpus_tasks(corpus=corpus, objectives_to_register=["mlm"])
  with pytest.raises(ValueError, match="not in objectives_to_register"):
    pretraining.register_corpus_tasks(corpus=corpus, objectives_to_register=["ul2"])
  with pytest.raises(TypeError, match="CorpusSpec"):
    pretraining.register_corpus_tasks(corpus="x")


def test_builtin_pydoc_corpus(tmp_path, vocab_path):
  corpus = builtin.pydoc_corpus(str(tmp_path / "pydoc"))
  assert not (tmp_path / "pydoc").exists()  # Nothing written until used.
  files = corpus.files("train")
  assert files == [str(tmp_path / "pydoc" / "train.txt")]
  texts = builtin.pydoc_split_texts()
  assert (tmp_path / "pydoc" / "train.txt").read_text(encoding="utf-8") == texts["train"]
  assert len(texts["train"]) > 300_000 and len(texts["validation"]) > 10_000
  docs = list(corpus.iter_documents("validation"))
  assert len(docs) > 20 and all(d.strip() for d in docs)
  pretraining.register_corpus_tasks(corpus=corpus, vocabulary=vocab_path,
                                    objectives_to_register=["prefix_lm"], mixtures={})
  ex = next(seqio.get_mixture_or_task("pydoc_prefix_lm").get_dataset(
      LENGTHS, split="validation", shuffle=False).as_numpy_iterator())
  assert len(ex["inputs"]) == 64 and len(ex["targets"]) == 64
  # Put the default built-in registration back for the other tests.
  pretraining.register_corpus_tasks(corpus=builtin.pydoc_corpus())


def test_builtin_docstrings_corpus(tmp_path):
  # A small standard library: one file per kind of docstring, a test package left out, a file
  # that does not parse, and ten files so the 10th goes to validation.
  lib = tmp_path / "lib"
  (lib / "test").mkdir(parents=True)
  (lib / "test" / "test_x.py").write_text('"""Not documentation."""\n')
  (lib / "broken.py").write_text('"""Never read."""\ndef (:\n')
  (lib / "a.py").write_text('"""Module a.\n\n  Second paragraph."""\n'
                            'class C:\n  """Class C."""\n  def f(self):\n    """Method f."""\n'
                            'async def g():\n  """Coroutine g."""\n')
  (lib / "b.py").write_text("x = 1\n")  # no docstrings: does not count towards every 10th
  for i in range(9):
    (lib / f"m{i}.py").write_text(f'def f{i}():\n  """Function f{i}."""\n')
  assert [os.path.basename(p) for p in builtin.stdlib_files(str(lib))] == (
      ["a.py", "b.py", "broken.py"] + [f"m{i}.py" for i in range(9)])
  texts = builtin.docstrings_split_texts(str(lib))
  assert texts["train"] == ("Module a.\nSecond paragraph.\n\nClass C.\n\nMethod f.\n\n"
                            "Coroutine g.\n\n" + "".join(f"Function f{i}.\n\n" for i in range(8))
                            ).rstrip("\n") + "\n"
  assert texts["validation"] == "Function f8.\n"
  # The interpreter's own library: real text on both sides, written on first use.
  corpus = builtin.docstrings_corpus(str(tmp_path / "docstrings"))
  assert not (tmp_path / "docstrings").exists()
  assert corpus.files("train") == [str(tmp_path / "docstrings" / "train.txt")]
  train = (tmp_path / "docstrings" / "train.txt").read_text(encoding="utf-8")
  assert len(train) > 500_000 and "Return" in train and "Not documentation" not in train
  docs = list(corpus.iter_documents("validation"))
  assert len(docs) > 500 and all(d.strip() for d in docs)


def test_sst2_text_to_text_and_classification(shared_data, vocab_path):
  names = downstream.register_glue_tasks(data_dir=str(shared_data / "glue"),
                                         vocabulary=vocab_path)
  assert names == ("glue_sst2_text_to_text", "glue_sst2_classification")
  vocab = vocab_lib.get_vocabulary(vocab_path)
  dev_lines = (shared_data / "glue" / "SST-2" / "dev.tsv").read_text().splitlines()[1:]
  t2t = seqio.get_mixture_or_task("glue_sst2_text_to_text")
  examples = list(t2t.get_dataset({"inputs": 128, "targets": 8}, split="validation",
                                  shuffle=False).as_numpy_iterator())
  assert len(examples) == len(dev_lines)
  for ex, line in zip(examples, dev_lines):
    sentence, label = line.split("\t")
    assert ex["inputs_pretokenized"].decode() == f"sst2 sentence: {sentence}"
    assert ex["targets_pretokenized"].decode() == ["negative", "positive"][int(label)]
    assert vocab.decode(ex["targets"].tolist()) == ex["targets_pretokenized"].decode()
    assert ex["targets"][-1] == vocab.eos_id
  cls = seqio.get_mixture_or_task("glue_sst2_classification")
  examples = list(cls.get_dataset({"inputs": 128}, split="validation",
                                  shuffle=False).as_numpy_iterator())
  assert [int(ex["label"]) for ex in examples] == [int(l.split("\t")[1]) for l in dev_lines]
  assert set(examples[0]) == {"inputs", "label"}
  assert vocab.decode(examples[0]["inputs"].tolist()) == dev_lines[0].split("\t")[0]
  # Metrics: text predictions are mapped to label ids by the task's postprocessor.
  targets = [t2t.postprocess_fn(l, is_target=True) for l in ("negative", "positive",
                                                              "positive", "negative")]
  predictions = [t2t.postprocess_fn(p) for p in ("negative", "negative", "positive", "banana")]
  assert targets == [0, 1, 1, 0] and predictions == [0, 0, 1, -1]
  scores = {}
  for fn in t2t.metric_fns:
    scores.update(fn(targets, predictions))
  assert scores["accuracy"] == pytest.approx(50.0)
  # f1_score_with_invalid counts the invalid prediction as wrong (here a false positive):
  # predictions [0, 0, 1, 1] -> positive class P = 1/2, R = 1/2.
  assert scores["f1"] == pytest.approx(50.0)
  for fn in t2t.metric_fns:
    assert list(fn(targets, targets).values()) == [pytest.approx(100.0)]
  assert {fn.__name__ for fn in cls.metric_fns} == {"accuracy", "f1_score_with_invalid"}


def test_sst2_missing_data_dir_is_a_clear_error(tmp_path, vocab_path):
  downstream.register_glue_tasks(data_dir=str(tmp_path), vocabulary=vocab_path)
  with pytest.raises(FileNotFoundError, match=r"GLUE file not found: .*SST-2/train.tsv"):
    seqio.get_mixture_or_task("glue_sst2_classification").get_dataset(
        {"inputs": 32}, split="train", shuffle=False)
  downstream.register_glue_tasks()  # Back to the default registration.


def test_module_import(tmp_path, monkeypatch, corpus_dir, vocab_path):
  (tmp_path / "my_mod_for_test.py").write_text(
      "from tasks import pretraining, sources\n"
      "pretraining.register_corpus_tasks(\n"
      f"    corpus=sources.CorpusSpec(name='mymod', splits={{'train': {str(corpus_dir / 'train.txt')!r}}}),\n"
      f"    vocabulary={vocab_path!r}, objectives_to_register=['causal_lm'], mixtures={{}})\n")
  (tmp_path / "broken_mod_for_test.py").write_text("import not_a_real_module_xyz\n")
  monkeypatch.chdir(tmp_path)
  assert cli.import_modules(["my_mod_for_test"]) == ["my_mod_for_test"]
  assert "mymod_causal_lm" in seqio.TaskRegistry.names()
  with pytest.raises(cli.ModuleImportError, match="no module named 'nope_nothing'"):
    cli.import_modules(["nope_nothing"])
  with pytest.raises(cli.ModuleImportError, match="importing it failed"):
    cli.import_modules(["broken_mod_for_test"])


def test_inspect_task_format_and_unknown_names(shk_tasks):
  text = inspect_task.format_examples("shk_ul2", n=6, feature_lengths=LENGTHS, seed=1)
  assert text.count("--- example") == 6
  assert "inputs (" in text and " tokens): " in text
  assert any(m in text for m in ("[NLU]", "[NLG]", "[S2S]"))
  assert "<extra_id_0>" in text and "<eos>" in text
  with pytest.raises(inspect_task.InspectError, match=r"Unknown task or mixture 'shk_ul'.*shk_ul2"):
    inspect_task.format_examples("shk_ul", n=1)
  with pytest.raises(inspect_task.InspectError, match="feature_lengths"):
    inspect_task.parse_feature_lengths("inputs=5")
  with pytest.raises(inspect_task.InspectError, match="no split 'test'"):
    inspect_task.format_examples("shk_ul2", split="test", n=1, feature_lengths=LENGTHS)


def test_inspect_task_cli(repo_root, vocab_path, tmp_path):
  env = {**os.environ, "GEMMA_ADAPT_DATA": str(tmp_path / "data"), "TF_CPP_MIN_LOG_LEVEL": "3"}
  proc = subprocess.run(
      [sys.executable, "-m", "pipelines.inspect_task", "pydoc_span_corruption", "--n=2",
       f"--vocab={vocab_path}", "--feature_lengths=inputs:64,targets:16"],
      cwd=repo_root, capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.count("--- example") == 2 and "<extra_id_0>" in proc.stdout
  assert proc.stderr.strip() == ""  # No TF/absl start-up noise.


def test_inspect_task_main_reports_errors_without_traceback(vocab_path, monkeypatch, capsys):
  from absl import flags  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("GEMMA_ADAPT_VOCAB", vocab_path)  # main() sets it from --vocab; restored.
  argv = ["inspect_task", "pydoc_ul", f"--vocab={vocab_path}", "--module_import=tasks"]
  flags.FLAGS.unparse_flags()
  rest = flags.FLAGS(argv)
  try:
    with pytest.raises(cli.UserError) as e:
      inspect_task.main(rest)
  finally:
    flags.FLAGS.unparse_flags()
  err = str(e.value)
  assert "Unknown task or mixture 'pydoc_ul'" in err and "pydoc_ul2" in err
  assert "Traceback" not in err
