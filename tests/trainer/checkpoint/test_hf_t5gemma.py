"""HF T5Gemma interop (trainer/hf_t5gemma.py, trainer/export_hf.py): logits parity with
`transformers.T5GemmaForConditionalGeneration`, exact round trips, clear errors."""
import dataclasses
import json
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.checkpoint import hf_t5gemma
from trainer.model import config_io
from trainer.model.config import EncoderDecoderConfig, TransformerConfig
from trainer.model.transformer import EncoderDecoder

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')


def _module(**overrides):
  base = dict(vocab_size=97, embed_dim=32, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=12,
              mlp_dim=48, query_pre_attn_scalar=10.0, sliding_window=4, attn_logits_soft_cap=2.0,
              final_logit_soft_cap=3.0, rope_theta=500.0)
  base.update(overrides)
  return TransformerConfig(**base)


BALANCED = EncoderDecoderConfig(encoder=_module(), decoder=_module(num_layers=2))
# Unbalanced widths: 40-wide encoder, 32-wide decoder (cross-attention K/V read 40 features).
UNBALANCED = EncoderDecoderConfig(encoder=_module(embed_dim=40, mlp_dim=64, num_heads=2, num_kv_heads=1),
                                  decoder=_module(num_layers=2, layer_types=('global', 'sliding')))


def _inputs():
  rng = np.random.default_rng(0)
  enc = rng.integers(3, 97, size=(2, 12))
  enc[1, 9:] = 0  # padded second row
  dec = rng.integers(3, 97, size=(2, 10))
  dec[:, 0] = 0  # seqio decoder inputs start with id 0
  return enc.astype(np.int32), dec.astype(np.int32)


def _random_params(config, seed=0):
  params = EncoderDecoder(config).init(jax.random.PRNGKey(seed), jnp.ones((1, 4), jnp.int32),
                                       jnp.ones((1, 3), jnp.int32))['params']
  params = jax.tree_util.tree_map(np.asarray, hf_t5gemma._unbox(params))
  # Norm scales initialise to 0: randomise them so a swapped norm would show in the logits.
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: (rng.normal(size=x.shape) * 0.3).astype(np.float32) if 'scale' in str(p) else x, params)


def _our_logits(config, params, enc, dec):
  return np.asarray(EncoderDecoder(config).apply({'params': params}, jnp.asarray(enc), jnp.asarray(dec)))


def _hf_logits(path, enc, dec):
  model = transformers.T5GemmaForConditionalGeneration.from_pretrained(
      path, attn_implementation='eager', dtype=torch.float32)
  model.eval()
  with torch.no_grad():
    out = model(input_ids=torch.tensor(enc, dtype=torch.long),
                attention_mask=torch.tensor(enc != 0, dtype=torch.long),
                decoder_input_ids=torch.tensor(dec, dtype=torch.long),
                decoder_attention_mask=torch.ones(dec.shape, dtype=torch.long))
  return out.logits.numpy()


@pytest.mark.parametrize('config,shard', [(BALANCED, None), (UNBALANCED, '60KB')], ids=['balanced', 'unbalanced_sharded'])
def test_export_loads_in_transformers_with_logits_parity(config, shard, tmp_path):
  params = _random_params(config)
  written = hf_t5gemma.export_t5gemma(params, config, str(tmp_path), max_shard_size=shard)
  assert (len(written['weights']) > 1) == (shard is not None)
  if shard:  # our own reader takes the shards back exactly
    _, back = hf_t5gemma.import_t5gemma(str(tmp_path))
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)
  enc, dec = _inputs()
  ours = _our_logits(config, params, enc, dec)
  theirs = _hf_logits(str(tmp_path), enc, dec)
  assert ours.shape == theirs.shape == (2, 10, 97)
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  assert np.abs(ours).max() > 0.1  # not trivially zero


def _explicit(config):
  """The config with layer types spelled out (import always sets them explicitly)."""
  side = lambda c: dataclasses.replace(c, layer_types=c.resolved_layer_types)
  return EncoderDecoderConfig(encoder=side(config.encoder), decoder=side(config.decoder))


def _save_hf_random(config, path, seed=1):
  torch.manual_seed(seed)
  hf_config = transformers.T5GemmaConfig(**{k: v for k, v in hf_t5gemma.config_to_hf(config).items()
                                            if k not in ('architectures', 'model_type')})
  model = transformers.T5GemmaForConditionalGeneration(hf_config)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('layernorm.weight') or name.endswith('norm.weight'):
        p.normal_(0.0, 0.3)
  model.save_pretrained(path)
  return model


