r"""Decoder-only -> encoder-decoder adaptation (T5Gemma, arXiv 2504.06225, section 3).

Builds `EncoderDecoder` params from one decoder-only Gemma 2 checkpoint (balanced, e.g. 2B-2B) or two
(unbalanced, e.g. a 9B encoder with a 2B decoder):

* encoder <- the encoder source's embedder, layers and final norm, unchanged (the `Encoder`
  module makes attention bidirectional; the weights are the same);
* decoder self-attention, MLP, norms, embedder, final norm <- the decoder source's;
* decoder cross-attention (`cross_attn`, `pre_cross_attn_norm`, `post_cross_attn_norm`) <- a copy
  of the layer's self-attention and its norms when the encoder and decoder widths match (balanced),
  otherwise a fresh random init of the model's own initialisers (K/V input width = encoder
  embed_dim) with zero (identity) norm scales. `cross_attn_init` overrides the choice.

In the unbalanced case train with a cross-attention warm-up (`trainer/freezing.py`,
`CROSS_ATTN_WARMUP_STEPS` in gin/runs/adapt.gin).

Command line (writes an orbax params checkpoint that `train(init_checkpoint=...)` reads, plus the
resulting `EncoderDecoderConfig` as JSON next to it):

  python -m trainer.adapt --decoder_only=/ckpt/gemma-2-2b --output=/tmp/t5gemma-2b-2b
  python -m trainer.adapt --decoder_only=/ckpt/gemma-2-2b --encoder_from=/ckpt/gemma-2-9b \
      --output=/tmp/t5gemma-9b-2b

A source PATH is an HF Gemma 2 checkpoint directory (config.json + *.safetensors, read by
`trainer.checkpoint.hf_gemma2`) or a trainer orbax checkpoint (a run's MODEL_DIR / checkpoints dir / step dir,
or a params-only dir) together with its `TransformerConfig` as JSON: `model_config.json` in the
directory (or its parent), or `--decoder_only_config=FILE` / `--encoder_config=FILE`.

Output layout:
  OUTPUT/params/             orbax params checkpoint ({'encoder': ..., 'decoder': ...})
  OUTPUT/model_config.json   {"encoder": {TransformerConfig fields}, "decoder": {...},
                              "adapted_from": {...}}
"""
import dataclasses
import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from trainer.model import scan_layout
from trainer.model.config import EncoderDecoderConfig, TransformerConfig

MODEL_CONFIG_FILE = 'model_config.json'
PARAMS_DIR = 'params'
CROSS_ATTN_INITS = ('auto', 'self_attn', 'random')
# TransformerConfig fields that change the maths (must agree between an adapted checkpoint and the
# gin model file); dtype, dropout, remat, attention_impl and scan_layers may differ.
SHAPE_FIELDS = ('vocab_size', 'embed_dim', 'num_layers', 'num_heads', 'num_kv_heads', 'head_dim',
                'mlp_dim', 'query_pre_attn_scalar', 'attn_logits_soft_cap', 'final_logit_soft_cap',
                'sliding_window', 'rope_theta', 'rms_norm_eps')


class AdaptError(ValueError):
  """Bad adaptation input; the message names the path, flag or field."""


# --------------------------------------------------------------------------------------------------
# Config JSON.


def config_to_dict(config: TransformerConfig) -> Dict[str, Any]:
  out = dataclasses.asdict(config)
  if out['layer_types'] is not None:
    out['layer_types'] = list(out['layer_types'])
  return out


def transformer_config_from_dict(d: Mapping[str, Any], where: str) -> TransformerConfig:
  if not isinstance(d, Mapping):
    raise AdaptError(f'{where}: expected a JSON object of TransformerConfig fields, got {type(d).__name__}')
  names = {f.name for f in dataclasses.fields(TransformerConfig)}
  unknown = sorted(set(d) - names)
  if unknown:
    raise AdaptError(f'{where}: unknown TransformerConfig field {unknown[0]!r}')
  try:
    return TransformerConfig(**d)
  except (TypeError, ValueError) as e:
    raise AdaptError(f'{where}: {e}') from e


