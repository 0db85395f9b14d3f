"""TPU fused attention (splash attention, Pallas interpret mode on CPU) against the reference.

The same kernel code the TPU runs, interpreted: forward and gradients in fp32 and bf16 for causal
and bidirectional sliding windows with the project's window conventions, packed segments, GQA,
cross-attention with different lengths, a length that needs padding; the PrefixLM fallback; and
whole tiny models (Decoder, EncoderDecoder) with `attention_impl='fused'` forced onto the kernel.
Kept small (interpret mode is slow): 128-256 tokens, 4 query / 2 kv heads.
"""
import dataclasses
import logging
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.model import attention
from trainer.model import tpu_attention
from trainer.model.config import EncoderDecoderConfig, TransformerConfig
from trainer.model.reference_attention import AttentionMask, reference_attention
from trainer.model.transformer import Decoder, EncoderDecoder

REPO = str(pathlib.Path(__file__).resolve().parents[3])
B, H, K, DH = 2, 4, 2, 16
SCALE, CAP = DH**-0.5, 5.0  # a small cap so that the soft-cap really bends the logits


def _segments(length, cuts, pad):
  """Two rows of packed segment ids: row 0 cut at `cuts` with `pad` padding, row 1 one segment."""
  row0 = np.zeros(length, np.int32)
  bounds = [0, *cuts, length - pad]
  for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
    row0[a:b] = s + 1
  row1 = np.ones(length, np.int32)
  return np.stack([row0, row1])


SEG128 = _segments(128, (40, 90), pad=10)
SEG256 = _segments(256, (100,), pad=30)  # encoder side of the cross-attention case
SEG100 = _segments(100, (33,), pad=7)

# name: (q_len, kv_len, AttentionMask kwargs)
CASES = {
    'causal_window_packed': (128, 128, dict(q_segment_ids=SEG128, kv_segment_ids=SEG128,
                                             causal=True, sliding_window=17)),
    'causal_global_packed': (128, 128, dict(q_segment_ids=SEG128, kv_segment_ids=SEG128,
                                             causal=True)),
    'bidirectional_window_packed': (128, 128, dict(q_segment_ids=SEG128, kv_segment_ids=SEG128,
                                                    sliding_window=9)),
    'cross_packed': (128, 256, dict(q_segment_ids=SEG128[:, :128], kv_segment_ids=SEG256)),
    'cross_kv_padding_only': (128, 256, dict(kv_segment_ids=SEG256)),
    'causal_window_padded_length': (100, 100, dict(q_segment_ids=SEG100, kv_segment_ids=SEG100,
                                                    causal=True, sliding_window=5)),
    'no_mask_padded_length': (100, 100, None),
}


def _inputs(q_len, kv_len, dtype, seed=0):
  r = np.random.RandomState(seed)
  q = jnp.asarray(r.randn(B, q_len, H, DH) * 2, dtype)
  k = jnp.asarray(r.randn(B, kv_len, K, DH) * 2, dtype)
  v = jnp.asarray(r.randn(B, kv_len, K, DH), dtype)
  ct = jnp.asarray(r.randn(B, q_len, H, DH), jnp.float32)
  return q, k, v, ct


def _mask(kw):
  if kw is None:
    return None
  return AttentionMask(**{k: jnp.asarray(v) if isinstance(v, np.ndarray) else v
                          for k, v in kw.items()})


def _rows_that_see_a_key(mask, q_len, kv_len):
  if mask is None:
    return np.ones((B, q_len), bool)
  return np.broadcast_to(np.asarray(mask.materialize(q_len, kv_len)), (B, q_len, kv_len)).any(-1)


def _fwd_and_grads(fn, q, k, v, ct, rows):
  weight = jnp.asarray(rows, jnp.float32)[:, :, None, None]

  def loss(q, k, v):
    out = fn(q, k, v)
    return jnp.sum(out.astype(jnp.float32) * ct * weight), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return out, grads


TOL = {'float32': dict(rtol=2e-5, atol=2e-5), 'bfloat16': dict(rtol=3e-2, atol=3e-2)}


# Every case in fp32; bf16 (tolerance of bf16 inputs) on two of them (interpret mode is slow).
RUNS = [(case, 'float32') for case in sorted(CASES)] + [
    ('bidirectional_window_packed', 'bfloat16'), ('cross_packed', 'bfloat16')]


