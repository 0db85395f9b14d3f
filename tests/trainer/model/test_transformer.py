"""Model assemblies: parameter tree contract, masks seen through outputs, dtypes, remat, dropout."""
import dataclasses
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.model.config import EncoderDecoderConfig, TransformerConfig
from trainer.model.transformer import Decoder, Encoder, EncoderDecoder

CFG = TransformerConfig(vocab_size=128, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=16, mlp_dim=64, query_pre_attn_scalar=16, sliding_window=3)


def _tokens(batch=2, length=10, seed=0, vocab=128):
  return jnp.asarray(np.random.RandomState(seed).randint(1, vocab, size=(batch, length)), jnp.int32)


def _abstract(module, *args, **kwargs):
  """Boxed parameter shapes (with logical axis names) without running the initialisers."""
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs))


def _params(module, *args, seed=0, **kwargs):
  """Random N(0, 0.2) values for every parameter (norm scales too, so every tensor matters).
  Much faster than `module.init` op by op on a busy CPU."""
  shapes = nn.unbox(_abstract(module, *args, **kwargs)['params'])
  rs = np.random.RandomState(seed)
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(rs.normal(scale=0.2, size=s.shape), s.dtype), shapes)


@functools.lru_cache(maxsize=None)
def _jitted_apply(module_type, config, method, deterministic):
  module = module_type(config)
  return jax.jit(lambda p, a, kw, r: module.apply({'params': p}, *a, method=method, rngs=r,
                                                  deterministic=deterministic, **kw))


def _run(module, params, *args, method=None, deterministic=True, rngs=None, **kwargs):
  """`module.apply` under jit, compiled once per (module, config, method, shapes): much faster
  than op-by-op dispatch on a busy CPU."""
  fn = _jitted_apply(type(module), module.config, method, deterministic)
  return fn(params, args, kwargs, rngs)


def _shapes(tree):
  return jax.tree_util.tree_map(lambda x: tuple(x.shape), nn.unbox(tree))


