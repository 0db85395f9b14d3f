"""The Gemma 3 / T5Gemma 2 family on the trainer's existing paths: remat, scan, bf16, chunked loss,
PrefixLM, the mesh rules (trainer.bench's train step), fused-attention fallback, FLOP counts,
Gemma 2 configs unchanged, and the Gemma 3 encoder with poolers/heads."""
import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from trainer.model import encoder as encoder_lib
from trainer.model import heads as heads_lib
from trainer.model import transformer
from trainer.model.config import EncoderDecoderConfig, TransformerConfig
from trainer.model.reference_attention import AttentionMask
from trainer.model.tied_encoder_decoder import TiedEncoderDecoder
from trainer.training import benchmark
from trainer.training import flops
from trainer.training import models

G3 = TransformerConfig(vocab_size=50, embed_dim=32, num_layers=4, num_heads=4, num_kv_heads=2,
                       head_dim=12, mlp_dim=48, query_pre_attn_scalar=10.0,
                       attn_logits_soft_cap=None, final_logit_soft_cap=None, sliding_window=3,
                       layer_types=('sliding', 'sliding', 'sliding', 'global'), use_qk_norm=True,
                       rope_theta=1000.0, local_rope_theta=10.0, rope_scaling_factor=2.0)
T5G2 = EncoderDecoderConfig(encoder=dataclasses.replace(G3, bidirectional_window='split'),
                            decoder=G3, merged_attention=True)


def _batch(seed=0, b=2, le=10, ld=8):
  rng = np.random.default_rng(seed)
  enc = rng.integers(1, 50, size=(b, le)).astype(np.int32)
  enc[:, -2:] = 0
  tgt = rng.integers(1, 50, size=(b, ld)).astype(np.int32)
  return {'encoder_input_tokens': enc, 'decoder_target_tokens': tgt,
          'decoder_input_tokens': np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
          'decoder_loss_weights': np.ones_like(tgt, np.float32)}


def test_gemma2_defaults_unchanged():
  """A Gemma 2 config has one RoPE table, the Gemma 2 period, and no new parameters."""
  g2 = TransformerConfig(vocab_size=50, embed_dim=32, num_layers=4, num_heads=4, num_kv_heads=2,
                         head_dim=8, mlp_dim=48, query_pre_attn_scalar=8.0, sliding_window=3)
  assert not g2.has_local_rope and g2.scan_period == 2
  assert {g2.layer_rope_index(i) for i in range(4)} == {0}
  params = transformer.Decoder(g2).init(jax.random.PRNGKey(0), jnp.ones((1, 3), jnp.int32))
  names = str(jax.tree_util.tree_structure(meta.unbox(params)))
  assert 'q_norm' not in names and 'eoi_embedding' not in names
  assert G3.has_local_rope and G3.scan_period == 4
  # Two RoPE bases alone (no window difference) still split the scan period.
  assert dataclasses.replace(G3, sliding_window=None, rope_scaling_factor=None).scan_period == 4


def test_t5gemma2_losses_same_under_remat_scan_and_chunking():
  variant = dict(remat='dots', scan_layers=True)
  batch = _batch()
  base = models.EncoderDecoderModel(config=T5G2)
  params = meta.unbox(base.init(jax.random.PRNGKey(0), batch))
  loss, _ = base.loss_fn(params, batch, None)
  cfg = EncoderDecoderConfig(encoder=dataclasses.replace(T5G2.encoder, **variant),
                             decoder=dataclasses.replace(T5G2.decoder, **variant),
                             merged_attention=True)
  from trainer.model import scan_layout  # pylint: disable=g-import-not-at-top
  other = models.EncoderDecoderModel(config=cfg, loss_chunk_size=16)
  loss2, _ = jax.jit(other.loss_fn)(scan_layout.for_config(params, cfg), batch, None)
  assert np.isfinite(float(loss))
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-5)
  grads = jax.grad(lambda p: other.loss_fn(p, batch, None)[0])(
      scan_layout.for_config(params, cfg))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
  # The tied embedding gets gradient from encoder input, decoder input and output alike.
  assert 'embedder' not in grads['decoder']


def test_bf16_and_fused_fallback_close_to_fp32():
  batch = _batch(1)
  module = TiedEncoderDecoder(T5G2)
  params = meta.unbox(module.init(jax.random.PRNGKey(1), batch['encoder_input_tokens'],
                                  batch['decoder_input_tokens']))['params']
  ref = np.asarray(module.apply({'params': params}, batch['encoder_input_tokens'],
                                batch['decoder_input_tokens']))
  fused = EncoderDecoderConfig(
      encoder=dataclasses.replace(T5G2.encoder, attention_impl='fused'),
      decoder=dataclasses.replace(T5G2.decoder, attention_impl='fused'), merged_attention=True)
  out = np.asarray(TiedEncoderDecoder(fused).apply(
      {'params': params}, batch['encoder_input_tokens'], batch['decoder_input_tokens']))
  np.testing.assert_allclose(out, ref, atol=1e-5)  # off GPU: the reference path, same maths
  bf16 = EncoderDecoderConfig(encoder=dataclasses.replace(T5G2.encoder, dtype='bfloat16'),
                              decoder=dataclasses.replace(T5G2.decoder, dtype='bfloat16'),
                              merged_attention=True)
  out = np.asarray(TiedEncoderDecoder(bf16).apply(
      {'params': params}, batch['encoder_input_tokens'], batch['decoder_input_tokens']))
  # bf16 activations: close to fp32 (random weights, 8 layers: ~1e-1 absolute on logits ~2).
  assert out.dtype == np.float32 and np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.99