def save_encoder_decoder_config(config: EncoderDecoderConfig, path: str, *,
                                extra: Optional[Mapping[str, Any]] = None) -> None:
  content = {'encoder': config_to_dict(config.encoder), 'decoder': config_to_dict(config.decoder)}
  content.update(extra or {})
  with open(path, 'w') as f:
    json.dump(content, f, indent=2, sort_keys=True)


def _read_json(path: str) -> Dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise AdaptError(f'{path} is not valid JSON: {e}') from e


def load_encoder_decoder_config(path: str) -> EncoderDecoderConfig:
  """Reads `model_config.json` (a file, or a directory holding one) -> EncoderDecoderConfig."""
  if os.path.isdir(path):
    path = os.path.join(path, MODEL_CONFIG_FILE)
  if not os.path.isfile(path):
    raise AdaptError(f'{path} not found (written by python -m trainer.adapt)')
  d = _read_json(path)
  for side in ('encoder', 'decoder'):
    if side not in d:
      raise AdaptError(f'{path}: no {side!r} config')
  return EncoderDecoderConfig(encoder=transformer_config_from_dict(d['encoder'], f'{path}:encoder'),
                              decoder=transformer_config_from_dict(d['decoder'], f'{path}:decoder'))


def config_from_gin(gin_files: Sequence[str], gin_bindings: Sequence[str] = ()):
  """The model config a gin model file builds (EncoderDecoderConfig, else TransformerConfig).

  Parses into a clean gin state and clears it afterwards. `gin_bindings` like 'VOCAB_SIZE = 1000'.
  """
  import gin  # pylint: disable=g-import-not-at-top
  from trainer import gin_utils  # pylint: disable=g-import-not-at-top
  from trainer.model import config as config_lib  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    try:
      gin_utils.setup_gin(gin_utils.Flags(gin_files=list(gin_files), gin_bindings=list(gin_bindings)),
                          finalize=False)
    except gin_utils.ConfigError as e:
      raise AdaptError(str(e)) from e
    errors = []
    for cls in (config_lib.EncoderDecoderConfig, config_lib.TransformerConfig):
      try:
        return gin.get_configurable(cls)()
      except (ValueError, TypeError) as e:
        errors.append(f'{cls.__name__}: {str(e).splitlines()[0]}')
    raise AdaptError(f'the gin files {list(gin_files)} do not build a model config ({"; ".join(errors)})')
  finally:
    gin.clear_config()


def _load_transformer_config(path: str, gin_bindings: Sequence[str] = ()) -> TransformerConfig:
  if path.endswith('.gin'):
    config = config_from_gin([path], gin_bindings)
    if not isinstance(config, TransformerConfig):
      raise AdaptError(f'{path} configures an encoder-decoder model; the source must be decoder-only')
    return config
  if not os.path.isfile(path):
    raise AdaptError(f'config file {path} not found')
  d = _read_json(path)
  if 'decoder' in d and 'encoder' in d:
    raise AdaptError(f'{path} is an encoder-decoder config; the source must be decoder-only')
  d = {k: v for k, v in d.items() if k != 'adapted_from'}
  return transformer_config_from_dict(d, path)


# --------------------------------------------------------------------------------------------------
# Loading decoder-only sources.


def _unbox(tree: Any) -> Any:
  from flax.core import meta  # pylint: disable=g-import-not-at-top
  return meta.unbox(tree)


def _find_config_json(path: str) -> Optional[str]:
  here = os.path.abspath(path)
  for _ in range(4):  # step dir -> checkpoints dir -> MODEL_DIR
    candidate = os.path.join(here, MODEL_CONFIG_FILE)
    if os.path.isfile(candidate):
      return candidate
    here = os.path.dirname(here)
  return None


