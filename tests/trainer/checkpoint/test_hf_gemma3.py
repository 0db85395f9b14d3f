"""HF Gemma 3 (text) import/export and fp32 logit parity with transformers.Gemma3ForCausalLM."""
import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from trainer.checkpoint import hf_gemma3  # pylint: disable=g-import-not-at-top
from trainer.checkpoint.hf_gemma2 import HFConfigError  # pylint: disable=g-import-not-at-top
from trainer.model import scan_layout  # pylint: disable=g-import-not-at-top
from trainer.model.transformer import Decoder  # pylint: disable=g-import-not-at-top

SEQ = 12
TOL = 1e-4
# 3 local : 1 global (not 1:1), 8 layers so a scan period of 4 divides them.
LAYER_TYPES = ['sliding_attention'] * 3 + ['full_attention']


def _hf_config(**kwargs):
  # head_dim (16) != hidden/heads (12), query_pre_attn_scalar (20) != head_dim, GQA (4 q / 2 kv),
  # window 4 < sequence 12, two RoPE bases (global 5000 with linear scaling 2, local 50).
  fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=8,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                query_pre_attn_scalar=20, sliding_window=4, rms_norm_eps=1e-5,
                layer_types=LAYER_TYPES * 2,
                rope_parameters={
                    'full_attention': {'rope_type': 'linear', 'factor': 2.0, 'rope_theta': 5000.0},
                    'sliding_attention': {'rope_type': 'default', 'rope_theta': 50.0}},
                attn_implementation='eager')
  fields.update(kwargs)
  return transformers.Gemma3TextConfig(**fields)


def random_hf_model(seed=0, **kwargs):
  torch.manual_seed(seed)
  model = transformers.Gemma3ForCausalLM(_hf_config(**kwargs)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.normal_(0.0, 0.3 if 'norm' in name else 0.15)
  return model


def hf_logits(model, tokens, **kwargs):
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens)), **kwargs).logits.float().numpy()


def _tokens(batch=2, length=SEQ, seed=1):
  return np.random.RandomState(seed).randint(1, 160, size=(batch, length)).astype(np.int32)


@pytest.fixture(scope='module')
def hf_checkpoint(tmp_path_factory):
  model = random_hf_model()
  path = tmp_path_factory.mktemp('gemma3')
  model.save_pretrained(path)
  return model, str(path)


def test_config_read_from_file(hf_checkpoint):
  _, path = hf_checkpoint
  config, _ = hf_gemma3.load_decoder(path)
  assert (config.num_layers, config.head_dim, config.query_pre_attn_scalar) == (8, 16, 20)
  assert config.use_qk_norm and config.attn_logits_soft_cap is None
  assert config.final_logit_soft_cap is None
  assert (config.rope_theta, config.local_rope_theta, config.rope_scaling_factor) == (
      5000.0, 50.0, 2.0)
  assert config.resolved_layer_types == ('sliding',) * 3 + ('global',) + ('sliding',) * 3 + (
      'global',)
  assert config.scan_period == 4


@pytest.mark.parametrize('scan', [False, True])
def test_logits_match_transformers(hf_checkpoint, scan):
  model, path = hf_checkpoint
  config, params = hf_gemma3.load_decoder(path, scan_layers=scan)
  assert scan_layout.is_scanned(params) == scan
  tokens = _tokens()
  ours = np.asarray(Decoder(config).apply({'params': params}, jnp.asarray(tokens)))
  theirs = hf_logits(model, tokens)
  assert np.max(np.abs(ours - theirs)) <= TOL


def test_every_feature_matters(hf_checkpoint):
  """The parity above is not vacuous: dropping the local RoPE base and the window, or the global
  RoPE scaling, changes the logits by far more than the tolerance."""
  model, path = hf_checkpoint
  config, params = hf_gemma3.load_decoder(path)
  tokens = _tokens()
  theirs = hf_logits(model, tokens)
  for change in (dict(local_rope_theta=None, sliding_window=None), dict(rope_scaling_factor=None)):
    changed = dataclasses.replace(config, **change)
    ours = np.asarray(Decoder(changed).apply({'params': params}, jnp.asarray(tokens)))
    assert np.max(np.abs(ours - theirs)) > 1e-2, change


