"""Decoding over the KV cache against transformers' `generate`, and the sampler's distribution.

Tiny random Gemma 2 / T5Gemma models whose sliding windows (3) are shorter than prompt + output.
Greedy ids equal `generate(do_sample=False, num_beams=1)` on checkpoints we export
(`hf_gemma2.export_decoder`, `hf_t5gemma.export_t5gemma`, what `trainer.export_hf` writes) and on an
HF Gemma 2 checkpoint read directly; likewise Gemma 3 (`hf_gemma3.export_decoder`,
Gemma3ForCausalLM) and T5Gemma 2 (`hf_t5gemma2.export_encoder_decoder`,
T5Gemma2ForConditionalGeneration: merged attention, tied embedding). Beam search (4 beams) equals
HF's beam search when no hypothesis ends early; with EOS the conventions differ (see
`trainer.inference.beam_search`: T5X's ((5 + n) / 6) ** alpha vs HF's n ** length_penalty, and HF
only finishes an EOS candidate ranked in the top K of the 2K, T5X any of the 2K).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta
from scipy import stats

from trainer.checkpoint import hf_gemma2
from trainer.checkpoint import hf_gemma3
from trainer.checkpoint import hf_t5gemma
from trainer.checkpoint import hf_t5gemma2
from trainer.checkpoint import loader
from trainer.inference import decoding
from trainer.inference import sampling
from trainer.model.config import EncoderDecoderConfig, TransformerConfig
from trainer.model.tied_encoder_decoder import TiedEncoderDecoder
from trainer.model.transformer import Decoder, EncoderDecoder

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

NEW = 8


def _config(**kw):
  fields = dict(vocab_size=48, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                head_dim=16, mlp_dim=48, query_pre_attn_scalar=16, attn_logits_soft_cap=5.0,
                final_logit_soft_cap=8.0, sliding_window=3)
  fields.update(kw)
  return TransformerConfig(**fields)


def _randomise(params, seed, scale=0.3):
  leaves, tree = jax.tree_util.tree_flatten(meta.unbox(params))
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_unflatten(
      tree, [np.asarray(x) + scale * rng.randn(*x.shape).astype(np.float32) for x in leaves])


def _prompts():
  rng = np.random.RandomState(3)
  lengths = np.array([6, 4], np.int32)
  tokens = np.zeros((2, 6), np.int32)
  for b, n in enumerate(lengths):
    tokens[b, :n] = rng.randint(3, 48, size=n)
  return tokens, lengths


def _decoder_params(cfg, seed=0):
  return _randomise(Decoder(cfg).init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))['params'],
                    seed)


def _hf_generate(model, ids, **kw):
  with torch.no_grad():
    out = model.generate(torch.tensor(np.asarray(ids)[None], dtype=torch.long),
                         attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                         max_new_tokens=NEW, pad_token_id=0, **kw)
  return out[0, len(ids):].numpy() if not model.config.is_encoder_decoder else out[0, 1:].numpy()


def _trim(row):
  row = list(row)
  return row[:row.index(1) + 1] if 1 in row else row


@pytest.fixture(scope='module')
def exported_gemma2(tmp_path_factory):
  cfg = _config()
  params = _decoder_params(cfg)
  path = str(tmp_path_factory.mktemp('gemma2'))
  hf_gemma2.export_decoder(params, cfg, path)
  return cfg, params, path


def _hf_model(cls, path):
  return cls.from_pretrained(path, attn_implementation='eager', dtype=torch.float32).eval()


@pytest.mark.parametrize('source', ['exported', 'hf_direct'])
def test_gemma2_greedy_equals_transformers_generate(source, exported_gemma2, tmp_path):
  if source == 'exported':
    cfg, params, path = exported_gemma2
  else:  # a checkpoint transformers wrote, read by our loader
    hf_cfg = transformers.Gemma2Config(**{k: v for k, v in hf_gemma2.config_to_hf(
        _config()).items() if k not in ('architectures', 'model_type')})
    torch.manual_seed(0)
    model = transformers.Gemma2ForCausalLM(hf_cfg)
    with torch.no_grad():
      for p in model.parameters():
        p.normal_(0.0, 0.3)
    path = str(tmp_path)
    model.save_pretrained(path)
    cfg, params = loader.load_checkpoint(path)
  hf = _hf_model(transformers.Gemma2ForCausalLM, path)
  tokens, lengths = _prompts()
  ours = decoding.generate(config=cfg, params=params, prompt_tokens=tokens, prompt_lengths=lengths,
                           max_decode_length=NEW)
  for b in range(2):
    want = _hf_generate(hf, tokens[b, :lengths[b]], do_sample=False, num_beams=1, eos_token_id=1)
    assert _trim(ours.tokens[b][:ours.lengths[b]]) == _trim(want)
  assert ours.tokens.shape == (2, NEW) and (ours.scores < 0).all()


def test_t5gemma_greedy_equals_transformers_generate(tmp_path):
  cfg = EncoderDecoderConfig(encoder=_config(embed_dim=40), decoder=_config())
  params = _randomise(EncoderDecoder(cfg).init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32),
                                               jnp.ones((1, 3), jnp.int32))['params'], 1)
  hf_t5gemma.export_t5gemma(params, cfg, str(tmp_path))
  hf = _hf_model(transformers.T5GemmaForConditionalGeneration, str(tmp_path))
  tokens, lengths = _prompts()
  ours = decoding.generate(config=cfg, params=params, prompt_tokens=tokens, max_decode_length=NEW)
  for b in range(2):
    want = _hf_generate(hf, tokens[b, :lengths[b]], do_sample=False, num_beams=1, eos_token_id=1,
                        decoder_start_token_id=0)
    assert _trim(ours.tokens[b][:ours.lengths[b]]) == _trim(want)


def _randomise_mostly_layers(params, seed, embedding_scale, other_scale):
  """Like `_randomise`, with little noise on the tied embedding: greedy outputs of these random
  models then vary along the sequence instead of repeating one token (a stronger check)."""
  rng = np.random.RandomState(seed)

  def one(path, x):
    scale = embedding_scale if 'embedding' in jax.tree_util.keystr(path) else other_scale
    return np.asarray(x) + scale * rng.randn(*x.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(one, meta.unbox(params))


def _gemma3_config(**kw):
  # QK-norm, RoPE bases 10 (local) / 1000 (global, linearly scaled by 2), 2 local : 1 global.
  return _config(use_qk_norm=True, attn_logits_soft_cap=None, rope_theta=1000.0,
                 local_rope_theta=10.0, rope_scaling_factor=2.0, num_layers=3,
                 layer_types=('sliding', 'sliding', 'global'), **kw)


def test_gemma3_greedy_equals_transformers_generate(tmp_path):
  cfg = _gemma3_config()
  params = _randomise_mostly_layers(
      Decoder(cfg).init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))['params'], 4, 0.05, 0.5)
  hf_gemma3.export_decoder(params, cfg, str(tmp_path))
  hf = _hf_model(transformers.Gemma3ForCausalLM, str(tmp_path))
  tokens, lengths = _prompts()
  ours = decoding.generate(config=cfg, params=params, prompt_tokens=tokens, prompt_lengths=lengths,
                           max_decode_length=NEW)
  for b in range(2):
    want = _hf_generate(hf, tokens[b, :lengths[b]], do_sample=False, num_beams=1, eos_token_id=1)
    assert _trim(ours.tokens[b][:ours.lengths[b]]) == _trim(want)
  assert all(len(set(row)) >= 3 for row in ours.tokens.tolist())  # not one token repeated


def test_t5gemma2_greedy_equals_transformers_generate(tmp_path):
  eoi = 40  # the end-of-image token has its own input embedding; the first prompt contains it
  cfg = EncoderDecoderConfig(encoder=_gemma3_config(bidirectional_window='split', eoi_token_id=eoi),
                             decoder=_gemma3_config(eoi_token_id=eoi), merged_attention=True)
  params = _randomise_mostly_layers(TiedEncoderDecoder(cfg).init(
      jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 3), jnp.int32))['params'],
                                    5, 0.01, 0.8)
  params['encoder']['embedder']['embedding'][0] = 0.0  # pad id 0 never wins the argmax
  hf_t5gemma2.export_encoder_decoder(params, cfg, str(tmp_path))
  hf = _hf_model(transformers.T5Gemma2ForConditionalGeneration, str(tmp_path))
  tokens, lengths = _prompts()
  tokens[0, 2] = eoi
  ours = decoding.generate(config=cfg, params=params, prompt_tokens=tokens, max_decode_length=NEW)
  for b in range(2):
    want = _hf_generate(hf, tokens[b, :lengths[b]], do_sample=False, num_beams=1, eos_token_id=1,
                        decoder_start_token_id=0)
    assert _trim(ours.tokens[b][:ours.lengths[b]]) == _trim(want)
  assert all(len(set(row)) >= 3 for row in ours.tokens.tolist())  # not one token repeated


def test_beam_search_equals_transformers_without_early_ends(exported_gemma2):
  cfg, params, path = exported_gemma2
  hf = _hf_model(transformers.Gemma2ForCausalLM, path)
  hf.generation_config.eos_token_id = None
  tokens, lengths = _prompts()
  ours = decoding.generate(config=cfg, params=params, prompt_tokens=tokens, prompt_lengths=lengths,
                           max_decode_length=NEW, method='beam', num_beams=4, length_penalty=0.6,
                           eos_id=-1)
  greedy = decoding.generate(config=cfg, params=params, prompt_tokens=tokens,
                             prompt_lengths=lengths, max_decode_length=NEW, eos_id=-1)
  for b in range(2):
    want = _hf_generate(hf, tokens[b, :lengths[b]], do_sample=False, num_beams=4,
                        length_penalty=0.6, early_stopping=False)
    assert list(ours.tokens[b]) == list(want)
  # Beam search found sequences at least as likely as greedy's here.
  assert (ours.scores >= greedy.scores - 1e-4).all()


def test_sampling_is_seeded_and_matches_softmax_over_temperature():
  cfg = _config(vocab_size=16)
  params = _decoder_params(cfg, seed=2)
  n = 3000
  prompt = np.tile(np.array([[5, 9, 3]], np.int32), (n, 1))
  kw = dict(config=cfg, params=params, prompt_tokens=prompt, max_decode_length=1, method='sample')
  temperature = 0.7
  a = decoding.generate(seed=7, temperature=temperature, **kw)
  b = decoding.generate(seed=7, temperature=temperature, **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  c = decoding.generate(seed=8, temperature=temperature, **kw)
  assert (a.tokens != c.tokens).any()
  logits = np.asarray(Decoder(cfg).apply({'params': params}, prompt[:1]))[0, -1]
  probs = np.asarray(jax.nn.softmax(logits / temperature), np.float64)
  probs /= probs.sum()
  counts = np.bincount(a.tokens[:, 0], minlength=16)
  keep = probs * n >= 5  # chi-square needs expected counts >= 5: pool the rare tokens
  observed = np.append(counts[keep], counts[~keep].sum())
  expected = np.append(probs[keep] * n, probs[~keep].sum() * n)
  if expected[-1] == 0:
    observed, expected = observed[:-1], expected[:-1]
  assert stats.chisquare(observed, expected).pvalue > 1e-3
  # top-k / top-p never leave their sets.
  order = np.argsort(-logits)
  top3 = decoding.generate(seed=1, top_k=3, **kw).tokens[:, 0]
  assert set(top3) <= set(order[:3]) and len(set(top3)) == 3
  p_sorted = np.asarray(jax.nn.softmax(logits))[order]
  nucleus = set(order[:int(np.searchsorted(np.cumsum(p_sorted), 0.5) + 1)])
  top_p = decoding.generate(seed=1, top_p=0.5, **kw).tokens[:, 0]
  assert set(top_p) <= nucleus


def test_bad_decode_parameters_are_named():
  for kw, word in [(dict(top_p=0.0), 'top_p'), (dict(top_p=1.5), 'top_p'),
                   (dict(num_beams=0), 'num_beams'), (dict(temperature=0.0), 'temperature'),
                   (dict(method='nucleus'), 'method'), (dict(top_k=0), 'top_k')]:
    args = dict(method='sample')
    args.update(kw)
    with pytest.raises(ValueError, match=word):
      sampling.check_params(**args)