def _restore_orbax_params(path: str) -> Dict[str, Any]:
  """Params (numpy) from a trainer checkpoint dir, read with the checkpoint's own metadata."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from trainer.checkpoint import checkpoints  # pylint: disable=g-import-not-at-top
  params_dir = checkpoints._params_dir(path)  # pylint: disable=protected-access
  try:
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(params_dir)
    tree = getattr(metadata, 'item_metadata', metadata)
    tree = getattr(tree, 'tree', tree)
    device = jax.local_devices(backend='cpu')[0] if jax.default_backend() != 'cpu' else jax.local_devices()[0]
    abstract = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype,
                                       sharding=jax.sharding.SingleDeviceSharding(device)), tree)
    restored = checkpointer.restore(params_dir, abstract)
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise AdaptError(f'cannot read an orbax params checkpoint from {params_dir!r}: {e}') from e
  return jax.tree_util.tree_map(np.asarray, restored)


def load_decoder_only(path: str, *, config_path: Optional[str] = None,
                      gin_bindings: Sequence[str] = (), param_dtype: Optional[str] = None,
                      flag: str = 'decoder_only') -> Tuple[TransformerConfig, Dict[str, Any]]:
  """A decoder-only source -> (TransformerConfig, Decoder params as numpy).

  Args:
    path: an HF Gemma 2 directory (has config.json) or a trainer orbax checkpoint directory.
    config_path: the TransformerConfig of an orbax source: a JSON file, or a gin model file (.gin,
      e.g. gin/models/gemma2_tiny.gin, with `gin_bindings` such as 'VOCAB_SIZE = 1000'); default:
      model_config.json found in `path` or up to three parents.
    param_dtype: cast params (and the config's param_dtype) to this; default keeps them.
    flag: the command-line flag / gin binding that named `path` (for error messages).
  """
  if not isinstance(path, str) or not path:
    raise AdaptError(f'--{flag} must be a checkpoint directory, got {path!r}')
  if not os.path.isdir(path):
    raise AdaptError(f'--{flag}={path}: no such directory')
  if os.path.isfile(os.path.join(path, 'config.json')):
    from trainer.checkpoint import hf_gemma2  # pylint: disable=g-import-not-at-top
    try:
      return hf_gemma2.load_decoder(path, param_dtype=param_dtype)
    except ValueError as e:
      raise AdaptError(f'--{flag}={path}: {e}') from e
  config_path = config_path or _find_config_json(path)
  if config_path is None:
    raise AdaptError(
        f'--{flag}={path} is not an HF checkpoint (no config.json), and no {MODEL_CONFIG_FILE} was '
        f'found for this orbax checkpoint; pass its TransformerConfig as JSON with --{flag}_config')
  config = _load_transformer_config(config_path, gin_bindings)
  params = _unbox(_restore_orbax_params(path))
  if 'encoder' in params or 'decoder' in params:
    raise AdaptError(f'--{flag}={path} holds encoder-decoder params; the source must be decoder-only')
  if param_dtype is not None:
    config = dataclasses.replace(config, param_dtype=param_dtype)
  check_decoder_params(params, config, what=f'--{flag}={path}')
  params = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(config.parameter_dtype), params)
  return config, scan_layout.for_config(params, config)


def _expected_decoder_shapes(config: TransformerConfig) -> Dict[str, Tuple[int, ...]]:
  from trainer.model import transformer  # pylint: disable=g-import-not-at-top
  abstract = jax.eval_shape(lambda: transformer.Decoder(config).init(
      jax.random.PRNGKey(0), jnp.ones((1, 1), jnp.int32))['params'])
  abstract = _unbox(abstract)
  return {'/'.join(_keys(p)): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0]}


def _keys(path) -> Tuple[str, ...]:
  from trainer.training.freezing import path_keys  # pylint: disable=g-import-not-at-top
  return path_keys(path)


def check_decoder_params(params: Mapping[str, Any], config: TransformerConfig, *, what: str) -> None:
  """Raises AdaptError naming the first parameter missing, unexpected or of the wrong shape.

  Either layout is accepted (`scan_layout`): the check runs on the unrolled names.
  """
  want = _expected_decoder_shapes(dataclasses.replace(config, scan_layers=False))
  try:
    params = scan_layout.unrolled(params)
  except (ValueError, KeyError, IndexError) as e:
    raise AdaptError(f'{what}: malformed scanned params: {e}') from e
  got = {'/'.join(_keys(p)): tuple(np.shape(x)) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  for name in sorted(set(want) | set(got)):
    if name not in got:
      raise AdaptError(f'{what}: parameter {name} is missing')
    if name not in want:
      raise AdaptError(f'{what}: unexpected parameter {name} for a decoder-only model')
    if got[name] != want[name]:
      raise AdaptError(f'{what}: parameter {name} has shape {got[name]}, its config implies {want[name]}')


# --------------------------------------------------------------------------------------------------
# The adaptation itself.


def _copy(tree: Any) -> Any:
  return jax.tree_util.tree_map(lambda x: np.array(x, copy=True), tree)


def random_cross_attention(decoder_config: TransformerConfig, encoder_dim: int,
                           rng: jax.Array) -> Dict[str, Any]:
  """Fresh cross-attention params of one decoder layer, with the model's own initialisers."""
  from trainer.model import attention  # pylint: disable=g-import-not-at-top
  x = jnp.zeros((1, 1, decoder_config.embed_dim), decoder_config.compute_dtype)
  kv = jnp.zeros((1, 1, encoder_dim), decoder_config.compute_dtype)
  params = attention.Attention(decoder_config).init(rng, x, mask=None, kv_inputs=kv)['params']
  return jax.tree_util.tree_map(np.asarray, _unbox(params))


def adapt_params(decoder_config: TransformerConfig, decoder_params: Mapping[str, Any], *,
                 encoder_config: Optional[TransformerConfig] = None,
                 encoder_params: Optional[Mapping[str, Any]] = None,
                 cross_attn_init: str = 'auto',
                 seed: int = 0) -> Tuple[EncoderDecoderConfig, Dict[str, Any]]:
  """Encoder-decoder params from decoder-only params (see the module docstring).

  Args:
    decoder_config, decoder_params: the decoder-only source of the decoder (and of the encoder when
      no encoder source is given).
    encoder_config, encoder_params: optional separate encoder source (unbalanced adaptation).
    cross_attn_init: 'auto' (copy self-attention when encoder and decoder widths match, else
      random), 'self_attn' or 'random'.
    seed: PRNG seed of the random cross-attention init (deterministic: same seed, same bytes).

  Returns:
    (EncoderDecoderConfig, {'encoder': ..., 'decoder': ...}) with numpy arrays, each side in its
    config's layout (scanned when that config has `scan_layers`; sources may be in either).
  """
  if cross_attn_init not in CROSS_ATTN_INITS:
    raise AdaptError(f'cross_attn_init must be one of {CROSS_ATTN_INITS}, got {cross_attn_init!r}')
  if (encoder_config is None) != (encoder_params is None):
    raise AdaptError('give both encoder_config and encoder_params, or neither')
  # Adapted layer by layer in the unrolled layout; the result gets each config's layout.
  check_decoder_params(_unbox(decoder_params), decoder_config, what='decoder source')
  decoder_params = scan_layout.unrolled(_unbox(decoder_params))
  if encoder_config is None:
    encoder_config, encoder_params = decoder_config, decoder_params
  else:
    check_decoder_params(_unbox(encoder_params), encoder_config, what='encoder source')
    encoder_params = scan_layout.unrolled(_unbox(encoder_params))
  if encoder_config.vocab_size != decoder_config.vocab_size:
    raise AdaptError(f'the encoder source has vocab_size={encoder_config.vocab_size} but the decoder '
                     f'source has {decoder_config.vocab_size}: both sides need the same vocabulary')
  same_width = encoder_config.embed_dim == decoder_config.embed_dim
  mode = cross_attn_init
  if mode == 'auto':
    mode = 'self_attn' if same_width else 'random'
  if mode == 'self_attn' and not same_width:
    raise AdaptError(f'cross_attn_init=self_attn needs equal widths; encoder embed_dim='
                     f'{encoder_config.embed_dim} != decoder embed_dim={decoder_config.embed_dim}')

  encoder = _copy(encoder_params)
  decoder = _copy(decoder_params)
  rng = jax.random.PRNGKey(seed)
  dtype = decoder_config.parameter_dtype
  for i in range(decoder_config.num_layers):
    layer = decoder[f'layer_{i}']
    if mode == 'self_attn':
      layer['cross_attn'] = _copy(layer['self_attn'])
      layer['pre_cross_attn_norm'] = _copy(layer['pre_attention_norm'])
      layer['post_cross_attn_norm'] = _copy(layer['post_attention_norm'])
    else:
      cross = random_cross_attention(decoder_config, encoder_config.embed_dim, jax.random.fold_in(rng, i))
      layer['cross_attn'] = jax.tree_util.tree_map(lambda x: x.astype(dtype), cross)
      zeros = np.zeros((decoder_config.embed_dim,), dtype)
      layer['pre_cross_attn_norm'] = {'scale': zeros.copy()}
      layer['post_cross_attn_norm'] = {'scale': zeros.copy()}
  config = EncoderDecoderConfig(encoder=encoder_config, decoder=decoder_config)
  return config, scan_layout.for_config({'encoder': encoder, 'decoder': decoder}, config)


def adapt(*, decoder_only: str, output: str, encoder_from: Optional[str] = None,
          decoder_only_config: Optional[str] = None, encoder_config: Optional[str] = None,
          gin_bindings: Sequence[str] = (),
          cross_attn_init: str = 'auto', seed: int = 0, param_dtype: Optional[str] = None,
          teacher: Optional[str] = None, overwrite: bool = False, log=print) -> EncoderDecoderConfig:
  """Loads the source(s), adapts, writes OUTPUT/params (orbax) and OUTPUT/model_config.json.

  With `teacher='decoder'` (or 'encoder'), that source's decoder-only params are also stored, as
  `params['teacher']`, for distillation (`trainer.adaptation.distillation.DistillationModel`), and its config
  under "teacher" in the JSON.
  """
  if teacher not in (None, 'decoder', 'encoder'):
    raise AdaptError(f"teacher must be None, 'decoder' or 'encoder', got {teacher!r}")
  from trainer.checkpoint import checkpoints  # pylint: disable=g-import-not-at-top
  params_dir = os.path.join(os.path.abspath(output), PARAMS_DIR)
  if os.path.exists(params_dir) and not overwrite:
    raise AdaptError(f'--output={output} already holds an adapted checkpoint ({params_dir}); '
                     'choose another directory or pass --overwrite')
  log(f'adapt: reading decoder-only source {decoder_only}')
  dec_cfg, dec_params = load_decoder_only(decoder_only, config_path=decoder_only_config,
                                          gin_bindings=gin_bindings, param_dtype=param_dtype,
                                          flag='decoder_only')
  enc_cfg = enc_params = None
  if encoder_from:
    log(f'adapt: reading encoder source {encoder_from}')
    enc_cfg, enc_params = load_decoder_only(encoder_from, config_path=encoder_config,
                                            gin_bindings=gin_bindings,
                                            param_dtype=param_dtype or dec_cfg.param_dtype,
                                            flag='encoder_from')
  config, params = adapt_params(dec_cfg, dec_params, encoder_config=enc_cfg, encoder_params=enc_params,
                                cross_attn_init=cross_attn_init, seed=seed)
  extra = {}
  if teacher is not None:
    use_encoder = teacher == 'encoder' and enc_params is not None
    teacher_cfg, teacher_params = (enc_cfg, enc_params) if use_encoder else (dec_cfg, dec_params)
    params['teacher'] = _copy(teacher_params)
    extra['teacher'] = config_to_dict(teacher_cfg)
    log(f'adapt: teacher for distillation: the {teacher} source ({teacher_cfg.num_layers} layers x '
        f'd{teacher_cfg.embed_dim})')
  mode = cross_attn_init
  if mode == 'auto':
    mode = 'self_attn' if config.encoder.embed_dim == config.decoder.embed_dim else 'random'
  os.makedirs(output, exist_ok=True)
  if os.path.exists(params_dir):
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(params_dir)
  checkpoints.save_params(params_dir, params)
  save_encoder_decoder_config(config, os.path.join(output, MODEL_CONFIG_FILE), extra={'adapted_from': {
      'decoder_only': os.path.abspath(decoder_only),
      'encoder_from': os.path.abspath(encoder_from) if encoder_from else None,
      'cross_attn_init': mode, 'seed': seed, 'teacher': teacher}, **extra})
  n = sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(params))
  log(f'adapt: encoder {config.encoder.num_layers} layers x d{config.encoder.embed_dim}, decoder '
      f'{config.decoder.num_layers} layers x d{config.decoder.embed_dim}, cross-attention from '
      f'{mode}; {n:,} params')
  log(f'adapt: wrote {params_dir} and {os.path.join(output, MODEL_CONFIG_FILE)}')
  return config


