"""Model assemblies: parameter tree contract, masks seen through outputs, dtypes, remat, dropout."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.config import EncoderDecoderConfig, TransformerConfig
from trainer.transformer import Decoder, Encoder, EncoderDecoder

CFG = TransformerConfig(vocab_size=128, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=16, mlp_dim=64, query_pre_attn_scalar=16, sliding_window=3)


def _tokens(batch=2, length=10, seed=0, vocab=128):
  return jnp.asarray(np.random.RandomState(seed).randint(1, vocab, size=(batch, length)), jnp.int32)


def _init(module, *args, **kwargs):
  return module.init(jax.random.PRNGKey(0), *args, **kwargs)


def _shapes(tree):
  return jax.tree_util.tree_map(lambda x: tuple(x.shape), nn.unbox(tree))


def test_decoder_param_tree_matches_design_contract():
  variables = _init(Decoder(CFG), _tokens())
  shapes = _shapes(variables['params'])
  assert sorted(shapes) == ['embedder', 'final_norm', 'layer_0', 'layer_1']
  assert shapes['embedder'] == {'embedding': (128, 32)}
  assert shapes['final_norm'] == {'scale': (32,)}
  layer = shapes['layer_0']
  assert layer['self_attn'] == {'q_proj': {'kernel': (32, 4, 16)}, 'k_proj': {'kernel': (32, 2, 16)},
                                'v_proj': {'kernel': (32, 2, 16)}, 'o_proj': {'kernel': (4, 16, 32)}}
  assert layer['mlp'] == {'gate_proj': {'kernel': (32, 64)}, 'up_proj': {'kernel': (32, 64)},
                          'down_proj': {'kernel': (64, 32)}}
  for norm in ('pre_attention_norm', 'post_attention_norm', 'pre_feedforward_norm',
               'post_feedforward_norm'):
    assert layer[norm] == {'scale': (32,)}
  specs = nn.get_partition_spec(variables)['params']
  assert tuple(specs['embedder']['embedding']) == ('vocab', 'embed')
  assert tuple(specs['layer_0']['self_attn']['q_proj']['kernel']) == ('embed', 'heads', 'head_dim')
  assert tuple(specs['layer_0']['self_attn']['k_proj']['kernel']) == ('embed', 'kv_heads',
                                                                      'head_dim')
  assert tuple(specs['layer_0']['self_attn']['o_proj']['kernel']) == ('heads', 'head_dim', 'embed')
  assert tuple(specs['layer_1']['mlp']['down_proj']['kernel']) == ('mlp', 'embed')
  assert tuple(specs['final_norm']['scale']) == ('embed',)
  # RMSNorm scale starts at 0 (applied as 1 + w).
  assert not np.any(nn.unbox(variables['params'])['final_norm']['scale'])


def test_encoder_decoder_param_tree_unbalanced_widths():
  enc = dataclasses.replace(CFG, embed_dim=48, mlp_dim=96)
  model = EncoderDecoder(EncoderDecoderConfig(encoder=enc, decoder=CFG))
  variables = _init(model, _tokens(), _tokens(length=6))
  shapes = _shapes(variables['params'])
  assert sorted(shapes) == ['decoder', 'encoder']
  assert shapes['encoder']['embedder'] == {'embedding': (128, 48)}
  assert 'cross_attn' not in shapes['encoder']['layer_0']
  layer = shapes['decoder']['layer_1']
  assert layer['cross_attn'] == {'q_proj': {'kernel': (32, 4, 16)},
                                 'k_proj': {'kernel': (48, 2, 16)},
                                 'v_proj': {'kernel': (48, 2, 16)},
                                 'o_proj': {'kernel': (4, 16, 32)}}
  assert layer['pre_cross_attn_norm'] == layer['post_cross_attn_norm'] == {'scale': (32,)}
  logits = model.apply(variables, _tokens(), _tokens(length=6))
  assert logits.shape == (2, 6, 128) and logits.dtype == jnp.float32


def test_decoder_is_causal_and_soft_capped():
  tokens = _tokens()
  model = Decoder(dataclasses.replace(CFG, final_logit_soft_cap=0.5))
  variables = _init(model, tokens)
  logits = model.apply(variables, tokens)
  assert logits.shape == (2, 10, 128) and logits.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(logits))) <= 0.5
  changed = tokens.at[:, 7].set((tokens[:, 7] % 127) + 1)
  logits2 = model.apply(variables, changed)
  np.testing.assert_array_equal(logits[:, :7], logits2[:, :7])
  assert not np.allclose(logits[:, 7:], logits2[:, 7:])


def test_encoder_is_bidirectional():
  tokens = _tokens()
  model = Encoder(CFG)
  variables = _init(model, tokens)
  hidden = model.apply(variables, tokens)
  assert hidden.shape == (2, 10, 32)
  changed = tokens.at[:, 7].set((tokens[:, 7] % 127) + 1)
  hidden2 = model.apply(variables, changed)
  # Two layers with window 3 on the first (sliding) layer: position 0 still sees position 7
  # through the global second layer.
  assert not np.allclose(hidden[:, 0], hidden2[:, 0])


@pytest.mark.parametrize('remat', ['full', 'dots'])
def test_remat_gives_same_gradients(remat):
  tokens = _tokens()
  variables = _init(Decoder(CFG), tokens)

  def loss(params, config):
    return jnp.mean(Decoder(config).apply({'params': params}, tokens) ** 2)

  base = jax.grad(loss)(variables['params'], CFG)
  other = jax.grad(loss)(variables['params'], dataclasses.replace(CFG, remat=remat))
  for a, b in zip(jax.tree_util.tree_leaves(base), jax.tree_util.tree_leaves(other)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_dropout_only_when_not_deterministic():
  tokens = _tokens()
  model = Decoder(dataclasses.replace(CFG, dropout_rate=0.3))
  variables = _init(model, tokens)
  a = model.apply(variables, tokens)
  b = model.apply(variables, tokens, deterministic=False, rngs={'dropout': jax.random.PRNGKey(1)})
  c = model.apply(variables, tokens, deterministic=False, rngs={'dropout': jax.random.PRNGKey(1)})
  np.testing.assert_array_equal(a, Decoder(CFG).apply(variables, tokens))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(b, c)


def test_bfloat16_compute():
  tokens = _tokens()
  cfg16 = dataclasses.replace(CFG, dtype='bfloat16')
  variables = _init(Decoder(CFG), tokens)
  logits32 = Decoder(CFG).apply(variables, tokens)
  logits16 = Decoder(cfg16).apply(variables, tokens)
  assert logits16.dtype == jnp.float32
  assert Encoder(cfg16).apply(variables, tokens).dtype == jnp.bfloat16
  assert float(jnp.max(jnp.abs(logits16 - logits32))) < 0.1


@pytest.mark.parametrize('field,value', [
    ('num_kv_heads', 3), ('head_dim', 15), ('layer_types', ('sliding', 'local')),
    ('layer_types', ('global',)), ('dtype', 'float64'), ('remat', 'some'),
    ('attention_impl', 'flash'), ('dropout_rate', 1.0), ('vocab_size', 0),
    ('sliding_window', 0)])
def test_config_errors_name_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    dataclasses.replace(CFG, **{field: value})


def test_config_layer_types_default_alternates_sliding_first():
  cfg = dataclasses.replace(CFG, num_layers=4)
  assert cfg.resolved_layer_types == ('sliding', 'global', 'sliding', 'global')
  assert [cfg.layer_window(i) for i in range(4)] == [3, None, 3, None]
  assert dataclasses.replace(cfg, layer_types=['global'] * 4).layer_types == ('global',) * 4
  assert dataclasses.replace(cfg, sliding_window=None).layer_window(0) is None