@pytest.mark.parametrize('case,dtype', RUNS)
def test_splash_kernel_equals_reference_forward_and_gradients(case, dtype):
  q_len, kv_len, kw = CASES[case]
  mask = _mask(kw)
  q, k, v, ct = _inputs(q_len, kv_len, getattr(jnp, dtype))
  rows = _rows_that_see_a_key(mask, q_len, kv_len)
  splash = lambda q, k, v: tpu_attention.splash_attention(q, k, v, mask=mask, scale=SCALE,
                                                          soft_cap=CAP, interpret=True)
  ref = lambda q, k, v: reference_attention(q, k, v, mask=mask, scale=SCALE, soft_cap=CAP)
  out, grads = _fwd_and_grads(splash, q, k, v, ct, rows)
  ref_out, ref_grads = _fwd_and_grads(ref, q, k, v, ct, rows)
  assert out.dtype == q.dtype and out.shape == q.shape
  f32 = lambda x: np.asarray(x, np.float32)
  np.testing.assert_allclose(f32(out)[rows], f32(ref_out)[rows], **TOL[dtype])
  assert np.isfinite(f32(out)).all()
  for name, got, want in zip('qkv', grads, ref_grads):
    scale = max(1.0, float(np.abs(f32(want)).max()))
    np.testing.assert_allclose(f32(got) / scale, f32(want) / scale, **TOL[dtype],
                               err_msg=f'd{name}')


def test_window_conventions_are_the_projects():
  """Causal window w: i - w < j <= i; bidirectional window w: |i - j| <= w (inclusive)."""
  static = tpu_attention._static_mask(AttentionMask(causal=True, sliding_window=3), 8, 8)
  got = np.asarray(static[0:8, 0:8])
  want = np.asarray(AttentionMask(causal=True, sliding_window=3).materialize(8, 8))[0]
  np.testing.assert_array_equal(got, want)
  static = tpu_attention._static_mask(AttentionMask(sliding_window=3), 8, 8)
  want = np.asarray(AttentionMask(sliding_window=3).materialize(8, 8))[0]
  np.testing.assert_array_equal(np.asarray(static[0:8, 0:8]), want)


def test_prefix_lm_falls_back_to_the_reference_with_one_message(caplog):
  prefix = jnp.asarray(np.arange(128)[None, :] < np.array([[30], [70]]))
  mask = AttentionMask(causal=True, bidirectional=prefix, sliding_window=17)
  q, k, v, _ = _inputs(128, 128, jnp.float32)
  tpu_attention._WARNED.clear()
  with caplog.at_level(logging.WARNING), tpu_attention.force_kernel(interpret=True):
    outs = [attention.dot_product_attention(q, k, v, mask=mask, scale=SCALE, soft_cap=CAP,
                                            impl='fused') for _ in range(2)]
  ref = reference_attention(q, k, v, mask=mask, scale=SCALE, soft_cap=CAP)
  np.testing.assert_array_equal(np.asarray(outs[0]), np.asarray(ref))
  messages = [r.getMessage() for r in caplog.records if 'splash' in r.getMessage()]
  assert len(messages) == 1 and 'PrefixLM' in messages[0], messages


def test_block_sizes_fit_the_kernel_for_head_dim_256_lengths_1k_to_8k():
  for q_len in (128, 512, 1024, 2048, 4096, 8192):
    for kv_len in (q_len, 2048):
      bs = tpu_attention.block_sizes_for(q_len, kv_len)
      assert q_len % bs.block_q == 0 and kv_len % bs.block_kv == 0
      assert bs.block_kv % bs.block_kv_compute == 0 and bs.block_kv_compute % 128 == 0
      assert bs.block_q % 128 == 0 and bs.has_backward_blocks
  bs = tpu_attention.block_sizes_for(4096, 4096)
  assert (bs.block_q, bs.block_kv, bs.block_kv_compute) == (512, 1024, 512)
  bs = tpu_attention.block_sizes_for(384, 384)  # short: one block
  assert (bs.block_q, bs.block_kv) == (384, 384)


TINY = TransformerConfig(vocab_size=64, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=16, mlp_dim=64, query_pre_attn_scalar=16, sliding_window=5,
                         attn_logits_soft_cap=5.0)


def _random_params(module, *args, **kwargs):
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs))['params']
  rs = np.random.RandomState(1)
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_map(lambda s: jnp.asarray(rs.normal(scale=0.3, size=s.shape), s.dtype),
                                nn.unbox(shapes))


def _model_logits(module_cls, config, args, kwargs):
  if isinstance(config, TransformerConfig):
    fused_cfg = dataclasses.replace(config, attention_impl='fused')
  else:
    fused_cfg = EncoderDecoderConfig(
        encoder=dataclasses.replace(config.encoder, attention_impl='fused'),
        decoder=dataclasses.replace(config.decoder, attention_impl='fused'))
  params = _random_params(module_cls(config), *args, **kwargs)
  ref = jax.jit(lambda p: module_cls(config).apply({'params': p}, *args, **kwargs))(params)
  with tpu_attention.force_kernel(interpret=True):
    got = jax.jit(lambda p: module_cls(fused_cfg).apply({'params': p}, *args, **kwargs))(params)
  return np.asarray(got), np.asarray(ref)