def test_import_from_transformers_parity_and_exact_round_trip(tmp_path):
  src, out = str(tmp_path / 'hf'), str(tmp_path / 'roundtrip')
  _save_hf_random(UNBALANCED, src)
  config, params = hf_t5gemma.import_t5gemma(src)
  assert _explicit(config) == _explicit(UNBALANCED)
  enc, dec = _inputs()
  np.testing.assert_allclose(_our_logits(config, params, enc, dec), _hf_logits(src, enc, dec), atol=1e-4, rtol=0)
  hf_t5gemma.export_t5gemma(params, config, out)
  from safetensors.numpy import load_file
  a, b = load_file(os.path.join(src, 'model.safetensors')), load_file(os.path.join(out, 'model.safetensors'))
  assert sorted(a) == sorted(b)
  for name in a:
    assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name


def test_sharded_checkpoint_and_bfloat16(tmp_path):
  src = str(tmp_path / 'hf')
  model = _save_hf_random(BALANCED, src)
  sharded = str(tmp_path / 'sharded')
  model.save_pretrained(sharded, max_shard_size='50KB')
  assert os.path.exists(os.path.join(sharded, 'model.safetensors.index.json'))
  _, p1 = hf_t5gemma.import_t5gemma(src)
  _, p2 = hf_t5gemma.import_t5gemma(sharded)
  jax.tree_util.tree_map(np.testing.assert_array_equal, p1, p2)
  config, p16 = hf_t5gemma.import_t5gemma(src, param_dtype='bfloat16')
  assert config.encoder.param_dtype == 'bfloat16'
  assert {str(x.dtype) for x in jax.tree_util.tree_leaves(p16)} == {'bfloat16'}
  out = str(tmp_path / 'bf16')
  hf_t5gemma.export_t5gemma(p16, config, out)
  config2, p16b = hf_t5gemma.import_t5gemma(out, param_dtype='bfloat16')
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(x.view(np.uint16), y.view(np.uint16)), p16, p16b)
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f)['dtype'] == 'bfloat16'


def _copy(src, dst):
  shutil.copytree(src, dst)
  return dst


def test_clear_errors_name_the_field_or_tensor(tmp_path):
  src = str(tmp_path / 'hf')
  hf_t5gemma.export_t5gemma(_random_params(BALANCED), BALANCED, src)

  with pytest.raises(hf_t5gemma.HFConversionError, match='does not exist'):
    hf_t5gemma.import_t5gemma(str(tmp_path / 'nope'))
  no_weights = _copy(src, str(tmp_path / 'no_weights'))
  os.remove(os.path.join(no_weights, 'model.safetensors'))
  with pytest.raises(hf_t5gemma.HFConversionError, match='no model.safetensors'):
    hf_t5gemma.import_t5gemma(no_weights)

  def edit_config(name, fn):
    path = _copy(src, str(tmp_path / name))
    with open(os.path.join(path, 'config.json')) as f:
      cfg = json.load(f)
    fn(cfg)
    with open(os.path.join(path, 'config.json'), 'w') as f:
      json.dump(cfg, f)
    return path

  cases = [
      ('act', lambda c: c['decoder'].update(hidden_activation='relu'), 'decoder.hidden_activation'),
      ('rope', lambda c: c['encoder'].update(rope_parameters={'rope_type': 'linear', 'factor': 2.0}),
       'encoder.rope_parameters.rope_type'),
      ('bias', lambda c: c['encoder'].update(attention_bias=True), 'encoder.attention_bias'),
      ('type', lambda c: c.update(model_type='t5gemma2'), 'model_type'),
      ('layers', lambda c: c['encoder'].update(layer_types=['chunked_attention'] * 3), 'encoder.layer_types'),
      ('heads', lambda c: c['decoder'].update(num_key_value_heads=3), 'decoder.*num_kv_heads'),
  ]
  for name, fn, pattern in cases:
    with pytest.raises(hf_t5gemma.HFConversionError, match=pattern):
      hf_t5gemma.import_t5gemma(edit_config(name, fn))
  # Wrong shape: config claims a wider MLP than the weights have.
  wide = edit_config('wide', lambda c: c['decoder'].update(intermediate_size=64))
  with pytest.raises(hf_t5gemma.HFConversionError, match=r'tensor model\.decoder\.layers\.0\.mlp\.gate_proj\.weight has shape \(48, 32\), config\.json implies \(64, 32\)'):
    hf_t5gemma.import_t5gemma(wide)
  # Missing tensor: config claims an extra decoder layer.
  deeper = edit_config('deeper', lambda c: c['decoder'].update(num_hidden_layers=3, layer_types=None))
  with pytest.raises(hf_t5gemma.HFConversionError, match=r'tensor model\.decoder\.layers\.2\..* is missing'):
    hf_t5gemma.import_t5gemma(deeper)
  # Extra tensor: config claims fewer layers.
  shallower = edit_config('shallow', lambda c: c['encoder'].update(num_hidden_layers=2, layer_types=None))
  with pytest.raises(hf_t5gemma.HFConversionError, match=r'unexpected tensor model\.encoder\.layers\.2\.'):
    hf_t5gemma.import_t5gemma(shallower)
  # Export side: params that do not match the config.
  small = dataclasses.replace(BALANCED, decoder=_module(num_layers=2, mlp_dim=40))
  with pytest.raises(hf_t5gemma.HFConversionError, match='decoder/layer_0/mlp/gate_proj/kernel has shape'):
    hf_t5gemma.export_t5gemma(_random_params(BALANCED), small, str(tmp_path / 'bad_export'))


