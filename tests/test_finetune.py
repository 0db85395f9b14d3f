"""Gemma Encoder wrapper: params from a decoder-only tree, bidirectionality, padding/packing
invariance end to end, the classification feature converter, and fine-tuning steps."""
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from trainer import encoder_models
from trainer import heads
from trainer import poolers
from trainer import transformer
from trainer.config import TransformerConfig

CFG = TransformerConfig(vocab_size=64, embed_dim=16, num_layers=2, num_heads=2, num_kv_heads=1,
                        head_dim=8, mlp_dim=32, query_pre_attn_scalar=8, sliding_window=4)


@pytest.fixture(scope='module')
def decoder_params():
  tokens = jnp.array([[5, 6, 7, 1]])
  return meta.unbox(transformer.Decoder(CFG).init(jax.random.PRNGKey(0), tokens)['params'])


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(meta.unbox(tree))}


def test_encoder_params_from_decoder_is_a_copy_with_the_same_names(decoder_params):
  enc = encoder_models.encoder_params_from_decoder(decoder_params)
  want, got = _leaves(decoder_params), _leaves(enc)
  assert set(got) == set(want)
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=path)
  # And the Encoder module accepts that tree as is.
  hidden = transformer.Encoder(CFG).apply({'params': enc}, jnp.array([[5, 6, 7, 1]]))
  assert hidden.shape == (1, 4, CFG.embed_dim)


def test_classifier_starts_from_decoder_params(decoder_params):
  model = encoder_models.EncoderClassifierModel(config=CFG, pooler='attention',
                                                pretrained_params=decoder_params)
  params = model.init(jax.random.PRNGKey(3), {'encoder_input_tokens': jnp.ones((1, 4), jnp.int32)})
  # Boxes (logical axis names) survive the swap, values are the decoder's.
  assert meta.get_partition_spec(params)['encoder']['embedder']['embedding'] is not None
  got, want = _leaves(params['encoder']), _leaves(decoder_params)
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=path)
  assert set(params) == {'encoder', 'pooler', 'head'}


def test_encoder_decoder_tree_gives_its_encoder_and_bad_trees_are_named(decoder_params):
  enc = encoder_models.encoder_params_from_decoder({'encoder': decoder_params, 'decoder': {}})
  assert set(_leaves(enc)) == set(_leaves(decoder_params))
  with pytest.raises(ValueError, match="'embedder'"):
    encoder_models.encoder_params_from_decoder({'foo': 1})
  bigger = TransformerConfig(vocab_size=64, embed_dim=32, num_layers=2, num_heads=2,
                             num_kv_heads=1, head_dim=8, mlp_dim=32, query_pre_attn_scalar=8)
  model = encoder_models.EncoderClassifierModel(config=bigger, pretrained_params=decoder_params)
  with pytest.raises(ValueError, match='embedder.*does not match'):
    model.init(jax.random.PRNGKey(0), {'encoder_input_tokens': jnp.ones((1, 4), jnp.int32)})


def test_encoder_attention_is_bidirectional(decoder_params):
  model = encoder_models.EncoderClassifierModel(config=CFG, pooler='first',
                                                pretrained_params=decoder_params)
  params = meta.unbox(model.init(jax.random.PRNGKey(0),
                                 {'encoder_input_tokens': jnp.ones((1, 4), jnp.int32)}))
  a = model.compute_outputs(params, {'encoder_input_tokens': jnp.array([[5, 6, 7, 1]])})[0]
  b = model.compute_outputs(params, {'encoder_input_tokens': jnp.array([[5, 6, 9, 1]])})[0]
  # The first token's vector sees a later token: a causal decoder's would not change.
  assert not np.allclose(a, b)
  dec = transformer.Decoder(CFG)
  la = dec.apply({'params': decoder_params}, jnp.array([[5, 6, 7, 1]]))
  lb = dec.apply({'params': decoder_params}, jnp.array([[5, 6, 9, 1]]))
  np.testing.assert_allclose(la[:, 0], lb[:, 0], rtol=1e-6)


