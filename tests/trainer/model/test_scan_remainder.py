"""Scan over layers when the layer pattern's period does not divide the layers (Gemma 3 1B: 26
layers, period 6): the whole periods are scanned, the remainder runs unrolled after them, and its
params sit beside the stacked `layers/block_j` under their unrolled names (`scan_layout`).

Tiny Gemma 3 stacks of 8 layers: 5 local : 1 global (period 6, remainder 2), window 3 shorter than
the sequence, QK-norm, two RoPE bases and linear scaling of the global one, so a layer run with
the wrong window or RoPE table changes the logits.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.checkpoint import checkpoints
from trainer.checkpoint import loader
from trainer.model import kv_cache
from trainer.model import scan_layout
from trainer.model.config import EncoderDecoderConfig, TransformerConfig
from trainer.model.tied_encoder_decoder import TiedEncoderDecoder
from trainer.model.transformer import Decoder
from trainer.training import partitioning

TYPES = ('sliding',) * 5 + ('global',) + ('sliding',) * 2
CFG = TransformerConfig(vocab_size=48, embed_dim=16, num_layers=8, num_heads=2, num_kv_heads=1,
                        head_dim=8, mlp_dim=24, query_pre_attn_scalar=6, sliding_window=3,
                        layer_types=TYPES, attn_logits_soft_cap=None, final_logit_soft_cap=None,
                        use_qk_norm=True, rope_theta=1000.0, local_rope_theta=10.0,
                        rope_scaling_factor=2.0)
SCANNED = dataclasses.replace(CFG, scan_layers=True)
B, L = 2, 8
SEGMENTS = np.array([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1, 1]], np.int32)
POSITIONS = np.array([[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 5, 6, 7]], np.int32)


def _tokens(seed, length=L):
  return np.random.RandomState(seed).randint(1, CFG.vocab_size, size=(B, length)).astype(np.int32)


def _random_params(module, *args):
  shapes = nn.unbox(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))['params'])
  rs = np.random.RandomState(0)
  return jax.tree_util.tree_map(lambda s: rs.normal(scale=0.2, size=s.shape).astype(np.float32),
                                shapes)


def test_config_period_and_remainder():
  assert (SCANNED.scan_period, SCANNED.num_scanned_layers) == (6, 6)
  assert dataclasses.replace(SCANNED, num_layers=6, layer_types=TYPES[:6]).num_scanned_layers == 6


def test_scanned_decoder_with_remainder_matches_unrolled():
  tokens = _tokens(1)
  params = _random_params(Decoder(CFG), tokens)
  scanned = scan_layout.for_config(params, SCANNED)
  # Layout: one scan step of the 6-layer period, the last two layers beside it, unstacked.
  assert sorted(scanned) == ['embedder', 'final_norm', 'layer_6', 'layer_7', 'layers']
  assert sorted(scanned['layers']) == [f'block_{j}' for j in range(6)]
  assert scanned['layers']['block_5']['mlp']['up_proj']['kernel'].shape == (1, 16, 24)
  # The model's own init has the same tree and logical axes (remainder: no 'layers' axis).
  boxed = jax.eval_shape(lambda: Decoder(SCANNED).init(jax.random.PRNGKey(0), tokens))['params']
  assert (jax.tree_util.tree_structure(nn.unbox(boxed))
          == jax.tree_util.tree_structure(scanned))
  assert boxed['layers']['block_0']['self_attn']['k_proj']['kernel'].names[0] == 'layers'
  assert boxed['layer_7']['self_attn']['k_proj']['kernel'].names[0] == 'embed'
  partitioning.Partitioner().params_sharding(boxed)  # the mesh rules cover both parts

  def forward(config, p):
    return jax.jit(lambda p: Decoder(config).apply({'params': p}, tokens, segment_ids=SEGMENTS,
                                                   positions=POSITIONS))(p)

  out = forward(CFG, params)
  np.testing.assert_allclose(forward(SCANNED, scanned), out, rtol=1e-5, atol=1e-5)
  # Not vacuous: running the remainder as if it began a period (layer 6 global instead of
  # sliding) changes the logits. (Gradients through the scan: tests/.../test_scan_layers.py.)
  shifted = dataclasses.replace(CFG, layer_types=TYPES[:6] + ('global', 'sliding'))
  assert np.max(np.abs(np.asarray(forward(shifted, params)) - np.asarray(out))) > 1e-3


def test_t5gemma2_scanned_with_remainder_matches_unrolled():
  enc = dataclasses.replace(CFG, num_layers=7, layer_types=TYPES[:7], bidirectional_window='split')
  pair = EncoderDecoderConfig(encoder=enc, decoder=CFG, merged_attention=True)
  scanned_pair = EncoderDecoderConfig(encoder=dataclasses.replace(enc, scan_layers=True),
                                      decoder=SCANNED, merged_attention=True)
  args = (_tokens(2), _tokens(3, 6))
  params = _random_params(TiedEncoderDecoder(pair), *args)
  scanned = scan_layout.for_config(params, scanned_pair)
  assert 'layer_6' in scanned['encoder'] and 'layer_5' not in scanned['encoder']
  assert sorted(k for k in scanned['decoder'] if k.startswith('layer')) == [
      'layer_6', 'layer_7', 'layers']
  want = jax.jit(TiedEncoderDecoder(pair).apply)({'params': params}, *args)
  got = jax.jit(TiedEncoderDecoder(scanned_pair).apply)({'params': scanned}, *args)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_layout_conversions_with_remainder_round_trip_exactly():
  params = _random_params(Decoder(CFG), _tokens(1))
  scanned = scan_layout.scanned(params, 6)
  for back in (scan_layout.unrolled(scanned), scan_layout.like(scanned, params),
               scan_layout.unscan_stack(jax.tree_util.tree_map(jnp.asarray, scanned))):
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
      np.testing.assert_array_equal(a, b)
  # Regrouping: period 6 (remainder 2) -> period 3 (remainder 2: layers 6, 7) -> period 4 (none).
  by_three = scan_layout.like(scanned, scan_layout.scanned(params, 3))
  assert sorted(by_three) == ['embedder', 'final_norm', 'layer_6', 'layer_7', 'layers']
  np.testing.assert_array_equal(by_three['layers']['block_2']['mlp']['up_proj']['kernel'][1],
                                params['layer_5']['mlp']['up_proj']['kernel'])
  by_four = scan_layout.scan_stack(by_three, 4)
  assert sorted(by_four) == ['embedder', 'final_norm', 'layers']
  # Abstract leaves with shardings, as the checkpoint restore sees them.
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ('fsdp',))
  leaf = jax.ShapeDtypeStruct((16, 24), jnp.float32, sharding=jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec('fsdp', None)))
  abstract = {'embedder': {'embedding': leaf}, 'final_norm': {'scale': leaf},
              **{f'layer_{i}': {'w': leaf} for i in range(8)}}
  stacked = scan_layout.scan_stack(abstract, 6)
  assert stacked['layer_7']['w'] == leaf and stacked['layers']['block_0']['w'].shape == (1, 16, 24)
  assert scan_layout.unscan_stack(stacked) == abstract
  with pytest.raises(ValueError, match='both layers/block_j .* and layer_3'):
    scan_layout.unscan_stack({**stacked, 'layer_3': {'w': leaf}})
  with pytest.raises(ValueError, match='at least one whole period'):
    scan_layout.scan_stack(abstract, 9)


def test_checkpoint_unrolled_restores_into_scanned_with_remainder_and_back(tmp_path):
  tokens = _tokens(1)
  params = _random_params(Decoder(CFG), tokens)

  def abstract(config):
    boxed = jax.eval_shape(lambda: Decoder(config).init(jax.random.PRNGKey(0), tokens))['params']
    return checkpoints.abstract_like(nn.unbox(boxed),
                                     partitioning.Partitioner().params_sharding(boxed))

  checkpoints.save_params(str(tmp_path / 'unrolled'), params)
  restored = loader.restore_params(str(tmp_path / 'unrolled'), abstract(SCANNED))
  want = scan_layout.for_config(params, SCANNED)
  assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(want)
  for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(a, b)
  checkpoints.save_params(str(tmp_path / 'scanned'), jax.device_get(restored))
  back = loader.restore_params(str(tmp_path / 'scanned'), abstract(CFG))
  for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_kv_cache_with_remainder_equals_uncached_and_reorders():
  steps = 4
  rng = np.random.RandomState(0)
  lengths = np.array([5, 2], np.int32)
  prompt = np.zeros((B, 5), np.int32)
  for b, n in enumerate(lengths):
    prompt[b, :n] = rng.randint(1, CFG.vocab_size, size=n)
  forced = rng.randint(1, CFG.vocab_size, size=(B, steps)).astype(np.int32)
  params = scan_layout.for_config(_random_params(Decoder(CFG), prompt), SCANNED)
  max_length = 5 + steps
  full = np.zeros((B, max_length), np.int32)
  for b, n in enumerate(lengths):
    full[b, :n + steps] = np.concatenate([prompt[b, :n], forced[b]])
  segments = (np.arange(max_length)[None] < (lengths[:, None] + steps)).astype(np.int32)
  want = jax.jit(lambda p: Decoder(SCANNED).apply({'params': p}, full, segment_ids=segments))(
      params)
  logits, cache = jax.jit(lambda p: kv_cache.prefill(SCANNED, p, tokens=prompt, lengths=lengths,
                                                     max_length=max_length))(params)
  assert sorted(cache['self']) == [f'block_{j}' for j in range(6)] + ['layer_6', 'layer_7']
  assert cache['self']['layer_7']['k'].shape[:2] == (B, 3)  # sliding: window-sized, no group axis
  step = jax.jit(lambda p, c, t, pos: kv_cache.step(SCANNED, p, c, tokens=t, positions=pos))
  for t in range(steps + 1):
    np.testing.assert_allclose(logits, want[np.arange(B), lengths - 1 + t], atol=1e-5, rtol=1e-5)
    if t < steps:
      logits, cache = step(params, cache, forced[:, t], lengths + t)
  idx = np.array([1, 1])
  got, _ = step(params, kv_cache.reorder(SCANNED, cache, idx), forced[idx, 0],
                (lengths + steps)[idx])
  ref, _ = step(params, cache, forced[:, 0], lengths + steps)
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref)[idx], atol=1e-6)
