"""Gin model files of the Gemma 3 / T5Gemma 2 family: released shapes, tiny/small, and the demo's
`--family=gemma3` chain of commands."""
import dataclasses

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer import gin_flags
from trainer.training import flops

REQUIRED = ["MODEL_DIR='/tmp/unused'", "MIXTURE_OR_TASK_NAME='some_task'",
            "TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}", 'TRAIN_STEPS=10']


@pytest.fixture(autouse=True)
def _clean_gin():
  yield
  gin.clear_config()


def load(model_file, extra=()):
  gin.clear_config()
  gin_flags.setup_gin(gin_files=[f'gin/models/{model_file}.gin', 'gin/runs/pretrain.gin'],
                      gin_bindings=REQUIRED + list(extra))
  return gin.query_parameter('%MODEL').scoped_configurable_fn()


# Released Gemma 3 text parameter counts (matmuls + one embedding table): 268M, 1.0B, 3.88B.
@pytest.mark.parametrize('size,layers,dim,heads,kv,mlp,window,scale,total', [
    ('270m', 18, 640, 4, 1, 2048, 512, None, 268e6),
    ('1b', 26, 1152, 4, 1, 6912, 512, None, 1.0e9),
    ('4b', 34, 2560, 8, 4, 10240, 1024, 8.0, 3.88e9)])
def test_released_shapes(size, layers, dim, heads, kv, mlp, window, scale, total):
  cfg = load(f'gemma3_{size}').config
  assert (cfg.num_layers, cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.mlp_dim) == (
      layers, dim, heads, kv, mlp)
  assert (cfg.head_dim, cfg.query_pre_attn_scalar, cfg.sliding_window) == (256, 256, window)
  assert cfg.use_qk_norm and cfg.attn_logits_soft_cap is None and cfg.final_logit_soft_cap is None
  assert (cfg.rope_theta, cfg.local_rope_theta, cfg.rope_scaling_factor) == (1e6, 1e4, scale)
  types = cfg.resolved_layer_types
  assert all(t == ('global' if (i + 1) % 6 == 0 else 'sliding') for i, t in enumerate(types))
  count = cfg.num_layers * flops.layer_matmul_params(cfg) + cfg.vocab_size * cfg.embed_dim
  assert count == pytest.approx(total, rel=0.01)
  pair = load(f't5gemma2_{size}_{size}')
  assert type(pair).__name__ == 'EncoderDecoderModel' and pair.config.merged_attention
  assert pair.config.decoder == cfg
  assert pair.config.encoder.bidirectional_window == 'split'
  assert pair.config.encoder.num_layers == layers


@pytest.mark.parametrize('size', ['tiny', 'small'])
def test_tiny_and_small_compose(size):
  cfg = load(f'gemma3_{size}', ['VOCAB_SIZE=100', 'SCAN_LAYERS=True']).config
  assert cfg.scan_layers and cfg.num_layers % cfg.scan_period == 0
  pair = load(f't5gemma2_{size}', ['VOCAB_SIZE=100']).config
  assert pair.merged_attention and pair.decoder.vocab_size == 100


def test_demo_family_gemma3_uses_the_t5gemma2_recipe():
  from pipelines import demo  # pylint: disable=g-import-not-at-top
  stages = demo.build_stages(work='/w', settings=demo.Settings.quick(), corpus_module='tasks',
                             task_prefix='pydoc', corpus_train=None, family='gemma3')
  by_name = {s.name: ' '.join(s.argv) for s in stages}
  assert 'gin/models/gemma3_tiny.gin' in by_name['teacher']
  assert 'gin/models/t5gemma2_tiny.gin' in by_name['distill']
  assert 'gin/models/t5gemma2_tiny.gin' in by_name['eval_t5gemma']
  assert 'T5Gemma 2' in stages[-1].title
  default = demo.build_stages(work='/w', settings=demo.Settings.quick(), corpus_module='tasks',
                              task_prefix='pydoc', corpus_train=None)
  assert 'gin/models/gemma2_tiny.gin' in ' '.join(default[3].argv + default[4].argv)


