"""HF T5Gemma 2 import/export and fp32 logit parity with T5Gemma2ForConditionalGeneration (text)."""
import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from trainer.checkpoint import hf_t5gemma2  # pylint: disable=g-import-not-at-top
from trainer.checkpoint.hf_gemma2 import HFConfigError  # pylint: disable=g-import-not-at-top
from trainer.model import scan_layout  # pylint: disable=g-import-not-at-top
from trainer.model.config import EncoderDecoderConfig  # pylint: disable=g-import-not-at-top
from trainer.model.tied_encoder_decoder import TiedEncoderDecoder  # pylint: disable=g-import-not-at-top

TOL = 1e-4
VOCAB = 96
EOI = 90
LAYER_TYPES = ['sliding_attention'] * 2 + ['full_attention']  # 2 local : 1 global


def _text(**kwargs):
  # hidden 48 / 4 heads = 12 != head_dim 16; query_pre_attn_scalar 20; GQA 4:2; window 4 (encoder
  # window 5: odd, so the split is asymmetric) < sequences of 10-11; two RoPE bases.
  fields = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=6,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                query_pre_attn_scalar=20, sliding_window=4, rms_norm_eps=1e-5,
                layer_types=LAYER_TYPES * 2,
                rope_parameters={'full_attention': {'rope_type': 'default', 'rope_theta': 3000.0},
                                 'sliding_attention': {'rope_type': 'default',
                                                       'rope_theta': 40.0}})
  fields.update(kwargs)
  return fields


