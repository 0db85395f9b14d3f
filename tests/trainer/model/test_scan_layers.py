"""`TransformerConfig.scan_layers`: the scanned stack computes what the unrolled one does, and its
stacked params convert to and from the unrolled layout at every edge (checkpoints, HF, adapt,
optimizer)."""
import dataclasses
import functools
import json
import os
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from trainer.adaptation import adapt
from trainer.checkpoint import checkpoints
from trainer.checkpoint import loader
from trainer.checkpoint import hf_export
from trainer.model import config_io
from trainer.checkpoint import hf_gemma2
from trainer.checkpoint import hf_t5gemma
from trainer.training import optimizers
from trainer.training import partitioning
from trainer.model import scan_layout
from trainer.model.config import EncoderDecoderConfig, TransformerConfig
from trainer.model.transformer import Decoder, Encoder, EncoderDecoder

jax.config.update('jax_compilation_cache_dir',
                  os.path.join(tempfile.gettempdir(), 'gemma_adapt_test_jax_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)

# 4 layers = 2 scan steps of (sliding, global); window 3 < length so the pattern matters.
CFG = TransformerConfig(vocab_size=32, embed_dim=16, num_layers=4, num_heads=2, num_kv_heads=1,
                        head_dim=8, mlp_dim=24, query_pre_attn_scalar=8, sliding_window=3)
# Two layers a side (compile time): the encoder scans one (sliding, global) step, the all-global
# decoder two one-layer steps (with cross-attention); its width differs from the encoder's.
ENC_DEC = EncoderDecoderConfig(
    encoder=dataclasses.replace(CFG, num_layers=2),
    decoder=dataclasses.replace(CFG, num_layers=2, embed_dim=8, mlp_dim=16, sliding_window=None))
B, L = 2, 8
SEGMENTS = np.array([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 3, 3, 3]], np.int32)
POSITIONS = np.array([[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 0, 1, 2]], np.int32)


def _scan(config, **changes):
  if isinstance(config, EncoderDecoderConfig):
    return EncoderDecoderConfig(encoder=_scan(config.encoder, **changes),
                                decoder=_scan(config.decoder, **changes))
  return dataclasses.replace(config, scan_layers=True, **changes)


def _tokens(seed):
  return np.random.RandomState(seed).randint(1, CFG.vocab_size, size=(B, L)).astype(np.int32)


def _random_params(module, *args, **kwargs):
  """N(0, 0.2) for every parameter (norm scales too, so every tensor matters)."""
  shapes = nn.unbox(jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs))['params'])
  rs = np.random.RandomState(0)
  return jax.tree_util.tree_map(lambda s: rs.normal(scale=0.2, size=s.shape).astype(np.float32),
                                shapes)


def _module_and_args(kind, config):
  tokens, seg, pos = _tokens(1), SEGMENTS, POSITIONS
  if kind == 'decoder':
    return Decoder(config), (tokens,), dict(segment_ids=seg, positions=pos)
  if kind == 'encoder':
    return Encoder(config), (tokens,), dict(segment_ids=seg, positions=pos)
  return EncoderDecoder(config), (_tokens(2), tokens), dict(
      encoder_segment_ids=seg, encoder_positions=pos, decoder_segment_ids=seg,
      decoder_positions=pos)


@functools.lru_cache(maxsize=None)
def _value_and_grad(kind, config):
  module, args, kwargs = _module_and_args(kind, config)

  def loss(params):
    out = module.apply({'params': params}, *args, **kwargs)
    weights = np.random.RandomState(5).normal(size=out.shape).astype(np.float32)
    return jnp.sum(out * weights), out

  return jax.jit(jax.value_and_grad(loss, has_aux=True))


