"""HF Gemma 2 import/export and fp32 logit parity with transformers.Gemma2ForCausalLM (eager)."""
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from trainer.checkpoint import hf_gemma2  # pylint: disable=g-import-not-at-top
from trainer.model.transformer import Decoder  # pylint: disable=g-import-not-at-top

SEQ = 12
TOL = 1e-4


def _hf_config(**kwargs):
  # head_dim (16) != hidden/heads (12), query_pre_attn_scalar (20) != head_dim, GQA (4 q / 2 kv),
  # window 4 < sequence 12, soft-caps small enough to bind, non-default theta and eps.
  fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                query_pre_attn_scalar=20, sliding_window=4, attn_logit_softcapping=3.0,
                final_logit_softcapping=4.0, rms_norm_eps=1e-5,
                rope_parameters={'rope_type': 'default', 'rope_theta': 500.0},
                attn_implementation='eager')
  fields.update(kwargs)
  return transformers.Gemma2Config(**fields)


def _random_hf_model(seed=0, **kwargs):
  torch.manual_seed(seed)
  model = transformers.Gemma2ForCausalLM(_hf_config(**kwargs)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      # Norm weights are zero at init; randomise everything so every tensor matters.
      p.normal_(0.0, 0.3 if 'norm' in name else 0.15)
  return model


def _hf_logits(model, tokens, **kwargs):
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens)), **kwargs).logits.float().numpy()


def _tokens(batch=2, length=SEQ, seed=1):
  return np.random.RandomState(seed).randint(1, 160, size=(batch, length)).astype(np.int32)


@pytest.fixture(scope='module')
def hf_checkpoints(tmp_path_factory):
  model = _random_hf_model()
  single = tmp_path_factory.mktemp('single')
  sharded = tmp_path_factory.mktemp('sharded')
  model.save_pretrained(single)
  model.save_pretrained(sharded, max_shard_size='40KB')
  return model, str(single), str(sharded)


def test_config_read_from_file(hf_checkpoints):
  _, single, _ = hf_checkpoints
  config, _ = hf_gemma2.load_decoder(single)
  assert (config.vocab_size, config.embed_dim, config.num_layers, config.num_heads,
          config.num_kv_heads, config.head_dim, config.mlp_dim) == (160, 48, 3, 4, 2, 16, 96)
  assert config.query_pre_attn_scalar == 20
  assert (config.attn_logits_soft_cap, config.final_logit_soft_cap) == (3.0, 4.0)
  assert config.sliding_window == 4 and config.rope_theta == 500.0 and config.rms_norm_eps == 1e-5
  assert config.resolved_layer_types == ('sliding', 'global', 'sliding')


@pytest.mark.parametrize('which', ['single', 'sharded'])
def test_logits_match_transformers(hf_checkpoints, which):
  model, single, sharded = hf_checkpoints
  path = single if which == 'single' else sharded
  if which == 'sharded':
    assert os.path.exists(os.path.join(path, 'model.safetensors.index.json'))
    assert len([f for f in os.listdir(path) if f.endswith('.safetensors')]) > 1
  config, params = hf_gemma2.load_decoder(path)
  tokens = _tokens()
  ours = np.asarray(Decoder(config).apply({'params': params}, jnp.asarray(tokens)))
  theirs = _hf_logits(model, tokens)
  # The soft-cap binds: raw logits exceed the cap somewhere, so capped values near +-4 appear.
  assert np.max(np.abs(theirs)) > 3.0
  assert np.max(np.abs(ours - theirs)) <= TOL