def _run_export(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  repo = str(pathlib.Path(__file__).resolve().parents[3])
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  return subprocess.run([sys.executable, '-m', 'trainer.export_hf', *args], capture_output=True,
                        text=True, env=env, cwd=repo, timeout=300)


def test_export_hf_command_line(tmp_path, capsys):
  from trainer import adapt
  from trainer.checkpoint import checkpoints  # pylint: disable=g-import-not-at-top
  # A params-only checkpoint with model_config.json beside it (what trainer.adapt writes).
  ckpt = tmp_path / 'adapted'
  params = _random_params(UNBALANCED, seed=3)
  checkpoints.save_params(str(ckpt / 'params'), params)
  config_io.write_model_config(UNBALANCED, str(ckpt / 'model_config.json'))
  out = str(tmp_path / 'hf')
  proc = _run_export(f'--checkpoint={ckpt}', f'--output={out}')
  assert proc.returncode == 0, proc.stderr
  assert 'T5GemmaForConditionalGeneration' in proc.stdout
  enc, dec = _inputs()
  np.testing.assert_allclose(_our_logits(UNBALANCED, params, enc, dec), _hf_logits(out, enc, dec), atol=1e-4, rtol=0)
  # The same checkpoint, shapes from the gin model file instead of the JSON.
  tiny = EncoderDecoderConfig(
      encoder=TransformerConfig(vocab_size=97, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                                mlp_dim=128, query_pre_attn_scalar=16, sliding_window=8),
      decoder=TransformerConfig(vocab_size=97, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                                mlp_dim=128, query_pre_attn_scalar=16, sliding_window=8))
  tiny_ckpt = tmp_path / 'tiny'
  tiny_params = _random_params(tiny, seed=4)
  checkpoints.save_params(str(tiny_ckpt / 'params'), tiny_params)
  out2 = str(tmp_path / 'hf_tiny')
  import gin  # pylint: disable=g-import-not-at-top
  from trainer import export_hf  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    assert export_hf.run([f'--checkpoint={tiny_ckpt}', f'--output={out2}', '--gin_file=gin/models/t5gemma_tiny.gin',
                           '--gin.VOCAB_SIZE=97', '--dtype=bfloat16']) == 0
  finally:
    gin.clear_config()
  config, imported = hf_t5gemma.import_t5gemma(out2, param_dtype='bfloat16')
  assert config.decoder.embed_dim == 64
  np.testing.assert_array_equal(imported['decoder']['final_norm']['scale'],
                                tiny_params['decoder']['final_norm']['scale'].astype(imported['decoder']['final_norm']['scale'].dtype))
  # Clear one-line errors (in-process: same main() as the command line).
  def run(*args):
    code = export_hf.run(list(args))
    return code, capsys.readouterr().err

  code, err = run(f'--checkpoint={tmp_path / "nope"}', f'--output={out}')
  assert code == 2 and 'no such directory' in err
  os.remove(ckpt / 'model_config.json')
  code, err = run(f'--checkpoint={ckpt}', f'--output={out}')
  assert code == 2 and 'no model_config.json' in err
  config_io.write_model_config(BALANCED, str(ckpt / 'model_config.json'))
  code, err = run(f'--checkpoint={ckpt}', f'--output={out}')
  assert code == 2 and 'encoder/embedder/embedding has shape (97, 40), the config expects (97, 32)' in err, err