def test_gemma3_prefix_lm_bidirectional_prefix():
  model = models.DecoderOnlyModel(config=G3, prefix_lm=True, bidirectional_prefix=True)
  tokens = np.random.default_rng(2).integers(1, 50, size=(1, 9)).astype(np.int32)
  prefix = np.array([[1] * 4 + [0] * 5], np.int32)
  batch = {'decoder_input_tokens': tokens, 'decoder_target_tokens': tokens,
           'decoder_loss_weights': (1 - prefix).astype(np.float32),
           'decoder_causal_attention': prefix}
  params = meta.unbox(model.init(jax.random.PRNGKey(0), batch))
  with_prefix = np.asarray(model.compute_logits(params, batch))
  causal = np.asarray(models.DecoderOnlyModel(config=G3, bidirectional_prefix=False).compute_logits(
      params, batch))
  assert np.abs(with_prefix[0, :4] - causal[0, :4]).max() > 1e-4  # the prefix sees ahead


def test_bench_train_step_under_the_mesh_rules():
  config = T5G2  # the decoder-only Gemma 3 train step runs in the demo and the adapt tests
  model = (models.EncoderDecoderModel(config=config) if isinstance(config, EncoderDecoderConfig)
           else models.DecoderOnlyModel(config=config))
  out = benchmark.benchmark(model=model, steps=1, batch_size=2, length=8,
                            encoder_length=10 if isinstance(config, EncoderDecoderConfig) else None,
                            optimizer='adamw', peak_flops=1e12, stream=io.StringIO())
  assert np.isfinite(out['final_loss']) and out['train_tflops_per_step'] > 0


def test_merged_attention_flops_by_hand():
  le, ld = 20, 8
  d, h, k, dh = G3.embed_dim, G3.num_heads, G3.num_kv_heads, G3.head_dim
  total = flops.encoder_decoder_training_flops(T5G2, le, ld)
  separate = flops.encoder_decoder_training_flops(
      EncoderDecoderConfig(encoder=T5G2.encoder, decoder=G3), le, ld)
  # Merged = separate cross-attention without its Q/O projections (6 x 2*D*H*Dh per decoder token).
  assert separate - total == pytest.approx(G3.num_layers * 6.0 * 2 * d * h * dh * ld)
  # 'split' bidirectional windows see `window` keys (not 2 * window - 1).
  sym = flops.encoder_training_flops(dataclasses.replace(T5G2.encoder,
                                                         bidirectional_window='symmetric'), le)
  split = flops.encoder_training_flops(T5G2.encoder, le)
  assert sym - split == pytest.approx(3 * 12.0 * le * (5 - 3) * h * dh)
  del k


def test_gemma3_encoder_with_pooler_and_head():
  dec = transformer.Decoder(G3)
  src = meta.unbox(dec.init(jax.random.PRNGKey(3), jnp.ones((1, 4), jnp.int32)))['params']
  enc_cfg = dataclasses.replace(G3, bidirectional_window='exclusive')
  model = encoder_lib.EncoderClassifier(enc_cfg, head=heads_lib.HeadConfig(kind='classification',
                                                                           num_classes=3),
                                        pooler='attention')
  tokens = jnp.asarray(np.random.default_rng(4).integers(1, 50, size=(2, 7)), jnp.int32)
  params = meta.unbox(model.init(jax.random.PRNGKey(0), tokens))['params']
  params['encoder'] = encoder_lib.encoder_params_from_decoder(src)
  encoder_lib.check_encoder_params_match(params['encoder'], src)
  logits, mask = model.apply({'params': params}, tokens)
  assert logits.shape == (2, 1, 3) and np.isfinite(np.asarray(logits)).all()
  # The encoder honours its window convention: 'exclusive' differs from 'symmetric' (window 3).
  hidden = lambda cfg: np.asarray(transformer.Encoder(cfg).apply(
      {'params': params['encoder']}, tokens))
  assert np.abs(hidden(enc_cfg) - hidden(G3)).max() > 1e-4
  del mask


def test_window_conventions():
  seg = jnp.ones((1, 7), jnp.int32)
  for conv, (left, right) in (('symmetric', (3, 3)), ('split', (1, 1)), ('exclusive', (2, 2))):
    m = AttentionMask(q_segment_ids=seg, kv_segment_ids=seg, sliding_window=3,
                      bidirectional_window=conv)
    dense = np.asarray(m.materialize(7, 7))[0]
    i, j = np.meshgrid(np.arange(7), np.arange(7), indexing='ij')
    np.testing.assert_array_equal(dense, (i - j <= left) & (j - i <= right), err_msg=conv)
  # HF T5Gemma 2, window 4: left (4 + 1) // 2 = 2 keys back incl. self, right 4 // 2 + 1 - 1 = 2.
  m = AttentionMask(sliding_window=4, bidirectional_window='split')
  assert m.window_bounds() == (1, 2)
