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


def _cache_glue(glue_env, lengths):
  """Runs the cache job on CoLA and STS-B (encoder forms) at `lengths`; -> the cache dir."""
  out = glue_env / "cache"
  config = cache_plan.CacheJobConfig(
      tasks=("glue_cola_classification", "glue_stsb_regression"), output_cache_dir=str(out),
      feature_lengths=lengths, module_import=("cache_glue_tasks",), min_shards=2)
  driver.run_cache_job(config, runner="local", num_workers=1, running_mode="in_memory",
                       quiet=True, log=lambda line: None)
  return out


def test_scalar_label_and_score_are_cached_and_read_back(glue_env):
  lengths = {"inputs": 24}
  out = _cache_glue(glue_env, lengths)
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


def test_grain_reads_cached_labels_and_scores_as_seqios_converter_packs_them(glue_env):
  """The TF-free Grain loader on the same caches: its examples are seqio's cached examples, and
  its packed classifier rows (up to 3 examples per row, each label/score in its slot) equal
  seqio's `EncoderClassificationFeatureConverter` packing the same examples."""
  import numpy as np
  import tensorflow as tf
  from trainer.training import feature_converters
  from trainer.training import grain_loader
  from trainer.training import numpy_converters
  lengths = {"inputs": 96}  # room for several examples per row
  out = _cache_glue(glue_env, lengths)
  cache_registry.register_cached_tasks(str(out))
  for source, feature, dtype in (("glue_cola_classification", "label", tf.int32),
                                 ("glue_stsb_regression", "score", tf.float32)):
    cached = layout.cached_task_name(source, lengths)
    conv = numpy_converters.make("EncoderClassificationFeatureConverter", pack=True,
                                 task_feature_lengths=lengths, target_features=(feature,),
                                 max_segments=3)
    ld = grain_loader.GrainLoader(cache_dir=str(out), name=cached, task_feature_lengths=lengths,
                                  converter=conv, batch_size=1, shuffle=False, num_epochs=1)
    examples = [ld.examples()[i] for i in range(12)]
    assert {e[feature].dtype for e in examples} == {np.dtype(dtype.as_numpy_dtype)}
    want = seqio.get_mixture_or_task(cached).get_dataset(lengths, split="train", shuffle=False,
                                                         use_cached=True)
    as_rows = lambda exs: sorted(json.dumps({"inputs": e["inputs"].tolist(),  # noqa: E731
                                             feature: np.asarray(e[feature]).item()})
                                 for e in exs)
    assert as_rows(examples) == as_rows(want.as_numpy_iterator())
    spec = {"inputs": tf.TensorSpec([None], tf.int32), feature: tf.TensorSpec([], dtype)}
    ds = tf.data.Dataset.from_generator(
        lambda: iter({"inputs": e["inputs"], feature: e[feature].reshape(())} for e in examples),
        output_signature=spec)
    expected = list(feature_converters.EncoderClassificationFeatureConverter(
        pack=True, max_segments=3, target_features=(feature,))(ds, lengths).as_numpy_iterator())
    ours = [{k: v[0] for k, v in b.items()} for b in ld.iterator()]
    assert len(ours) == len(expected) < 12  # packed
    for x, y in zip(expected, ours):
      assert sorted(x) == sorted(y)
      for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    assert max(row["encoder_segment_ids"].max() for row in ours) > 1  # several examples a row