def check_model_matches(config: EncoderDecoderConfig, model_config: EncoderDecoderConfig, *,
                        source: str) -> None:
  """Raises AdaptError naming the first maths field where the gin model and the checkpoint differ."""
  for side in ('encoder', 'decoder'):
    a, b = getattr(config, side), getattr(model_config, side)
    for field in SHAPE_FIELDS:
      if getattr(a, field) != getattr(b, field):
        raise AdaptError(f'{source} has {side}.{field}={getattr(a, field)!r} but the gin model file '
                         f'sets {side}/config.TransformerConfig.{field}={getattr(b, field)!r}')
    if a.resolved_layer_types != b.resolved_layer_types:
      raise AdaptError(f'{source} has {side}.layer_types={a.resolved_layer_types} but the gin model '
                       f'file gives {b.resolved_layer_types}')


def adapted_checkpoint(*, decoder_only: str, output_dir: Optional[str] = None,
                       encoder_from: Optional[str] = None,
                       model: Any = None, model_dir: Optional[str] = None,
                       teacher: Optional[str] = None, cross_attn_init: str = 'auto',
                       seed: int = 0) -> str:
  """Gin hook (`INIT_CHECKPOINT = @adapt.adapted_checkpoint()` in gin/runs/adapt.gin).

  Adapts the decoder-only source(s) into `output_dir` unless it already holds an adapted checkpoint,
  checks the result against the gin model (`model.config`), and returns `output_dir` for
  `train(init_checkpoint=...)`. The config JSON written there records what it was adapted from; a
  checkpoint adapted from other sources is an error, not silently reused. With `model_dir`, the
  model's config is also written to MODEL_DIR/model_config.json, so that `trainer.export_hf
  --checkpoint=MODEL_DIR` finds the shapes.
  """
  if not decoder_only:
    raise AdaptError('DECODER_ONLY_CHECKPOINT (adapted_checkpoint.decoder_only) must be set')
  if not output_dir:
    if not model_dir:
      raise AdaptError('ADAPTED_DIR (adapted_checkpoint.output_dir) or MODEL_DIR must be set')
    output_dir = os.path.join(model_dir, 'adapted_with_teacher' if teacher else 'adapted')
  config_file = os.path.join(output_dir, MODEL_CONFIG_FILE)
  if os.path.isfile(config_file) and os.path.isdir(os.path.join(output_dir, PARAMS_DIR)):
    recorded = _read_json(config_file).get('adapted_from', {})
    wanted = {'decoder_only': os.path.abspath(decoder_only),
              'encoder_from': os.path.abspath(encoder_from) if encoder_from else None,
              'teacher': teacher}
    for key, value in wanted.items():
      if recorded.get(key) != value:
        raise AdaptError(f'{output_dir} holds a checkpoint adapted from {key}={recorded.get(key)!r}, '
                         f'not {value!r}; use another ADAPTED_DIR')
    config = load_encoder_decoder_config(config_file)
  else:
    log = print if jax.process_index() == 0 else (lambda *a, **k: None)
    config = adapt(decoder_only=decoder_only, encoder_from=encoder_from, output=output_dir,
                   cross_attn_init=cross_attn_init, seed=seed, teacher=teacher, log=log)
  model_config = getattr(model, 'config', None)
  if isinstance(model_config, EncoderDecoderConfig):
    check_model_matches(config, model_config, source=f'the adapted checkpoint {output_dir}')
    teacher_config = getattr(model, 'teacher_config', None)
    if teacher_config is not None:
      if teacher is None:
        raise AdaptError('a distillation MODEL needs the teacher in its init checkpoint: set '
                         "adapted_checkpoint.teacher = 'decoder' or 'encoder' (gin/runs/distill.gin)")
      recorded = transformer_config_from_dict(_read_json(config_file)['teacher'], f'{config_file}:teacher')
      check_model_matches(EncoderDecoderConfig(encoder=recorded, decoder=recorded),
                          EncoderDecoderConfig(encoder=teacher_config, decoder=teacher_config),
                          source=f'the teacher in {output_dir}')
  elif model is not None:
    raise AdaptError(f'adaptation needs an encoder-decoder MODEL (a t5gemma gin model file), got '
                     f'{type(model).__name__}')
  if model_dir and jax.process_index() == 0:
    os.makedirs(model_dir, exist_ok=True)
    save_encoder_decoder_config(
        model_config if isinstance(model_config, EncoderDecoderConfig) else config,
        os.path.join(model_dir, MODEL_CONFIG_FILE),
        extra={'adapted_from': _read_json(config_file).get('adapted_from')})
  return output_dir