def random_hf_model(seed=0, final_logit_softcapping=None):
  cfg = transformers.T5Gemma2Config(
      encoder=dict(text_config=_text(sliding_window=5),
                   vision_config=hf_t5gemma2.DEFAULT_VISION_CONFIG, mm_tokens_per_image=4,
                   eoi_token_index=EOI, boi_token_index=EOI + 1, image_token_index=EOI + 2),
      decoder=_text(final_logit_softcapping=final_logit_softcapping),
      eoi_token_index=EOI, image_token_index=EOI + 2, attn_implementation='eager')
  torch.manual_seed(seed)
  model = transformers.T5Gemma2ForConditionalGeneration(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.normal_(0.0, 0.3 if 'norm' in name else 0.15)
  return model


def hf_logits(model, enc, dec, enc_mask=None):
  with torch.no_grad():
    kwargs = {}
    if enc_mask is not None:
      kwargs['attention_mask'] = torch.as_tensor(np.asarray(enc_mask))
    return model(input_ids=torch.as_tensor(np.asarray(enc)),
                 decoder_input_ids=torch.as_tensor(np.asarray(dec)), **kwargs).logits.numpy()


def _tokens(batch, length, seed):
  return np.random.RandomState(seed).randint(3, EOI, size=(batch, length)).astype(np.int32)


@pytest.fixture(scope='module')
def hf_checkpoint(tmp_path_factory):
  model = random_hf_model()
  path = tmp_path_factory.mktemp('t5gemma2')
  model.save_pretrained(path)
  return model, str(path)


def test_config_read_from_file(hf_checkpoint):
  _, path = hf_checkpoint
  config, params = hf_t5gemma2.load_encoder_decoder(path)
  assert config.merged_attention
  assert config.encoder.bidirectional_window == 'split' and config.encoder.sliding_window == 5
  assert config.decoder.sliding_window == 4 and config.decoder.eoi_token_id == EOI
  assert (config.decoder.rope_theta, config.decoder.local_rope_theta) == (3000.0, 40.0)
  assert 'embedder' not in params['decoder'] and 'cross_attn' not in params['decoder']['layer_0']
  assert 'eoi_embedding' in params['encoder']['embedder']


@pytest.mark.parametrize('scan', [False, True])
def test_logits_match_transformers(hf_checkpoint, scan):
  model, path = hf_checkpoint
  config, params = hf_t5gemma2.load_encoder_decoder(path, scan_layers=scan)
  assert scan_layout.is_scanned(params['decoder']) == scan
  enc, dec = _tokens(2, 11, 1), _tokens(2, 10, 2)
  enc[0, 3] = EOI  # the eoi embedding is used
  enc[1, 8:] = 0   # encoder padding
  ours = np.asarray(TiedEncoderDecoder(config).apply({'params': params}, jnp.asarray(enc),
                                                     jnp.asarray(dec)))
  theirs = hf_logits(model, enc, dec, enc_mask=(enc != 0).astype(np.int64))
  assert np.max(np.abs(ours - theirs)) <= TOL


def test_window_convention_and_merge_matter(hf_checkpoint):
  """Not vacuous: the symmetric (T5Gemma) encoder window without the decoder window moves the
  logits far beyond the tolerance (the conventions themselves: test_gemma3_family)."""
  model, path = hf_checkpoint
  config, params = hf_t5gemma2.load_encoder_decoder(path)
  enc, dec = _tokens(2, 11, 1), _tokens(2, 10, 2)
  theirs = hf_logits(model, enc, dec)
  for enc_change, dec_change in ((dict(bidirectional_window='symmetric'),
                                  dict(sliding_window=None)),):
    changed = EncoderDecoderConfig(encoder=dataclasses.replace(config.encoder, **enc_change),
                                   decoder=dataclasses.replace(config.decoder, **dec_change),
                                   merged_attention=True)
    ours = np.asarray(TiedEncoderDecoder(changed).apply({'params': params}, jnp.asarray(enc),
                                                        jnp.asarray(dec)))
    assert np.max(np.abs(ours - theirs)) > 1e-3, (enc_change, dec_change)


def test_packed_matches_separate_runs(hf_checkpoint):
  model, path = hf_checkpoint
  for scan in (False, True):
    config, params = hf_t5gemma2.load_encoder_decoder(path, scan_layers=scan)
    e1, e2, d1, d2 = _tokens(1, 6, 3)[0], _tokens(1, 7, 4)[0], _tokens(1, 5, 5)[0], _tokens(
        1, 6, 6)[0]
    enc = np.zeros((1, 14), np.int32)
    enc[0, :6], enc[0, 6:13] = e1, e2
    dec = np.zeros((1, 12), np.int32)
    dec[0, :5], dec[0, 5:11] = d1, d2
    enc_seg = np.array([[1] * 6 + [2] * 7 + [0]], np.int32)
    dec_seg = np.array([[1] * 5 + [2] * 6 + [0]], np.int32)
    enc_pos = np.array([list(range(6)) + list(range(7)) + [0]], np.int32)
    dec_pos = np.array([list(range(5)) + list(range(6)) + [0]], np.int32)
    logits = np.asarray(TiedEncoderDecoder(config).apply(
        {'params': params}, jnp.asarray(enc), jnp.asarray(dec),
        encoder_segment_ids=jnp.asarray(enc_seg), encoder_positions=jnp.asarray(enc_pos),
        decoder_segment_ids=jnp.asarray(dec_seg), decoder_positions=jnp.asarray(dec_pos)))
    for e, d, span in ((e1, d1, slice(0, 5)), (e2, d2, slice(5, 11))):
      np.testing.assert_allclose(logits[0, span], hf_logits(model, e[None], d[None])[0],
                                 atol=TOL, rtol=0)


def test_final_soft_cap_when_set(tmp_path):
  model = random_hf_model(seed=3, final_logit_softcapping=2.0)
  model.save_pretrained(tmp_path)
  config, params = hf_t5gemma2.load_encoder_decoder(str(tmp_path))
  assert config.decoder.final_logit_soft_cap == 2.0
  enc, dec = _tokens(1, 9, 7), _tokens(1, 8, 8)
  ours = np.asarray(TiedEncoderDecoder(config).apply({'params': params}, jnp.asarray(enc),
                                                     jnp.asarray(dec)))
  theirs = hf_logits(model, enc, dec)
  assert np.max(np.abs(theirs)) > 1.5 and np.max(np.abs(ours - theirs)) <= TOL


def test_export_loads_in_transformers_and_round_trips_exactly(hf_checkpoint, tmp_path):
  model, path = hf_checkpoint
  config, params = hf_t5gemma2.load_encoder_decoder(path)
  out = str(tmp_path / 'out')
  hf_t5gemma2.export_encoder_decoder(params, config, out)
  reloaded = transformers.T5Gemma2ForConditionalGeneration.from_pretrained(
      out, attn_implementation='eager').eval()
  enc, dec = _tokens(2, 11, 1), _tokens(2, 10, 2)
  np.testing.assert_allclose(hf_logits(reloaded, enc, dec), hf_logits(model, enc, dec),
                             atol=1e-6, rtol=0)
  config2, params2 = hf_t5gemma2.load_encoder_decoder(out)
  assert config2 == config
  original = {k.replace('model.encoder.text_model.', 'model.encoder.'): v
              for k, v in model.state_dict().items()
              if not k.startswith(('model.encoder.vision_tower', 'model.encoder.multi_modal'))}
  flat = hf_t5gemma2.params_to_hf(params2, config)
  tied = {'model.decoder.embed_tokens.weight', 'model.decoder.embed_tokens.eoi_embedding',
          'lm_head.out_proj.weight'}
  assert sorted(flat) == sorted(set(original) - tied)
  for key, value in flat.items():
    np.testing.assert_array_equal(value, original[key].numpy(), err_msg=key)


def test_unbalanced_or_wrong_config_refused(hf_checkpoint):
  _, path = hf_checkpoint
  with open(os.path.join(path, 'config.json')) as f:
    hf = json.load(f)
  with pytest.raises(HFConfigError, match='t5gemma2'):
    hf_t5gemma2.config_from_hf(dict(hf, model_type='t5gemma'))
  bad = json.loads(json.dumps(hf))
  bad['decoder']['hidden_size'] = 64
  with pytest.raises(ValueError, match='embed_dim'):
    hf_t5gemma2.config_from_hf(bad)


def test_greedy_decoding_matches_transformers_generate(hf_checkpoint, tmp_path):
  """The trainer's greedy decoder (`trainer.evaluation.scoring`, over `trainer.model.kv_cache`'s
  merged-attention cache) on the imported model gives the tokens of HF `generate` (which runs
  T5Gemma 2's own merged-attention KV cache)."""
  from trainer.evaluation import scoring  # pylint: disable=g-import-not-at-top
  from trainer.training import models  # pylint: disable=g-import-not-at-top
  del hf_checkpoint
  model = random_hf_model(seed=5)
  with torch.no_grad():  # token 0 (padding) never wins the argmax: its tied row scores 0
    model.get_input_embeddings().weight[0] = 0.0
  model.save_pretrained(tmp_path)
  config, params = hf_t5gemma2.load_encoder_decoder(str(tmp_path))
  enc = _tokens(2, 9, 11)
  enc[1, 7:] = 0
  ours = scoring.greedy_decode(models.EncoderDecoderModel(config=config), params,
                               {'encoder_input_tokens': enc}, max_decode_length=6)
  with torch.no_grad():
    theirs = model.generate(input_ids=torch.as_tensor(enc),
                            attention_mask=torch.as_tensor((enc != 0).astype(np.int64)),
                            decoder_start_token_id=0, eos_token_id=1, pad_token_id=0,
                            max_new_tokens=6, do_sample=False).numpy()[:, 1:]
  for row_ours, row_theirs in zip(ours, theirs):
    row_theirs = row_theirs.tolist()
    if 1 in row_theirs:
      row_theirs = row_theirs[:row_theirs.index(1) + 1]
    assert row_ours == row_theirs and len(row_ours) >= 2