def test_packed_segments_match_separate_runs(hf_checkpoint):
  model, path = hf_checkpoint
  for scan in (False, True):
    config, params = hf_gemma3.load_decoder(path, scan_layers=scan)
    first, second = _tokens(1, 7, seed=2)[0], _tokens(1, 8, seed=3)[0]
    packed = np.zeros((1, 16), np.int32)
    packed[0, :7], packed[0, 7:15] = first, second
    segment_ids = np.array([[1] * 7 + [2] * 8 + [0]], np.int32)
    positions = np.array([list(range(7)) + list(range(8)) + [0]], np.int32)
    logits = np.asarray(Decoder(config).apply(
        {'params': params}, jnp.asarray(packed), segment_ids=jnp.asarray(segment_ids),
        positions=jnp.asarray(positions)))
    for tokens, span in ((first, slice(0, 7)), (second, slice(7, 15))):
      np.testing.assert_allclose(logits[0, span], hf_logits(model, tokens[None])[0], atol=TOL,
                                 rtol=0)


def test_export_loads_in_transformers_and_round_trips_exactly(hf_checkpoint, tmp_path):
  model, path = hf_checkpoint
  config, params = hf_gemma3.load_decoder(path)
  tokens = _tokens()
  out = str(tmp_path / 'out')
  hf_gemma3.export_decoder(params, config, out)
  reloaded = transformers.Gemma3ForCausalLM.from_pretrained(out, attn_implementation='eager')
  np.testing.assert_allclose(hf_logits(reloaded.eval(), tokens), hf_logits(model, tokens),
                             atol=1e-6, rtol=0)
  config2, params2 = hf_gemma3.load_decoder(out)
  assert config2 == config
  original = dict(model.state_dict())
  flat2 = hf_gemma3.params_to_hf(params2, config)
  assert sorted(flat2) == sorted(k for k in original if k != 'lm_head.weight')
  for key, value in flat2.items():
    np.testing.assert_array_equal(value, original[key].numpy(), err_msg=key)


def test_multimodal_or_unsupported_config_names_the_field(hf_checkpoint, tmp_path):
  _, path = hf_checkpoint
  with open(os.path.join(path, 'config.json')) as f:
    hf = json.load(f)
  with pytest.raises(HFConfigError, match='Gemma3ForConditionalGeneration'):
    hf_gemma3.config_from_hf(dict(hf, model_type='gemma3'))
  bad = dict(hf, rope_parameters={'full_attention': {'rope_type': 'yarn', 'factor': 2.0},
                                  'sliding_attention': {'rope_type': 'default'}})
  with pytest.raises(HFConfigError, match='full_attention.rope_type'):
    hf_gemma3.config_from_hf(bad)


def test_scanned_import_with_an_incomplete_last_period(tmp_path):
  """5 local : 1 global over 8 layers (the released 1B / 4B have 26 / 34): the scanned layout holds
  one 6-layer period stacked and layers 6, 7 unrolled beside it; logits match transformers and
  export from it writes exactly the imported tensors."""
  model = random_hf_model(seed=4, layer_types=(['sliding_attention'] * 5 + ['full_attention']
                                               + ['sliding_attention'] * 2))
  path = str(tmp_path / 'hf')
  model.save_pretrained(path)
  config, params = hf_gemma3.load_decoder(path, scan_layers=True)
  assert (config.scan_period, config.num_scanned_layers) == (6, 6)
  assert sorted(params) == ['embedder', 'final_norm', 'layer_6', 'layer_7', 'layers']
  tokens = _tokens()
  ours = np.asarray(Decoder(config).apply({'params': params}, jnp.asarray(tokens)))
  assert np.max(np.abs(ours - hf_logits(model, tokens))) <= TOL
  original = dict(model.state_dict())
  for key, value in hf_gemma3.params_to_hf(params, config).items():
    np.testing.assert_array_equal(value, original[key].numpy(), err_msg=key)