def test_decoder_param_tree_matches_design_contract():
  variables = _abstract(Decoder(CFG), _tokens())
  shapes = _shapes(variables['params'])
  assert sorted(shapes) == ['embedder', 'final_norm', 'layer_0', 'layer_1']
  assert shapes['embedder'] == {'embedding': (128, 32)}
  assert shapes['final_norm'] == {'scale': (32,)}
  layer = shapes['layer_0']
  assert layer['self_attn'] == {
      'q_proj': {'kernel': (32, 4, 16)}, 'k_proj': {'kernel': (32, 2, 16)},
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


def test_initial_values():
  # RMSNorm scale starts at 0 (applied as 1 + w); embedding stddev D**-0.5; projections
  # lecun-normal over their real fan-in (D for q_proj, H * Dh for o_proj).
  from trainer.model import layers  # pylint: disable=g-import-not-at-top
  x = jnp.ones((1, 2, 512))
  norm = layers.RMSNorm().init(jax.random.PRNGKey(0), x)
  assert not np.any(nn.unbox(norm)['params']['scale'])
  emb = layers.Embedder(vocab_size=1000, embed_dim=64).init(
      jax.random.PRNGKey(0), jnp.ones((1, 1), jnp.int32), method=layers.Embedder.encode)
  assert abs(float(jnp.std(nn.unbox(emb)['params']['embedding'])) - 64**-0.5) < 0.01
  o_proj = layers.Projection(features=(64,), axes=('heads', 'head_dim', 'embed'),
                             num_input_axes=2).init(jax.random.PRNGKey(0), jnp.ones((1, 8, 32)))
  assert abs(float(jnp.std(nn.unbox(o_proj)['params']['kernel'])) - 256**-0.5) < 0.01


def test_encoder_decoder_param_tree_unbalanced_widths():
  enc = dataclasses.replace(CFG, embed_dim=48, mlp_dim=96)
  model = EncoderDecoder(EncoderDecoderConfig(encoder=enc, decoder=CFG))
  shapes = _shapes(_abstract(model, _tokens(), _tokens(length=6))['params'])
  assert sorted(shapes) == ['decoder', 'encoder']
  assert shapes['encoder']['embedder'] == {'embedding': (128, 48)}
  assert 'cross_attn' not in shapes['encoder']['layer_0']
  layer = shapes['decoder']['layer_1']
  assert layer['cross_attn'] == {'q_proj': {'kernel': (32, 4, 16)},
                                 'k_proj': {'kernel': (48, 2, 16)},
                                 'v_proj': {'kernel': (48, 2, 16)},
                                 'o_proj': {'kernel': (4, 16, 32)}}
  assert layer['pre_cross_attn_norm'] == layer['post_cross_attn_norm'] == {'scale': (32,)}
  params = _params(model, _tokens(), _tokens(length=6))
  logits = _run(model, params, _tokens(), _tokens(length=6))
  assert logits.shape == (2, 6, 128) and logits.dtype == jnp.float32


def test_decoder_is_causal_and_soft_capped():
  tokens = _tokens()
  model = Decoder(dataclasses.replace(CFG, final_logit_soft_cap=0.5))
  variables = {'params': _params(model, tokens)}
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
  variables = {'params': _params(model, tokens)}
  hidden = model.apply(variables, tokens)
  assert hidden.shape == (2, 10, 32)
  changed = tokens.at[:, 7].set((tokens[:, 7] % 127) + 1)
  hidden2 = model.apply(variables, changed)
  # Two layers with window 3 on the first (sliding) layer: position 0 still sees position 7
  # through the global second layer.
  assert not np.allclose(hidden[:, 0], hidden2[:, 0])


def test_remat_gives_same_gradients():
  tokens = _tokens()
  cfg = dataclasses.replace(CFG, num_layers=1, dropout_rate=0.2)
  params = _params(Decoder(cfg), tokens)
  rngs = {'dropout': jax.random.PRNGKey(3)}

  def loss(params, config):
    logits = Decoder(config).apply({'params': params}, tokens, deterministic=False, rngs=rngs)
    return jnp.mean(logits ** 2)

  configs = [dataclasses.replace(cfg, remat=remat) for remat in ('none', 'full', 'dots')]
  grads = jax.jit(lambda p: [jax.grad(loss)(p, c) for c in configs])(params)
  for other in grads[1:]:
    for a, b in zip(jax.tree_util.tree_leaves(grads[0]), jax.tree_util.tree_leaves(other)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_dropout_only_when_not_deterministic():
  tokens = _tokens()
  model = Decoder(dataclasses.replace(CFG, dropout_rate=0.3))
  params = _params(model, tokens)
  a = _run(model, params, tokens)
  rngs = {'dropout': jax.random.PRNGKey(1)}
  b = _run(model, params, tokens, deterministic=False, rngs=rngs)
  c = _run(model, params, tokens, deterministic=False, rngs=rngs)
  np.testing.assert_array_equal(a, _run(Decoder(CFG), params, tokens))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(b, c)


def test_bfloat16_compute():
  tokens = _tokens()
  cfg16 = dataclasses.replace(CFG, dtype='bfloat16')
  params = _params(Decoder(CFG), tokens)
  logits32 = _run(Decoder(CFG), params, tokens)
  logits16 = _run(Decoder(cfg16), params, tokens)
  assert logits16.dtype == jnp.float32
  assert _run(Encoder(cfg16), params, tokens).dtype == jnp.bfloat16
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


# ------------------------------------------------------------------------------------------------
# Whole-stack numpy reference: the same maths with an explicit [L, L] mask per layer, so Decoder,
# PrefixLM and Encoder are checked to differ only by their masks.
# ------------------------------------------------------------------------------------------------
def _np_rms(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * (1 + scale)


def _np_rope(x, positions, theta):
  half = x.shape[-1] // 2
  freqs = positions[:, None] / theta**(np.arange(half) * 2 / x.shape[-1])
  cos, sin = np.cos(freqs)[:, None, :], np.sin(freqs)[:, None, :]
  x1, x2 = x[..., :half], x[..., half:]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def _np_stack(params, cfg, tokens, mask_for_window):
  """One unpadded sequence [L] -> (hidden after final norm [L, D], capped logits [L, V])."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  x = p['embedder']['embedding'][tokens] * np.sqrt(cfg.embed_dim)
  positions = np.arange(len(tokens), dtype=np.float64)
  groups = cfg.num_heads // cfg.num_kv_heads
  cap = lambda v, c: v if c is None else np.tanh(v / c) * c
  for i in range(cfg.num_layers):
    layer = p[f'layer_{i}']
    att = layer['self_attn']
    h = _np_rms(x, layer['pre_attention_norm']['scale'], cfg.rms_norm_eps)
    q = _np_rope(np.einsum('ld,dhk->lhk', h, att['q_proj']['kernel']), positions, cfg.rope_theta)
    k = _np_rope(np.einsum('ld,dhk->lhk', h, att['k_proj']['kernel']), positions, cfg.rope_theta)
    v = np.einsum('ld,dhk->lhk', h, att['v_proj']['kernel'])
    mask = mask_for_window(cfg.layer_window(i))
    heads = []
    for head in range(cfg.num_heads):
      logits = cap(q[:, head] @ k[:, head // groups].T * cfg.query_pre_attn_scalar**-0.5,
                   cfg.attn_logits_soft_cap)
      logits = np.where(mask, logits, -np.inf)
      probs = np.exp(logits - logits.max(-1, keepdims=True))
      heads.append((probs / probs.sum(-1, keepdims=True)) @ v[:, head // groups])
    o = np.einsum('lhk,hkd->ld', np.stack(heads, 1), att['o_proj']['kernel'])
    x = x + _np_rms(o, layer['post_attention_norm']['scale'], cfg.rms_norm_eps)
    h = _np_rms(x, layer['pre_feedforward_norm']['scale'], cfg.rms_norm_eps)
    gate = h @ layer['mlp']['gate_proj']['kernel']
    gelu = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate**3)))
    f = (gelu * (h @ layer['mlp']['up_proj']['kernel'])) @ layer['mlp']['down_proj']['kernel']
    x = x + _np_rms(f, layer['post_feedforward_norm']['scale'], cfg.rms_norm_eps)
  x = _np_rms(x, p['final_norm']['scale'], cfg.rms_norm_eps)
  return x, cap(x @ p['embedder']['embedding'].T, cfg.final_logit_soft_cap)


REF_CFG = dataclasses.replace(CFG, num_layers=3, sliding_window=3, attn_logits_soft_cap=2.0,
                              final_logit_soft_cap=3.0, query_pre_attn_scalar=24, rope_theta=300.0)
L = 10
IDX = np.arange(L)
DIST = IDX[:, None] - IDX[None, :]


def test_decoder_matches_numpy_causal_reference():
  tokens = _tokens(1, L, seed=5)
  params = _params(Decoder(REF_CFG), tokens)
  logits = Decoder(REF_CFG).apply({'params': params}, tokens)
  causal = lambda w: (DIST >= 0) & (True if w is None else DIST < w)
  _, want = _np_stack(params, REF_CFG, np.asarray(tokens[0]), causal)
  np.testing.assert_allclose(np.asarray(logits[0]), want, atol=2e-5)


def test_prefix_lm_matches_numpy_reference():
  tokens = _tokens(1, L, seed=6)
  prefix = (IDX < 4)
  params = _params(Decoder(REF_CFG), tokens, seed=1)
  logits = Decoder(REF_CFG).apply({'params': params}, tokens,
                                  causal_attention=jnp.asarray(prefix[None], jnp.int32))
  prefix_lm = lambda w: (((DIST >= 0) | (prefix[:, None] & prefix[None, :])) &
                         (True if w is None else np.abs(DIST) < w))
  _, want = _np_stack(params, REF_CFG, np.asarray(tokens[0]), prefix_lm)
  np.testing.assert_allclose(np.asarray(logits[0]), want, atol=2e-5)
  plain = Decoder(REF_CFG).apply({'params': params}, tokens)
  # Prefix positions see later prefix tokens; positions after the prefix's window are unchanged.
  assert not np.allclose(plain[0, :4], logits[0, :4])


def test_encoder_matches_numpy_bidirectional_reference():
  tokens = _tokens(1, L, seed=7)
  params = _params(Encoder(REF_CFG), tokens, seed=2)
  hidden = Encoder(REF_CFG).apply({'params': params}, tokens)
  bidirectional = lambda w: np.ones((L, L), bool) if w is None else np.abs(DIST) <= w
  want, _ = _np_stack(params, REF_CFG, np.asarray(tokens[0]), bidirectional)
  np.testing.assert_allclose(np.asarray(hidden[0]), want, atol=2e-5)
  # The same parameters run as a Decoder differ only by the (causal) mask.
  causal = lambda w: (DIST >= 0) & (True if w is None else DIST < w)
  _, want_causal = _np_stack(params, REF_CFG, np.asarray(tokens[0]), causal)
  np.testing.assert_allclose(np.asarray(Decoder(REF_CFG).apply({'params': params}, tokens)[0]),
                             want_causal, atol=2e-5)


# ------------------------------------------------------------------------------------------------
# Packing: each packed segment computes what it computes alone.
# ------------------------------------------------------------------------------------------------
def _pack(*seqs, length):
  tokens = np.zeros((1, length), np.int32)
  segments = np.zeros((1, length), np.int32)
  positions = np.zeros((1, length), np.int32)
  start = 0
  for k, seq in enumerate(seqs):
    end = start + len(seq)
    tokens[0, start:end], segments[0, start:end] = seq, k + 1
    positions[0, start:end] = np.arange(len(seq))
    start = end
  return jnp.asarray(tokens), jnp.asarray(segments), jnp.asarray(positions)


def _rows(*rows, length):
  """Stacks 1-D int arrays into [len(rows), length], right-padded with 0."""
  out = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return jnp.asarray(out)


def test_packed_encoder_segments_match_separate_runs():
  a, b = np.asarray(_tokens(1, 5, seed=8)[0]), np.asarray(_tokens(1, 6, seed=9)[0])
  tokens, segments, positions = _pack(a, b, length=13)
  # Row 0: a and b packed. Rows 1, 2: each alone, right-padded (segment_ids=None there would mean
  # tokens != 0; here explicit ids 1 / 0 say the same).
  batch_tokens = _rows(tokens[0], a, b, length=13)
  batch_segments = _rows(segments[0], np.ones(5), np.ones(6), length=13)
  batch_positions = _rows(positions[0], np.arange(5), np.arange(6), length=13)
  params = _params(Encoder(REF_CFG), batch_tokens, seed=3)
  out = _run(Encoder(REF_CFG), params, batch_tokens, segment_ids=batch_segments,
             positions=batch_positions)
  np.testing.assert_allclose(out[0, :5], out[1, :5], atol=1e-5)
  np.testing.assert_allclose(out[0, 5:11], out[2, :6], atol=1e-5)
  # segment_ids=None derives padding from tokens != 0: same hidden states on the real tokens.
  default = _run(Encoder(REF_CFG), params, batch_tokens[1:])
  np.testing.assert_allclose(default[0, :5], out[1, :5], atol=1e-5)
  np.testing.assert_allclose(default[1, :6], out[2, :6], atol=1e-5)
  # Without segment ids the packed row mixes the two sequences.
  mixed = _run(Encoder(REF_CFG), params, batch_tokens[:1])
  assert not np.allclose(mixed[0, :5], out[1, :5], atol=1e-3)


def test_packed_prefix_lm_matches_separate_runs():
  a, b = np.asarray(_tokens(1, 6, seed=10)[0]), np.asarray(_tokens(1, 5, seed=11)[0])
  tokens, segments, positions = _pack(a, b, length=12)
  prefix = np.zeros(12, np.int32)
  prefix[:3] = 1
  prefix[6:8] = 1
  batch_tokens = _rows(tokens[0], a, b, length=12)
  batch_segments = _rows(segments[0], np.ones(6), np.ones(5), length=12)
  batch_positions = _rows(positions[0], np.arange(6), np.arange(5), length=12)
  batch_prefix = _rows(prefix, np.arange(6) < 3, np.arange(5) < 2, length=12)
  params = _params(Decoder(REF_CFG), batch_tokens, seed=4)
  out = _run(Decoder(REF_CFG), params, batch_tokens, segment_ids=batch_segments,
             positions=batch_positions, causal_attention=batch_prefix)
  np.testing.assert_allclose(out[0, :6], out[1, :6], atol=1e-5)
  np.testing.assert_allclose(out[0, 6:11], out[2, :5], atol=1e-5)


def test_packed_encoder_decoder_matches_separate_runs():
  enc_cfg = dataclasses.replace(REF_CFG, embed_dim=48, mlp_dim=96)
  model = EncoderDecoder(EncoderDecoderConfig(encoder=enc_cfg, decoder=REF_CFG))
  ea, eb = np.asarray(_tokens(1, 5, seed=12)[0]), np.asarray(_tokens(1, 7, seed=13)[0])
  da, db = np.asarray(_tokens(1, 4, seed=14)[0]), np.asarray(_tokens(1, 3, seed=15)[0])
  enc, enc_seg, enc_pos = _pack(ea, eb, length=14)
  dec, dec_seg, dec_pos = _pack(da, db, length=9)
  # Row 0 packed; rows 1, 2 alone and right-padded (segment ids 1 on real tokens, 0 on padding).
  enc_b, dec_b = _rows(enc[0], ea, eb, length=14), _rows(dec[0], da, db, length=9)
  enc_seg_b = _rows(enc_seg[0], np.ones(5), np.ones(7), length=14)
  enc_pos_b = _rows(enc_pos[0], np.arange(5), np.arange(7), length=14)
  dec_seg_b = _rows(dec_seg[0], np.ones(4), np.ones(3), length=9)
  dec_pos_b = _rows(dec_pos[0], np.arange(4), np.arange(3), length=9)
  params = _params(model, enc_b, dec_b, seed=5)
  kwargs = dict(encoder_segment_ids=enc_seg_b, encoder_positions=enc_pos_b,
                decoder_segment_ids=dec_seg_b, decoder_positions=dec_pos_b)
  logits = _run(model, params, enc_b, dec_b, **kwargs)
  np.testing.assert_allclose(logits[0, :4], logits[1, :4], atol=1e-5)
  np.testing.assert_allclose(logits[0, 4:7], logits[2, :3], atol=1e-5)

  # encode/decode compose to __call__.
  def encode_decode(variables):
    encoded = model.apply(variables, enc_b, encoder_segment_ids=enc_seg_b,
                          encoder_positions=enc_pos_b, method=EncoderDecoder.encode)
    return encoded, model.apply(variables, encoded, dec_b, encoder_segment_ids=enc_seg_b,
                                decoder_segment_ids=dec_seg_b, decoder_positions=dec_pos_b,
                                method=EncoderDecoder.decode)

  encoded, decoded = jax.jit(encode_decode)({'params': params})
  assert encoded.shape == (3, 14, 48)
  np.testing.assert_allclose(decoded, logits, atol=1e-6)


_SHARDED_SCRIPT = r'''
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
from trainer.model.config import EncoderDecoderConfig, TransformerConfig
from trainer.model.transformer import EncoderDecoder
cfg = TransformerConfig(vocab_size=128, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=16, mlp_dim=64, query_pre_attn_scalar=16, sliding_window=3)
enc = jnp.asarray(np.random.RandomState(0).randint(1, 128, (4, 12)))
dec = enc[:, :6]
rules = (("batch", "data"), ("heads", "tensor"), ("kv_heads", "tensor"), ("mlp", "tensor"),
         ("vocab", "tensor"), ("embed", None), ("length", None), ("head_dim", None))
mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "tensor"))
# EncoderDecoder covers both stacks, cross-attention and both layer types.
model = EncoderDecoder(EncoderDecoderConfig(encoder=cfg, decoder=cfg))
args = (enc, dec)
with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
  # init and apply under the mesh, parameters placed by their logical axes
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
  sharded = jax.jit(model.init, out_shardings=shardings)(jax.random.PRNGKey(0), *args)
  q = nn.unbox(sharded)["params"]["decoder"]["layer_0"]["cross_attn"]["k_proj"]["kernel"]
  spec = tuple(q.sharding.spec)
  assert spec[:2] == (None, "tensor") and not any(spec[2:]), spec
  jaxpr = str(jax.make_jaxpr(model.apply)(sharded, *args))
  assert jaxpr.count("sharding_constraint") > 10, "activation constraints missing"
  got = jax.jit(model.apply)(sharded, *args)
  assert tuple(got.sharding.spec) == ("data", None, "tensor"), got.sharding
  grads = jax.jit(jax.grad(lambda v: jnp.mean(model.apply(v, *args) ** 2)))(sharded)
want = jax.jit(model.apply)(jax.device_get(nn.unbox(sharded)), *args)
np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))
print("SHARDED_OK")
'''


def test_runs_sharded_under_a_mesh_with_logical_rules(tmp_path, repo_root):
  """Logical axis names work under `jax.set_mesh` + rules on 4 host devices (subprocess: the XLA
  device-count flag is read at jax import)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  script = tmp_path / 'sharded.py'
  script.write_text(_SHARDED_SCRIPT)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(repo_root))
  result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          cwd=str(repo_root), timeout=300, check=False)
  assert 'SHARDED_OK' in result.stdout, result.stderr[-3000:]