@pytest.mark.parametrize('remat', ['none', 'dots'])
@pytest.mark.parametrize('kind', ['decoder', 'encoder', 'encoder_decoder'])
def test_scan_matches_unrolled_outputs_and_gradients(kind, remat):
  config = ENC_DEC if kind == 'encoder_decoder' else CFG
  config = (EncoderDecoderConfig(encoder=dataclasses.replace(config.encoder, remat=remat),
                                 decoder=dataclasses.replace(config.decoder, remat=remat))
            if kind == 'encoder_decoder' else dataclasses.replace(config, remat=remat))
  module, args, kwargs = _module_and_args(kind, config)
  params = _random_params(module, *args, **kwargs)
  (_, out), grads = _value_and_grad(kind, config)(params)
  scanned_config = _scan(config)
  (_, out_s), grads_s = _value_and_grad(kind, scanned_config)(
      scan_layout.for_config(params, scanned_config))
  np.testing.assert_allclose(out_s, out, rtol=1e-5, atol=1e-5)
  flat = dict(jax.tree_util.tree_flatten_with_path(grads)[0])
  flat_s = dict(jax.tree_util.tree_flatten_with_path(scan_layout.unrolled(grads_s))[0])
  assert flat.keys() == flat_s.keys()
  for path, g in flat.items():
    # fp32 summation order differs (scan vs unrolled): 1e-5 of each tensor's largest entry.
    np.testing.assert_allclose(flat_s[path], g, rtol=1e-5, atol=1e-5 * np.abs(g).max(),
                               err_msg=jax.tree_util.keystr(path))


def test_return_hidden_and_param_tree_of_the_scanned_stack():
  scanned = _scan(ENC_DEC)
  module, args, kwargs = _module_and_args('encoder_decoder', ENC_DEC)
  params = _random_params(module, *args, **kwargs)
  boxed = jax.eval_shape(lambda: EncoderDecoder(scanned).init(jax.random.PRNGKey(0), *args,
                                                              **kwargs))['params']
  assert sorted(boxed['encoder']['layers']) == ['block_0', 'block_1']  # sliding, global
  assert sorted(boxed['decoder']['layers']) == ['block_0']  # all global: period 1
  k = boxed['decoder']['layers']['block_0']['cross_attn']['k_proj']['kernel']
  assert k.names == ('layers', 'embed', 'kv_heads', 'head_dim') and k.value.shape == (2, 16, 1, 8)
  # The 'layers' axis is unsharded by the default rules.
  shardings = partitioning.Partitioner().params_sharding(boxed)
  assert shardings['encoder']['layers']['block_1']['mlp']['up_proj']['kernel'].spec[0] is None

  hidden = jax.jit(lambda p, c: EncoderDecoder(c).apply({'params': p}, *args, return_hidden=True,
                                                          **kwargs), static_argnums=1)
  np.testing.assert_allclose(hidden(scan_layout.for_config(params, scanned), scanned),
                             hidden(params, ENC_DEC), rtol=1e-5, atol=1e-5)


def test_scan_periods_and_bad_scan_flag():
  # A period that does not divide the layers: whole periods scanned, the rest unrolled
  # (tests/trainer/model/test_scan_remainder.py).
  assert dataclasses.replace(CFG, num_layers=3, scan_layers=True).num_scanned_layers == 2
  with pytest.raises(ValueError, match='scan_layers must be a bool'):
    dataclasses.replace(CFG, scan_layers='yes')
  # Periods follow the windows: all global -> 1 layer per step; a custom pattern -> its period.
  all_global = dataclasses.replace(CFG, num_layers=3, sliding_window=None, scan_layers=True)
  assert all_global.scan_period == 1
  custom = dataclasses.replace(CFG, num_layers=6, scan_layers=True,
                               layer_types=('sliding', 'sliding', 'global') * 2)
  assert custom.scan_period == 3