def test_packed_segments_match_separate_runs(hf_checkpoints):
  model, single, _ = hf_checkpoints
  config, params = hf_gemma2.load_decoder(single)
  first, second = _tokens(1, 7, seed=2)[0], _tokens(1, 8, seed=3)[0]
  packed = np.zeros((1, 16), np.int32)
  packed[0, :7], packed[0, 7:15] = first, second
  segment_ids = np.array([[1] * 7 + [2] * 8 + [0]], np.int32)
  positions = np.array([list(range(7)) + list(range(8)) + [0]], np.int32)
  decoder = Decoder(config)
  logits = np.asarray(decoder.apply({'params': params}, jnp.asarray(packed),
                                    segment_ids=jnp.asarray(segment_ids),
                                    positions=jnp.asarray(positions)))
  for tokens, span in ((first, slice(0, 7)), (second, slice(7, 15))):
    alone = np.asarray(decoder.apply({'params': params}, jnp.asarray(tokens[None])))
    np.testing.assert_allclose(logits[0, span], alone[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits[0, span], _hf_logits(model, tokens[None])[0], atol=TOL,
                               rtol=0)


def test_export_loads_in_transformers_and_round_trips(hf_checkpoints, tmp_path):
  _, single, _ = hf_checkpoints
  config, params = hf_gemma2.load_decoder(single)
  tokens = _tokens()
  ours = np.asarray(Decoder(config).apply({'params': params}, jnp.asarray(tokens)))
  for name, shard in (('one', None), ('many', '30KB')):
    out = str(tmp_path / name)
    hf_gemma2.export_decoder(params, config, out, max_shard_size=shard)
    assert os.path.exists(os.path.join(out, 'model.safetensors.index.json')) == (shard is not None)
    reloaded = transformers.Gemma2ForCausalLM.from_pretrained(out, attn_implementation='eager')
    assert np.max(np.abs(_hf_logits(reloaded.eval(), tokens) - ours)) <= TOL
    config2, params2 = hf_gemma2.load_decoder(out)
    assert config2 == config
    flat = hf_gemma2.params_to_hf(params, config)
    flat2 = hf_gemma2.params_to_hf(params2, config)
    assert sorted(flat) == sorted(flat2)
    for key in flat:
      np.testing.assert_array_equal(flat[key], flat2[key])


def test_export_bfloat16_and_boxed_params(tmp_path):
  from trainer.model.config import TransformerConfig  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  config = TransformerConfig(vocab_size=64, embed_dim=32, num_layers=2, num_heads=2,
                             num_kv_heads=1, head_dim=16, mlp_dim=64, query_pre_attn_scalar=16,
                             sliding_window=None)
  boxed = Decoder(config).init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))['params']
  hf_gemma2.export_decoder(boxed, config, str(tmp_path), dtype='bfloat16')
  hf_config = json.load(open(tmp_path / 'config.json'))
  assert hf_config['layer_types'] == ['full_attention', 'full_attention']
  config2, params = hf_gemma2.load_decoder(str(tmp_path), param_dtype='bfloat16')
  assert config2.param_dtype == 'bfloat16' and config2.layer_window(0) is None
  assert params['layer_1']['mlp']['down_proj']['kernel'].dtype == jnp.bfloat16
  reloaded = transformers.Gemma2ForCausalLM.from_pretrained(str(tmp_path))
  assert reloaded.model.embed_tokens.weight.dtype == torch.bfloat16
  np.testing.assert_array_equal(
      reloaded.model.embed_tokens.weight.detach().float().numpy(),
      np.asarray(params['embedder']['embedding']).astype(np.float32))


def _edit_config(src, dst, **changes):
  shutil.copytree(src, dst)
  path = os.path.join(dst, 'config.json')
  hf = json.load(open(path))
  for key, value in changes.items():
    if value is None:
      hf.pop(key, None)
    else:
      hf[key] = value
  json.dump(hf, open(path, 'w'))
  return dst


@pytest.mark.parametrize('changes,field', [
    ({'rope_parameters': {'rope_type': 'linear', 'factor': 2.0, 'rope_theta': 1e4}},
     'rope_parameters.rope_type'),
    ({'rope_parameters': None, 'rope_scaling': {'type': 'dynamic', 'factor': 2.0}}, 'rope_scaling'),
    ({'hidden_activation': 'gelu'}, 'hidden_activation'),
    ({'model_type': 'llama'}, 'model_type'),
    ({'layer_types': ['sliding_attention', 'chunked_attention', 'full_attention']}, 'layer_types'),
    ({'tie_word_embeddings': False}, 'tie_word_embeddings'),
    ({'query_pre_attn_scalar': None}, 'query_pre_attn_scalar'),
])
def test_unsupported_config_names_the_field(hf_checkpoints, tmp_path, changes, field):
  _, single, _ = hf_checkpoints
  path = _edit_config(single, str(tmp_path / 'edited'), **changes)
  with pytest.raises(hf_gemma2.HFConfigError, match=field.replace('.', r'\.')):
    hf_gemma2.load_decoder(path)


def test_missing_or_misshaped_tensor_names_the_tensor(hf_checkpoints, tmp_path):
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  _, single, _ = hf_checkpoints
  tensors = load_file(os.path.join(single, 'model.safetensors'))
  missing = str(tmp_path / 'missing')
  shutil.copytree(single, missing)
  name = 'model.layers.2.mlp.up_proj.weight'
  save_file({k: v for k, v in tensors.items() if k != name},
            os.path.join(missing, 'model.safetensors'), metadata={'format': 'pt'})
  with pytest.raises(hf_gemma2.HFCheckpointError, match=name):
    hf_gemma2.load_decoder(missing)
  wrong = str(tmp_path / 'wrong')
  shutil.copytree(single, wrong)
  name = 'model.layers.1.self_attn.k_proj.weight'
  save_file({k: (v[:16] if k == name else v) for k, v in tensors.items()},
            os.path.join(wrong, 'model.safetensors'), metadata={'format': 'pt'})
  with pytest.raises(hf_gemma2.HFCheckpointError, match=name):
    hf_gemma2.load_decoder(wrong)