def default_warmup_steps(*, encoder_from: Optional[str] = None, unbalanced_steps: int = 1000) -> int:
  """CROSS_ATTN_WARMUP_STEPS default: `unbalanced_steps` when a separate encoder source is given
  (cross-attention starts random), else 0 (balanced: cross-attention is a copy of self-attention)."""
  return unbalanced_steps if encoder_from else 0


# --------------------------------------------------------------------------------------------------
# Entry point.


def main(argv=None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog='python -m trainer.adapt',
      description='Decoder-only Gemma 2 checkpoint(s) -> T5Gemma encoder-decoder params (orbax) + '
                  'model_config.json.')
  parser.add_argument('--decoder_only', required=True,
                      help='decoder-only source: HF Gemma 2 dir or trainer orbax checkpoint dir')
  parser.add_argument('--encoder_from', default=None,
                      help='optional separate encoder source (unbalanced, e.g. 9B encoder + 2B decoder)')
  parser.add_argument('--output', required=True, help='output directory')
  parser.add_argument('--decoder_only_config', default=None,
                      help='config of an orbax --decoder_only source: TransformerConfig JSON or a gin '
                           'model file (e.g. gin/models/gemma2_tiny.gin; bindings via --gin.NAME=VALUE)')
  parser.add_argument('--encoder_from_config', default=None,
                      help='config of an orbax --encoder_from source (JSON or gin model file)')
  parser.add_argument('--cross_attn_init', default='auto', choices=CROSS_ATTN_INITS)
  parser.add_argument('--seed', type=int, default=0, help='seed of the random cross-attention init')
  parser.add_argument('--param_dtype', default=None, choices=('float32', 'bfloat16'),
                      help='cast params to this dtype (default: keep the sources\')')
  parser.add_argument('--teacher', default=None, choices=('decoder', 'encoder'),
                      help='also store this source as params["teacher"] for distillation')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing OUTPUT/params')
  # T5X-style `--gin.NAME=VALUE` bindings for gin model files given as configs.
  from trainer import gin_utils  # pylint: disable=g-import-not-at-top
  bindings, rest = gin_utils.split_gin_bindings(list(sys.argv[1:] if argv is None else argv))
  args = parser.parse_args(rest)
  gin_utils.quiet_absl_logging()
  try:
    adapt(decoder_only=args.decoder_only, encoder_from=args.encoder_from, output=args.output,
          decoder_only_config=args.decoder_only_config, encoder_config=args.encoder_from_config,
          gin_bindings=bindings,
          cross_attn_init=args.cross_attn_init, seed=args.seed, param_dtype=args.param_dtype,
          teacher=args.teacher, overwrite=args.overwrite)
  except AdaptError as e:
    print(f'adapt: error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  import sys  # pylint: disable=g-import-not-at-top
  sys.exit(main())