def test_layout_conversions_round_trip_exactly():
  module, args, kwargs = _module_and_args('encoder_decoder', ENC_DEC)
  params = _random_params(module, *args, **kwargs)
  tree = {**params, 'teacher': _random_params(Decoder(CFG), _tokens(1))}  # e.g. distillation
  scanned = scan_layout.scanned(tree, 2)
  assert sorted(scanned['teacher']) == ['embedder', 'final_norm', 'layers']
  np.testing.assert_array_equal(scanned['teacher']['layers']['block_1']['mlp']['up_proj']['kernel'][1],
                                tree['teacher']['layer_3']['mlp']['up_proj']['kernel'])
  for back in (scan_layout.unrolled(scanned), scan_layout.like(scanned, tree),
               scan_layout.unrolled(jax.tree_util.tree_map(jnp.asarray, scanned))):
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(tree)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(tree)):
      np.testing.assert_array_equal(a, b)
  assert scan_layout.unrolled(tree) == tree and scan_layout.for_config(params, ENC_DEC) == params
  # Regrouping by another period goes through the unrolled layout.
  by_four = scan_layout.scan_stack(scanned['teacher'], 4)
  assert by_four['layers']['block_3']['mlp']['up_proj']['kernel'].shape == (1, 16, 24)
  # Abstract leaves: the leading axis is added to / dropped from the sharding spec.
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ('fsdp',))
  leaf = jax.ShapeDtypeStruct((16, 24), jnp.float32, sharding=jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec('fsdp', None)))
  abstract = {'embedder': {'embedding': leaf}, 'final_norm': {'scale': leaf},
              **{f'layer_{i}': {'w': leaf} for i in range(4)}}
  stacked = scan_layout.scan_stack(abstract, 2)['layers']['block_0']['w']
  assert stacked.shape == (2, 16, 24) and tuple(stacked.sharding.spec) == (None, 'fsdp', None)
  assert scan_layout.unscan_stack(scan_layout.scan_stack(abstract, 2)) == abstract


def _abstract(config, module_cls, *args):
  boxed = jax.eval_shape(lambda: module_cls(config).init(jax.random.PRNGKey(0), *args))['params']
  return checkpoints.abstract_like(nn.unbox(boxed),
                                   partitioning.Partitioner().params_sharding(boxed))


def test_checkpoint_written_unrolled_restores_into_scanned_and_back(tmp_path):
  args = (_tokens(2), _tokens(1))
  params = _random_params(EncoderDecoder(ENC_DEC), *args)
  scanned_config = _scan(ENC_DEC)
  checkpoints.save_params(str(tmp_path / 'unrolled'), params)
  restored = loader.restore_params(str(tmp_path / 'unrolled'),
                                        _abstract(scanned_config, EncoderDecoder, *args))
  assert scan_layout.is_scanned(restored['encoder']) and scan_layout.is_scanned(restored['decoder'])
  want = scan_layout.for_config(params, scanned_config)
  for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(a, b)
  outputs = {}
  for name, config, p in (('unrolled', ENC_DEC, params), ('scanned', scanned_config, restored)):
    outputs[name] = jax.jit(lambda p, c=config: EncoderDecoder(c).apply({'params': p}, *args))(p)
  np.testing.assert_allclose(outputs['scanned'], outputs['unrolled'], rtol=1e-5, atol=1e-5)

  # And back: a scanned checkpoint (with an extra teacher entry) into an unrolled model.
  teacher = scan_layout.scanned(_random_params(Decoder(CFG), args[1]), 2)
  checkpoints.save_params(str(tmp_path / 'scanned'), {**jax.device_get(restored),
                                                      'teacher': teacher})
  back = loader.restore_params(str(tmp_path / 'scanned'),
                                    _abstract(ENC_DEC, EncoderDecoder, *args))
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
  for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(a, b)


def _read_dir(path):
  with open(os.path.join(path, 'config.json')) as f:
    return json.load(f), load_file(os.path.join(path, 'model.safetensors'))


