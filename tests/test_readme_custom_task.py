"""The README's "defining your own task" example (docs/tasks.md) runs exactly as written."""
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
import seqio

from tasks import cli
from tasks import vocab as vocab_lib

DOC = os.path.join(str(pathlib.Path(__file__).resolve().parents[1]), "docs", "tasks.md")


def _blocks(language):
  with open(DOC, encoding="utf-8") as f:
    return re.findall(rf"```{language}\n(.*?)```", f.read(), flags=re.S)


@pytest.fixture(scope="module")
def user_home(shared_data, tmp_path_factory):
  """A home directory with ~/data/my_corpus/*.txt (Shakespeare) and a trained vocabulary."""
  home = tmp_path_factory.mktemp("home")
  data = home / "data" / "my_corpus"
  data.mkdir(parents=True)
  text = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()[:150_000]
  (data / "part-b.txt").write_bytes(text[75_000:])
  (data / "part-a.txt").write_bytes(text[:75_000])
  model, _ = vocab_lib.train_vocabulary(input_files=[str(data / "part-a.txt")], vocab_size=600,
                                        output_prefix=str(home / "vocab" / "spm"))
  return home, model


def test_example_is_short_and_registers_working_tasks(user_home, tmp_path, monkeypatch):
  (code,) = _blocks("python")
  lines = code.strip("\n").splitlines()
  assert len(lines) <= 15, f"the example has {len(lines)} lines"
  home, model = user_home
  (tmp_path / "my_tasks.py").write_text(code)
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.setenv("GEMMA_ADAPT_VOCAB", model)
  monkeypatch.chdir(tmp_path)
  monkeypatch.delitem(sys.modules, "my_tasks", raising=False)
  cli.import_modules(["my_tasks"])
  for suffix in ("prefix_lm", "ul2", "span_corruption", "causal_lm"):
    assert f"my_corpus_{suffix}" in seqio.TaskRegistry.names()
  assert "my_corpus_ul2_prefix_lm" in seqio.MixtureRegistry.names()
  task = seqio.get_mixture_or_task("my_corpus_ul2")
  assert task.source.list_shards("train") == [str(home / "data" / "my_corpus" / "part-a.txt"),
                                              str(home / "data" / "my_corpus" / "part-b.txt")]
  special = vocab_lib.special_tokens(vocab_lib.get_vocabulary(model))
  examples = list(task.get_dataset({"inputs": 128, "targets": 128}, split="train",
                                   shuffle=False, seed=0).take(30).as_numpy_iterator())
  assert len(examples) == 30
  assert {int(ex["inputs"][0]) for ex in examples} <= set(special.mode_ids.values())


def test_documented_command_runs(user_home, tmp_path):
  (code,) = _blocks("python")
  (tmp_path / "my_tasks.py").write_text(code)
  (shell,) = _blocks("sh")
  command = shell[shell.index("python -m pipelines.inspect_task"):].replace("\\\n", " ")
  argv = shlex.split(command.splitlines()[0])
  assert argv[:3] == ["python", "-m", "pipelines.inspect_task"]
  home, model = user_home
  env = {**os.environ, "HOME": str(home), "GEMMA_ADAPT_VOCAB": model,
         "TF_CPP_MIN_LOG_LEVEL": "3"}
  proc = subprocess.run([sys.executable] + argv[1:], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.count("--- example") == 3
  assert "my_corpus_ul2 [train] feature lengths {'inputs': 512, 'targets': 512}" in proc.stdout
  assert any(m in proc.stdout for m in ("[NLU]", "[NLG]", "[S2S]"))