def _abstract_params(model):
  """The model's params as shapes (jax.eval_shape: nothing allocated, nothing compiled)."""
  batch = {name: jax.ShapeDtypeStruct((1, 8), jnp.int32) for name in (
      'encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens')}
  return nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))


# Released shapes scan whole 6-layer periods; 26 and 34 layers leave 2 and 4 unrolled.
@pytest.mark.parametrize('size,groups,rest', [('1b', 4, (24, 25)), ('4b', 5, (30, 31, 32, 33))])
def test_released_shapes_scan_with_the_remainder_unrolled(size, groups, rest):
  model = load(f'gemma3_{size}')
  cfg = model.config
  assert cfg.scan_layers and (cfg.scan_period, cfg.num_scanned_layers) == (6, groups * 6)
  params = _abstract_params(model)
  assert sorted(k for k in params if k.startswith('layer_')) == [f'layer_{i}' for i in rest]
  assert sorted(params['layers']) == [f'block_{j}' for j in range(6)]
  up = params['layers']['block_5']['mlp']['up_proj']['kernel']
  assert up.shape == (groups, cfg.embed_dim, cfg.mlp_dim)
  assert params[f'layer_{rest[-1]}']['mlp']['up_proj']['kernel'].shape == (cfg.embed_dim,
                                                                            cfg.mlp_dim)
  count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
  norms = cfg.embed_dim * (4 * cfg.num_layers + 1) + 2 * cfg.head_dim * cfg.num_layers
  assert count == cfg.num_layers * flops.layer_matmul_params(cfg) + cfg.vocab_size * (
      cfg.embed_dim) + norms
  pair_model = load(f't5gemma2_{size}_{size}')
  pair = _abstract_params(pair_model)
  for side in ('encoder', 'decoder'):
    assert pair_model.config.encoder.scan_layers and pair_model.config.decoder.scan_layers
    assert sorted(k for k in pair[side] if k.startswith('layer')) == sorted(
        [f'layer_{i}' for i in rest] + ['layers'])


# ---------------------------------------------------------------------------------------------
# The Gemma 3 encoder (gin/models/gemma3_encoder_*.gin): Gemma Encoder pooler + head on Gemma 3
# shapes, started from a Gemma 3 decoder-only checkpoint.


def load_encoder(model_file, extra=()):
  gin.clear_config()
  gin_flags.setup_gin(gin_files=[f'gin/models/{model_file}.gin', 'gin/runs/finetune_encoder.gin'],
                      gin_bindings=REQUIRED + list(extra))
  return gin.query_parameter('%MODEL').scoped_configurable_fn()


@pytest.fixture(scope='module')
def gemma3_tiny_checkpoint(tmp_path_factory):
  """A random gemma3_tiny decoder-only checkpoint (vocab 100), as trainer.train would write."""
  from trainer.checkpoint import checkpoints  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  decoder = load('gemma3_tiny', ['VOCAB_SIZE=100'])
  gin.clear_config()
  params = nn.unbox(decoder.init(jax.random.PRNGKey(3), {
      'decoder_input_tokens': jnp.ones((1, 8), jnp.int32),
      'decoder_target_tokens': jnp.ones((1, 8), jnp.int32)}))
  params = jax.tree_util.tree_map(
      lambda x: x + 0.3 * np.random.RandomState(x.size % 97).normal(size=x.shape).astype(x.dtype),
      params)  # norm scales start at 0: random values so every tensor matters
  path = str(tmp_path_factory.mktemp('g3') / 'params')
  checkpoints.save_params(path, params)
  return path, params