def test_hf_export_and_import_with_a_scanned_model(tmp_path):
  tokens = _tokens(1)
  dec_params = _random_params(Decoder(CFG), tokens)
  scanned_cfg = _scan(CFG)
  # Gemma 2: export from scanned params = export from unrolled; import into a scanned config.
  hf_gemma2.export_decoder(dec_params, CFG, str(tmp_path / 'g_unrolled'))
  hf_gemma2.export_decoder(scan_layout.for_config(dec_params, scanned_cfg), scanned_cfg,
                           str(tmp_path / 'g_scanned'))
  (config_a, tensors_a), (config_b, tensors_b) = (_read_dir(tmp_path / 'g_unrolled'),
                                                  _read_dir(tmp_path / 'g_scanned'))
  assert config_a == config_b and tensors_a.keys() == tensors_b.keys()
  for name, value in tensors_a.items():
    np.testing.assert_array_equal(tensors_b[name], value)
  config, imported = hf_gemma2.load_decoder(str(tmp_path / 'g_unrolled'), scan_layers=True)
  assert config.scan_layers and scan_layout.is_scanned(imported)
  np.testing.assert_array_equal(imported['layers']['block_1']['self_attn']['o_proj']['kernel'][1],
                                dec_params['layer_3']['self_attn']['o_proj']['kernel'])
  # The HF directory as init_checkpoint of a scanned model.
  restored = loader.restore_params(str(tmp_path / 'g_unrolled'),
                                        _abstract(scanned_cfg, Decoder, tokens))
  np.testing.assert_array_equal(restored['layers']['block_0']['mlp']['gate_proj']['kernel'],
                                imported['layers']['block_0']['mlp']['gate_proj']['kernel'])

  # T5Gemma through the entry point (`trainer.export_hf`): a scanned checkpoint + its config.
  args = (_tokens(2), tokens)
  params = _random_params(EncoderDecoder(ENC_DEC), *args)
  scanned = _scan(ENC_DEC)
  hf_t5gemma.export_t5gemma(params, ENC_DEC, str(tmp_path / 't_unrolled'))
  run_dir = tmp_path / 'run'
  checkpoints.save_params(str(run_dir / 'params'), scan_layout.for_config(params, scanned))
  config_io.write_model_config(scanned, str(run_dir / config_io.MODEL_CONFIG_FILE))
  hf_export.export(checkpoint=str(run_dir), output=str(tmp_path / 't_scanned'), log=lambda *a: None)
  (config_a, tensors_a), (config_b, tensors_b) = (_read_dir(tmp_path / 't_unrolled'),
                                                  _read_dir(tmp_path / 't_scanned'))
  assert config_a == config_b and tensors_a.keys() == tensors_b.keys()
  for name, value in tensors_a.items():
    np.testing.assert_array_equal(tensors_b[name], value)


def test_adapt_from_a_scanned_source_into_scanned_and_unrolled_models():
  source = _random_params(Decoder(CFG), _tokens(1))
  scanned_cfg = _scan(CFG)
  config_u, adapted_u = adapt.adapt_params(CFG, source)
  config_s, adapted_s = adapt.adapt_params(scanned_cfg,
                                           scan_layout.for_config(source, scanned_cfg))
  assert config_s.decoder.scan_layers and scan_layout.is_scanned(adapted_s['decoder'])
  assert 'cross_attn' in adapted_s['decoder']['layers']['block_1']
  back = scan_layout.unrolled(adapted_s)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(adapted_u)
  for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(adapted_u)):
    np.testing.assert_array_equal(a, b)
  # A scanned source checked against an unrolled config (and vice versa) is fine.
  loader.check_decoder_params(scan_layout.for_config(source, scanned_cfg), CFG, what='src')
  loader.check_decoder_params(source, scanned_cfg, what='src')


def test_optimizer_step_on_scanned_params_equals_the_unrolled_step():
  """Adafactor's factored moments, parameter scale and update clipping, and the weight-decay mask
  (vectors are not decayed), all per layer: `optimizers.layerwise`."""
  params = _random_params(Decoder(CFG), _tokens(1))
  rs = np.random.RandomState(3)
  grads = jax.tree_util.tree_map(lambda p: rs.normal(size=p.shape).astype(np.float32), params)
  tx = optimizers.create_optimizer(name='adafactor', learning_rate=1e-2, weight_decay=0.1)

  @jax.jit
  def one_step(params, grads):
    updates, state = tx.update(grads, tx.init(params), params)
    return optimizers.apply_updates(params, updates, state)

  scanned_cfg = _scan(CFG)
  unrolled_result = one_step(params, grads)
  scanned_result = scan_layout.unrolled(one_step(scan_layout.for_config(params, scanned_cfg),
                                                 scan_layout.for_config(grads, scanned_cfg)))
  for a, b in zip(jax.tree_util.tree_leaves(scanned_result),
                  jax.tree_util.tree_leaves(unrolled_result)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