def test_decoder_logits_with_the_tpu_kernel_equal_the_reference():
  seg = jnp.asarray([[1] * 9 + [2] * 5 + [0] * 2, [1] * 16], jnp.int32)
  tokens = jnp.asarray(np.random.RandomState(0).randint(1, 64, (2, 16)), jnp.int32) * (seg > 0)
  pos = jnp.asarray([list(range(9)) + list(range(5)) + [0, 0], list(range(16))], jnp.int32)
  got, ref = _model_logits(Decoder, TINY, (tokens,), dict(segment_ids=seg, positions=pos))
  real = np.asarray(seg) > 0
  np.testing.assert_allclose(got[real], ref[real], rtol=1e-4, atol=1e-4)


def test_encoder_decoder_logits_with_the_tpu_kernel_equal_the_reference():
  cfg = EncoderDecoderConfig(encoder=dataclasses.replace(TINY, sliding_window=3), decoder=TINY)
  r = np.random.RandomState(2)
  enc_seg = jnp.asarray([[1] * 12 + [2] * 6 + [0] * 2, [1] * 17 + [0] * 3], jnp.int32)
  dec_seg = jnp.asarray([[1] * 6 + [2] * 4 + [0] * 2, [1] * 12], jnp.int32)
  enc = jnp.asarray(r.randint(1, 64, (2, 20)), jnp.int32) * (enc_seg > 0)
  dec = jnp.asarray(r.randint(1, 64, (2, 12)), jnp.int32) * (dec_seg > 0)
  kwargs = dict(encoder_segment_ids=enc_seg, decoder_segment_ids=dec_seg,
                encoder_positions=jnp.asarray([list(range(12)) + list(range(6)) + [0, 0],
                                               list(range(17)) + [0] * 3], jnp.int32),
                decoder_positions=jnp.asarray([list(range(6)) + list(range(4)) + [0, 0],
                                               list(range(12))], jnp.int32))
  got, ref = _model_logits(EncoderDecoder, cfg, (enc, dec), kwargs)
  real = np.asarray(dec_seg) > 0
  np.testing.assert_allclose(got[real], ref[real], rtol=1e-4, atol=1e-4)


SHARDED = textwrap.dedent('''
    import json
    import numpy as np, jax, jax.numpy as jnp
    from trainer.model import tpu_attention
    from trainer.model.reference_attention import AttentionMask, reference_attention
    from trainer.training import partitioning
    p = partitioning.Partitioner(mesh_config=partitioning.MeshConfig(data=2, fsdp=2, tensor=2))
    r = np.random.RandomState(0)
    q = jnp.asarray(r.randn(4, 128, 4, 16), jnp.float32)
    k = jnp.asarray(r.randn(4, 128, 2, 16), jnp.float32)
    v = jnp.asarray(r.randn(4, 128, 2, 16), jnp.float32)
    seg = jnp.asarray(np.repeat([[1] * 60 + [2] * 60 + [0] * 8], 4, 0), jnp.int32)
    mask = AttentionMask(q_segment_ids=seg, kv_segment_ids=seg, causal=True, sliding_window=9)
    f = lambda q, k, v: tpu_attention.splash_attention(q, k, v, mask=mask, scale=0.25,
                                                       soft_cap=5.0, interpret=True)
    with p.activate():
      specs = tpu_attention._mesh_specs(4, 4, 2)
      sh = jax.sharding.NamedSharding(p.mesh, jax.sharding.PartitionSpec(('data', 'fsdp'), None, 'tensor'))
      out = jax.jit(f)(*(jax.device_put(x, sh) for x in (q, k, v)))
      text = jax.jit(f).lower(q, k, v).as_text()
    ref = reference_attention(q, k, v, mask=mask, scale=0.25, soft_cap=5.0)
    real = np.asarray(seg) > 0
    err = float(np.abs(np.asarray(out) - np.asarray(ref))[real].max())
    manual = ('manual_computation' in text) or ('SPMDFullToShardShape' in text)
    print('RESULT ' + json.dumps({'err': err, 'q_spec': str(specs[1]), 'shard_map': manual}))
''')


def test_kernel_runs_sharded_under_a_2x2x2_mesh():
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=8',
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')])))
  proc = subprocess.run([sys.executable, '-c', SHARDED], env=env, capture_output=True, text=True,
                        timeout=600, cwd=REPO)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
  import json  # pylint: disable=g-import-not-at-top
  out = json.loads(lines[-1][len('RESULT '):])
  assert out['q_spec'] == str(jax.sharding.PartitionSpec(('data', 'fsdp'), None, ('tensor',), None))
  assert out['shard_map']
  assert out['err'] < 1e-5, out
