"""Chunked cross-entropy against the plain loss on full logits: values, gradients, memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.training import chunked_xent
from trainer.model import layers
from trainer.training import losses


def _inputs(n_b=2, n_l=37, d=16, v=97, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  hidden = (3.0 * jax.random.normal(keys[0], (n_b, n_l, d))).astype(dtype)
  embedding = jax.random.normal(keys[1], (v, d)).astype(jnp.float32)
  targets = jax.random.randint(keys[2], (n_b, n_l), 0, v)
  weights = (jax.random.uniform(keys[3], (n_b, n_l)) > 0.2).astype(jnp.float32)
  return hidden, embedding, targets, weights


def _plain(hidden, embedding, targets, weights, *, z_loss, cap, dtype):
  logits = jnp.einsum('bld,vd->blv', hidden.astype(dtype), embedding.astype(dtype),
                      preferred_element_type=jnp.float32)
  logits = layers.soft_cap(logits, cap)
  return losses.cross_entropy_with_z_loss(logits, targets, weights, z_loss=z_loss)


def _loss_and_grads(fn, hidden, embedding, targets, weights):
  def scalar(h, e):
    m = fn(h, e, targets, weights)
    return losses.mean_loss(m), m
  (_, metrics), grads = jax.value_and_grad(scalar, argnums=(0, 1), has_aux=True)(hidden, embedding)
  return metrics, grads


@pytest.mark.parametrize('chunk_size,cap,z_loss', [(16, 30.0, 1e-4), (74, None, 0.0),
                                                   (5, 3.0, 1e-2)])
def test_equals_plain_loss_and_gradients_fp32(chunk_size, cap, z_loss):
  hidden, embedding, targets, weights = _inputs()  # 74 tokens: chunks of 16 and 5 pad the last
  plain = lambda *a: _plain(*a, z_loss=z_loss, cap=cap, dtype=jnp.float32)
  chunked = lambda *a: chunked_xent.chunked_cross_entropy_with_z_loss(
      *a, z_loss=z_loss, final_logit_soft_cap=cap, chunk_size=chunk_size)
  ref_m, ref_g = _loss_and_grads(plain, hidden, embedding, targets, weights)
  got_m, got_g = _loss_and_grads(chunked, hidden, embedding, targets, weights)
  assert set(got_m) == set(ref_m)
  for name in ref_m:
    np.testing.assert_allclose(float(got_m[name][0]), float(ref_m[name][0]), rtol=1e-5,
                               err_msg=name)
    assert float(got_m[name][1]) == float(ref_m[name][1]) == float(jnp.sum(weights))
  for g, rg in zip(got_g, ref_g):
    assert float(jnp.abs(rg).max()) > 1e-4
    np.testing.assert_allclose(np.asarray(g), np.asarray(rg), rtol=1e-4,
                               atol=1e-6 * float(jnp.abs(rg).max()))


def test_bf16_compute_matches_plain_bf16_loss():
  hidden, embedding, targets, weights = _inputs(dtype=jnp.bfloat16)
  ref_m, ref_g = _loss_and_grads(
      lambda *a: _plain(*a, z_loss=1e-4, cap=30.0, dtype=jnp.bfloat16),
      hidden, embedding, targets, weights)
  got_m, got_g = _loss_and_grads(
      lambda *a: chunked_xent.chunked_cross_entropy_with_z_loss(
          *a, z_loss=1e-4, final_logit_soft_cap=30.0, dtype=jnp.bfloat16, chunk_size=32),
      hidden, embedding, targets, weights)
  np.testing.assert_allclose(float(got_m['loss'][0]), float(ref_m['loss'][0]), rtol=1e-3)
  for g, rg in zip(got_g, ref_g):
    g, rg = np.asarray(g, np.float32), np.asarray(rg, np.float32)
    np.testing.assert_allclose(g, rg, rtol=2e-2, atol=2e-2 * np.abs(rg).max())


def test_accuracy_counts_argmax_hits():
  embedding = jnp.eye(4, dtype=jnp.float32)
  hidden = jnp.asarray([[[5., 0, 0, 0], [0, 5., 0, 0], [0, 0, 0, 5.]]])
  targets = jnp.asarray([[0, 2, 3]])
  weights = jnp.asarray([[1., 1., 0.]])
  m = chunked_xent.chunked_cross_entropy_with_z_loss(hidden, embedding, targets, weights,
                                                     chunk_size=2, final_logit_soft_cap=30.0)
  assert float(m['accuracy'][0]) == 1.0 and float(m['accuracy'][1]) == 2.0


def test_full_logits_are_not_materialised():
  """Compiled loss+grad temp memory stays far below one [N, V] fp32 logits buffer."""
  n, d, v = 2048, 32, 4096  # full logits: 32 MiB fp32
  hidden, embedding, targets, weights = _inputs(n_b=1, n_l=n, d=d, v=v)
  full_bytes = n * v * 4

  def temp_bytes(fn):
    grad = jax.jit(jax.grad(lambda h, e: losses.mean_loss(fn(h, e, targets, weights)),
                            argnums=(0, 1)))
    return grad.lower(hidden, embedding).compile().memory_analysis().temp_size_in_bytes

  plain = temp_bytes(lambda *a: _plain(*a, z_loss=1e-4, cap=30.0, dtype=jnp.float32))
  chunked = temp_bytes(lambda *a: chunked_xent.chunked_cross_entropy_with_z_loss(
      *a, z_loss=1e-4, final_logit_soft_cap=30.0, chunk_size=128))
  assert plain >= full_bytes, (plain, full_bytes)  # the baseline does hold the logits
  assert chunked < full_bytes / 4, (chunked, full_bytes)


def test_drop_in_for_the_decoder_loss():
  """Model hidden states + tied embedding give the model's loss (the lead's wiring)."""
  from trainer.model import config as config_lib
  from trainer.training import models
  from trainer.model.reference_attention import AttentionMask
  cfg = config_lib.TransformerConfig(
      vocab_size=50, embed_dim=16, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=8,
      mlp_dim=32, query_pre_attn_scalar=8, final_logit_soft_cap=5.0)
  model = models.DecoderOnlyModel(config=cfg, z_loss=1e-3)
  rng = np.random.RandomState(0)
  targets = rng.randint(2, 50, size=(2, 12)).astype(np.int32)
  batch = {'decoder_input_tokens': np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], 1),
           'decoder_target_tokens': targets,
           'decoder_loss_weights': np.ones((2, 12), np.float32),
           'decoder_segment_ids': np.ones((2, 12), np.int32),
           'decoder_positions': np.broadcast_to(np.arange(12, dtype=np.int32), (2, 12))}
  from flax.core import meta
  params = meta.unbox(model.init(jax.random.PRNGKey(0), batch))

  def chunked_loss(params):
    seg = jnp.asarray(batch['decoder_segment_ids'])
    mask = AttentionMask(q_segment_ids=seg, kv_segment_ids=seg, causal=True)
    hidden = model.module.apply(
        {'params': params}, jnp.asarray(batch['decoder_input_tokens']),
        method=lambda m, tok: m.hidden(tok, jnp.asarray(batch['decoder_positions']), mask, None,
                                       None, True))
    metrics = chunked_xent.chunked_cross_entropy_with_z_loss(
        hidden, params['embedder']['embedding'], batch['decoder_target_tokens'],
        batch['decoder_loss_weights'], z_loss=1e-3, final_logit_soft_cap=5.0, chunk_size=7)
    return losses.mean_loss(metrics)

  ref, ref_g = jax.value_and_grad(lambda p: model.loss_fn(p, batch, None)[0])(params)
  got, got_g = jax.value_and_grad(chunked_loss)(params)
  np.testing.assert_allclose(float(got), float(ref), rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(got_g), jax.tree_util.tree_leaves(ref_g)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5 * float(np.abs(b).max()) + 1e-8)


def test_bad_arguments_name_the_field():
  hidden, embedding, targets, weights = _inputs()
  with pytest.raises(ValueError, match='chunk_size'):
    chunked_xent.chunked_cross_entropy_with_z_loss(hidden, embedding, targets, weights,
                                                   chunk_size=0)
  with pytest.raises(ValueError, match='embedding'):
    chunked_xent.chunked_cross_entropy_with_z_loss(hidden, embedding.T, targets, weights)


@pytest.mark.parametrize('kind', ['decoder_only', 'encoder_decoder'])
def test_wrappers_loss_chunk_size_gives_the_same_loss_and_gradients(kind):
  """`loss_chunk_size` on the model wrappers: same loss, metrics and gradients as unchunked."""
  from flax.core import meta
  from trainer.model import config as config_lib
  from trainer.training import models
  cfg = config_lib.TransformerConfig(
      vocab_size=50, embed_dim=16, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=8,
      mlp_dim=32, query_pre_attn_scalar=8, final_logit_soft_cap=5.0, sliding_window=4)
  rng = np.random.RandomState(1)
  targets = rng.randint(2, 50, size=(2, 12)).astype(np.int32)
  batch = {'decoder_input_tokens': np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], 1),
           'decoder_target_tokens': targets,
           'decoder_loss_weights': (rng.rand(2, 12) > 0.2).astype(np.float32)}
  if kind == 'decoder_only':
    make = lambda **kw: models.DecoderOnlyModel(config=cfg, z_loss=1e-3, **kw)
  else:
    batch['encoder_input_tokens'] = rng.randint(2, 50, size=(2, 10)).astype(np.int32)
    enc_dec = config_lib.EncoderDecoderConfig(encoder=cfg, decoder=cfg)
    make = lambda **kw: models.EncoderDecoderModel(config=enc_dec, z_loss=1e-3, **kw)
  plain, chunked = make(), make(loss_chunk_size=5)
  params = meta.unbox(plain.init(jax.random.PRNGKey(0), batch))
  (ref, ref_m), ref_g = jax.value_and_grad(lambda p: plain.loss_fn(p, batch, None),
                                           has_aux=True)(params)
  (got, got_m), got_g = jax.value_and_grad(lambda p: chunked.loss_fn(p, batch, None),
                                           has_aux=True)(params)
  np.testing.assert_allclose(float(got), float(ref), rtol=1e-5)
  for name in ('accuracy', 'z_loss'):
    np.testing.assert_allclose(np.asarray(got_m[name]), np.asarray(ref_m[name]), rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(got_g), jax.tree_util.tree_leaves(ref_g)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5 * float(np.abs(b).max()) + 1e-8)
  with pytest.raises(ValueError, match='loss_chunk_size'):
    make(loss_chunk_size=0)