def test_encoder_decoder_module_computes_what_t5gemma_computes():
  """EncoderDecoder vs transformers' T5Gemma (eager, fp32) on an unbalanced pair (encoder 64 wide,
  decoder 48) with encoder padding and sliding window 3 < lengths (T5Gemma's bidirectional window is
  inclusive: |i - j| <= 3). Layers map with the Gemma 2 per-layer map (T5Gemma norm names)."""
  from transformers.models import t5gemma  # pylint: disable=g-import-not-at-top
  from trainer.model.config import EncoderDecoderConfig  # pylint: disable=g-import-not-at-top
  from trainer.model.config import TransformerConfig  # pylint: disable=g-import-not-at-top
  from trainer.model.transformer import EncoderDecoder  # pylint: disable=g-import-not-at-top
  common = dict(vocab_size=160, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                query_pre_attn_scalar=20, sliding_window=3, attn_logit_softcapping=3.0,
                final_logit_softcapping=4.0, rms_norm_eps=1e-5, num_hidden_layers=3,
                rope_parameters={'rope_type': 'default', 'rope_theta': 500.0})
  hf_config = t5gemma.T5GemmaConfig(
      encoder=t5gemma.T5GemmaModuleConfig(hidden_size=64, intermediate_size=96, **common),
      decoder=t5gemma.T5GemmaModuleConfig(hidden_size=48, intermediate_size=80, **common),
      attn_implementation='eager', vocab_size=160)
  torch.manual_seed(0)
  model = t5gemma.T5GemmaForConditionalGeneration(hf_config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.normal_(0.0, 0.3 if 'norm' in name else 0.15)
  tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}

  def get(name, shape):
    assert tensors[name].shape == tuple(shape), name
    return tensors[name]

  def ours(d, f):
    return TransformerConfig(vocab_size=160, embed_dim=d, num_layers=3, num_heads=4,
                             num_kv_heads=2, head_dim=16, mlp_dim=f, query_pre_attn_scalar=20,
                             attn_logits_soft_cap=3.0, final_logit_soft_cap=4.0, sliding_window=3,
                             rope_theta=500.0, rms_norm_eps=1e-5)

  norms = (('pre_self_attn_layernorm', 'pre_attention_norm'),
           ('post_self_attn_layernorm', 'post_attention_norm'),
           ('pre_feedforward_layernorm', 'pre_feedforward_norm'),
           ('post_feedforward_layernorm', 'post_feedforward_norm'))
  config = EncoderDecoderConfig(encoder=ours(64, 96), decoder=ours(48, 80))
  params = {}
  for side in ('encoder', 'decoder'):
    cfg = getattr(config, side)
    prefix = f'model.{side}.'
    tree = {'embedder': {'embedding': tensors[prefix + 'embed_tokens.weight']},
            'final_norm': {'scale': tensors[prefix + 'norm.weight']}}
    for i in range(3):
      layer = hf_gemma2.layer_from_hf(get, f'{prefix}layers.{i}.', cfg, norm_names=norms)
      if side == 'decoder':
        cross = f'{prefix}layers.{i}.cross_attn.'
        layer['cross_attn'] = {
            'q_proj': {'kernel': tensors[cross + 'q_proj.weight'].T.reshape(48, 4, 16)},
            'k_proj': {'kernel': tensors[cross + 'k_proj.weight'].T.reshape(64, 2, 16)},
            'v_proj': {'kernel': tensors[cross + 'v_proj.weight'].T.reshape(64, 2, 16)},
            'o_proj': {'kernel': tensors[cross + 'o_proj.weight'].T.reshape(4, 16, 48)}}
        for hf_name, name in (('pre_cross_attn_layernorm', 'pre_cross_attn_norm'),
                              ('post_cross_attn_layernorm', 'post_cross_attn_norm')):
          layer[name] = {'scale': tensors[f'{prefix}layers.{i}.{hf_name}.weight']}
      tree[f'layer_{i}'] = layer
    params[side] = tree
  rs = np.random.RandomState(0)
  enc_tokens = rs.randint(1, 160, size=(2, 10))
  enc_tokens[1, 7:] = 0  # padding
  dec_tokens = rs.randint(1, 160, size=(2, 7))
  with torch.no_grad():
    theirs = model(input_ids=torch.as_tensor(enc_tokens),
                   attention_mask=torch.as_tensor((enc_tokens != 0).astype(np.int64)),
                   decoder_input_ids=torch.as_tensor(dec_tokens)).logits.numpy()
  logits = EncoderDecoder(config).apply({'params': params}, jnp.asarray(enc_tokens),
                                        jnp.asarray(dec_tokens))
  assert np.max(np.abs(np.asarray(logits) - theirs)) <= TOL
