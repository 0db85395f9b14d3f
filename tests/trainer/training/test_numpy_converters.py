"""The NumPy feature converters give exactly seqio's features on the same examples."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from trainer.training import feature_converters
from trainer.training import numpy_converters


def random_examples(n, lengths, seed, scalars=()):
  """Examples of 1..length tokens per feature (seqio's converters reject longer ones)."""
  rng = np.random.RandomState(seed)
  out = []
  for _ in range(n):
    ex = {k: rng.randint(2, 300, size=rng.randint(1, max_len + 1)).astype(np.int32)
          for k, max_len in lengths.items()}
    for name, dtype in scalars:
      ex[name] = (np.float32(rng.choice([0.0, -1.5, 0.25, 3.0])) if dtype == 'float32'
                  else np.int32(rng.randint(0, 3)))
    out.append(ex)
  return out


def seqio_rows(converter, examples, lengths):
  spec = {k: tf.TensorSpec([None] if np.ndim(v) else [], tf.as_dtype(np.asarray(v).dtype))
          for k, v in examples[0].items()}
  ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)
  return list(converter(ds, lengths).as_numpy_iterator())


def numpy_rows(converter, examples):
  rows = []
  for start in range(0, len(examples), converter.chunk_size):
    rows.extend(converter(examples[start:start + converter.chunk_size]))
  return rows


def assert_same(expected, actual):
  assert len(expected) == len(actual) and len(expected) > 0
  for e, a in zip(expected, actual):
    assert sorted(e) == sorted(a)
    for k in e:
      assert e[k].dtype == a[k].dtype, k
      np.testing.assert_array_equal(e[k], a[k], err_msg=k)


CASES = [
    # (seqio converter, task lengths)
    ('EncDecFeatureConverter', {'inputs': 24, 'targets': 16}),
    ('DecoderFeatureConverter', {'targets': 24}),
    ('PrefixLMFeatureConverter', {'inputs': 12, 'targets': 10}),
    ('DecoderFeatureConverter', {'inputs': 12, 'targets': 10}),
]


@pytest.mark.parametrize('pack', [False, True])
@pytest.mark.parametrize('name,lengths', CASES)
def test_lm_and_encdec_converters_match_seqio(name, lengths, pack):
  examples = random_examples(70, lengths, seed=len(name) + len(lengths))
  expected = seqio_rows(getattr(seqio, name)(pack=pack), examples, lengths)
  converter = numpy_converters.make(name, pack=pack, task_feature_lengths=lengths)
  actual = numpy_rows(converter, examples)
  if pack:  # Packing happened (fewer rows than examples) and crossed no chunk boundary.
    assert len(actual) < len(examples)
  assert_same(expected, actual)


@pytest.mark.parametrize('pack,max_segments', [(False, 1), (True, 3)])
def test_encoder_classification_converter_matches_seqio_side(pack, max_segments):
  examples = random_examples(60, {'inputs': 9}, seed=5,
                             scalars=(('label', 'int32'), ('score', 'float32')))
  kwargs = dict(target_features=('label', 'score'), max_segments=max_segments)
  lengths = {'inputs': 16}
  expected = seqio_rows(feature_converters.EncoderClassificationFeatureConverter(
      pack=pack, **kwargs), examples, lengths)
  converter = numpy_converters.make('EncoderClassificationFeatureConverter', pack=pack,
                                    task_feature_lengths=lengths, **kwargs)
  assert_same(expected, numpy_rows(converter, examples))


def test_for_model_picks_the_models_converter():
  from trainer.model.config import TransformerConfig
  from trainer.training import models
  cfg = TransformerConfig(vocab_size=64, embed_dim=8, num_layers=1, num_heads=1, num_kv_heads=1,
                          head_dim=8, mlp_dim=16, query_pre_attn_scalar=8)
  prefix = numpy_converters.for_model(models.DecoderOnlyModel(config=cfg, prefix_lm=True),
                                      pack=True, task_feature_lengths={'inputs': 4, 'targets': 4})
  assert isinstance(prefix, numpy_converters.PrefixLM) and prefix.chunk_size == 8
  with pytest.raises(ValueError, match="DATA_LOADER = 'seqio'"):
    numpy_converters.make('PassThroughFeatureConverter', pack=False, task_feature_lengths={})
