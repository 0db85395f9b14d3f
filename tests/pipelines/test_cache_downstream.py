"""The Beam cache job on downstream tasks whose examples carry scalar features: GLUE's encoder
forms (`glue_cola_classification`: an int 'label'; `glue_stsb_regression`: a float 'score'). The
cache must hold exactly what the task yields on the fly, and seqio must read it back."""
import json
import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import seqio  # noqa: E402

import downstream_fixtures as fx  # noqa: E402
from pipelines.cache import driver  # noqa: E402
from pipelines.cache import layout  # noqa: E402
from pipelines.cache import plan as cache_plan  # noqa: E402
from pipelines.cache import registry as cache_registry  # noqa: E402

MODULE = '''
import os
from tasks.downstream import glue

def register_tasks():
  glue.register_glue_tasks(data_dir=os.environ["CACHE_GLUE_DIR"],
                           vocabulary=os.environ["CACHE_GLUE_VOCAB"],
                           benchmarks=[glue.COLA, glue.STSB], forms=("encoder",))
'''


@pytest.fixture()
def glue_env(tmp_path, monkeypatch):
  vocab = fx.write_vocab(str(tmp_path))
  data = fx.write_glue(str(tmp_path / "glue"), n_train=12, n_dev=9)
  (tmp_path / "cache_glue_tasks.py").write_text(MODULE)
  monkeypatch.setenv("CACHE_GLUE_DIR", data)
  monkeypatch.setenv("CACHE_GLUE_VOCAB", vocab)
  monkeypatch.syspath_prepend(str(tmp_path))
  yield tmp_path
  sys.modules.pop("cache_glue_tasks", None)


def _rows(ds, keys):
  """The examples' output features (the cache keeps those, not e.g. 'pair_truncated')."""
  return sorted(json.dumps({k: ex[k].tolist() for k in keys}, sort_keys=True)
                for ex in ds.as_numpy_iterator())


def test_scalar_label_and_score_are_cached_and_read_back(glue_env):
  lengths = {"inputs": 24}
  out = glue_env / "cache"
  config = cache_plan.CacheJobConfig(
      tasks=("glue_cola_classification", "glue_stsb_regression"), output_cache_dir=str(out),
      feature_lengths=lengths, module_import=("cache_glue_tasks",), min_shards=2)
  driver.run_cache_job(config, runner="local", num_workers=1, running_mode="in_memory",
                       quiet=True, log=lambda line: None)
  names = cache_registry.register_cached_tasks(str(out))
  assert names == ["glue_cola_classification.in24", "glue_stsb_regression.in24"]
  for source, feature, kind in (("glue_cola_classification", "label", int),
                                ("glue_stsb_regression", "score", float)):
    cached = layout.cached_task_name(source, lengths)
    info = json.loads((out / cached / "info.validation.json").read_text())
    assert info["features"][feature]["shape"] == []
    for split in ("train", "validation"):
      want = seqio.get_mixture_or_task(source).get_dataset(lengths, split=split, shuffle=False)
      got = seqio.get_mixture_or_task(cached).get_dataset(lengths, split=split, shuffle=False,
                                                           use_cached=True)
      keys = sorted(seqio.get_mixture_or_task(source).output_features)
      assert keys == ["inputs", feature]
      assert _rows(got, keys) == _rows(want, keys)
      assert len(_rows(got, keys)) == (12 if split == "train" else 9)
    example = next(seqio.get_mixture_or_task(cached).get_dataset(
        lengths, split="validation", shuffle=False, use_cached=True).as_numpy_iterator())
    assert example[feature].shape == () and isinstance(example[feature].item(), kind)