def test_gemma3_encoder_tiny_with_each_pooler(gemma3_tiny_checkpoint):
  from trainer.model import transformer  # pylint: disable=g-import-not-at-top
  path, source = gemma3_tiny_checkpoint
  rng = np.random.RandomState(0)
  tokens = rng.randint(1, 100, size=(2, 20)).astype(np.int32)  # 20 > the tiny window (8)
  tokens[1, 15:] = 0
  batch = {'encoder_input_tokens': tokens, 'label': np.zeros((2, 1), np.int32)}  # S = 1: unpacked
  outputs = {}
  for pooler in ('first', 'last', 'mean', 'attention'):
    model = load_encoder('gemma3_encoder_tiny', ['VOCAB_SIZE=100', f'POOLER="{pooler}"',
                                                 f'INIT_CHECKPOINT="{path}"', 'NUM_CLASSES=3'])
    cfg = model.config
    assert type(model).__name__ == 'EncoderClassifierModel' and model.pooler == pooler
    assert cfg.use_qk_norm and cfg.bidirectional_window == 'split' and cfg.local_rope_theta
    params = nn.unbox(model.init(jax.random.PRNGKey(0), batch))
    np.testing.assert_array_equal(params['encoder']['layer_3']['self_attn']['k_norm']['scale'],
                                  source['layer_3']['self_attn']['k_norm']['scale'])
    if pooler == 'attention':  # its query starts at 0 (= mean pooling): a trained one instead
      params['pooler']['query'] = rng.normal(size=params['pooler']['query'].shape).astype(
          np.float32)
    out, mask = jax.jit(model.compute_outputs)(params, batch)
    assert out.shape == (2, 1, 3) and np.asarray(mask).all() and np.isfinite(out).all()
    outputs[pooler] = np.asarray(out)
    if pooler == 'mean':  # by hand: the mean of the encoder's valid hidden states, then the head
      seg = (tokens != 0).astype(np.int32)
      hidden = np.asarray(transformer.Encoder(cfg).apply({'params': params['encoder']}, tokens,
                                                         segment_ids=seg))
      pooled = (hidden * seg[..., None]).sum(1) / seg.sum(1, keepdims=True)
      want = pooled @ params['head']['kernel'] + params['head']['bias']
      np.testing.assert_allclose(out[:, 0], want, rtol=1e-4, atol=1e-5)
      # The 'split' window matters at this length: the Gemma 2 encoder's 'symmetric' differs.
      other = np.asarray(transformer.Encoder(dataclasses.replace(
          cfg, bidirectional_window='symmetric')).apply({'params': params['encoder']}, tokens,
                                                        segment_ids=seg))
      assert np.abs(other - hidden).max() > 1e-3
  # Each pooler reads something else.
  names = sorted(outputs)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      assert np.abs(outputs[a] - outputs[b]).max() > 1e-4, (a, b)


def test_gemma3_encoder_released_shapes_build_abstractly():
  model = load_encoder('gemma3_encoder_1b', ['NUM_CLASSES=2'])
  assert model.config.num_layers == 26 and model.config.scan_layers
  params = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                   {'encoder_input_tokens': jax.ShapeDtypeStruct((1, 8),
                                                                                 jnp.int32)}))
  assert sorted(params) == ['encoder', 'head']  # the default 'mean' pooler has no params
  assert sorted(k for k in params['encoder'] if k.startswith('layer')) == [
      'layer_24', 'layer_25', 'layers']
  assert params['head']['kernel'].shape == (1152, 2)


def test_t5gemma2_eoi_token_binding():
  """A released T5Gemma 2 checkpoint has an end-of-image embedding (HF always builds one);
  `EOI_TOKEN_ID` gives the model that parameter on the tied embedder, off by default (adapt from
  Gemma 3)."""
  for eoi, present in ((None, False), (256000, True)):
    model = load('t5gemma2_270m_270m', [f'EOI_TOKEN_ID={eoi}'])
    assert model.config.encoder.eoi_token_id == model.config.decoder.eoi_token_id == eoi
    params = _abstract_params(model)
    assert ('eoi_embedding' in params['encoder']['embedder']) == present
    assert 'embedder' not in params['decoder']