@pytest.mark.parametrize('kind', poolers.POOLER_KINDS)
def test_classifier_output_unchanged_by_padding_and_packing(kind, decoder_params):
  model = encoder_models.EncoderClassifierModel(
      config=CFG, pooler=kind, max_segments=3, pretrained_params=decoder_params,
      head=heads.HeadConfig(kind='classification', num_classes=3))
  params = meta.unbox(model.init(jax.random.PRNGKey(0),
                                 {'encoder_input_tokens': jnp.ones((1, 4), jnp.int32)}))
  if kind == 'attention':  # a non-trivial query, so attention pooling differs from mean
    params['pooler']['query'] = jnp.linspace(-1.0, 1.0, CFG.embed_dim)
  a, b = [11, 12, 13, 1], [21, 22, 1]

  def run(tokens, segs, positions):
    batch = {'encoder_input_tokens': jnp.array([tokens]), 'encoder_segment_ids': jnp.array([segs]),
             'encoder_positions': jnp.array([positions])}
    return model.compute_outputs(params, batch)

  alone_a, _ = run(a, [1] * 4, [0, 1, 2, 3])
  padded_a, _ = run(a + [0] * 6, [1] * 4 + [0] * 6, [0, 1, 2, 3] + [0] * 6)
  alone_b, _ = run(b, [1] * 3, [0, 1, 2])
  packed, mask = run(a + b + [0, 0], [1] * 4 + [2] * 3 + [0, 0], [0, 1, 2, 3, 0, 1, 2, 0, 0])
  np.testing.assert_array_equal(mask, [[True, True, False]])
  np.testing.assert_allclose(padded_a[0, 0], alone_a[0, 0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(packed[0, 0], alone_a[0, 0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(packed[0, 1], alone_b[0, 0], rtol=1e-5, atol=1e-5)


def test_feature_converter_pads_and_packs_targets_including_zeros():
  import tensorflow as tf
  ds = tf.data.Dataset.from_tensor_slices({
      'inputs': tf.ragged.constant([[7, 8, 1], [4, 1], [9, 9, 9, 1]], dtype=tf.int32),
      'label': tf.constant([1, 0, 2], tf.int64), 'score': tf.constant([0.5, 0.0, -2.5])})
  ds = ds.map(lambda ex: {**ex, 'inputs': ex['inputs']})
  conv = encoder_models.make_feature_converter(target_features=('label', 'score'), pack=False)
  rows = list(conv(ds, {'inputs': 5}).as_numpy_iterator())
  np.testing.assert_array_equal(rows[1]['encoder_input_tokens'], [4, 1, 0, 0, 0])
  np.testing.assert_array_equal(rows[1]['encoder_segment_ids'], [1, 1, 0, 0, 0])
  np.testing.assert_array_equal([r['label'][0] for r in rows], [1, 0, 2])
  np.testing.assert_array_equal([r['score'][0] for r in rows], np.float32([0.5, 0.0, -2.5]))
  conv = encoder_models.make_feature_converter(target_features=('label', 'score'), pack=True,
                                               max_segments=2)
  rows = list(conv(ds, {'inputs': 8}).as_numpy_iterator())
  assert len(rows) == 2  # at most 2 examples per row
  np.testing.assert_array_equal(rows[0]['encoder_input_tokens'], [7, 8, 1, 4, 1, 0, 0, 0])
  np.testing.assert_array_equal(rows[0]['encoder_segment_ids'], [1, 1, 1, 2, 2, 0, 0, 0])
  np.testing.assert_array_equal(rows[0]['encoder_positions'], [0, 1, 2, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(rows[0]['label'], [1, 0])  # the 0 label survives packing
  np.testing.assert_array_equal(rows[0]['score'], np.float32([0.5, 0.0]))
  np.testing.assert_array_equal(rows[1]['label'], [2, 0])  # slot 2 absent (segment id 2 unused)
  with pytest.raises(ValueError, match="'rating'"):
    encoder_models.make_feature_converter(target_features=('rating',))
