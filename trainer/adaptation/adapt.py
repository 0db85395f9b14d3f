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

A Gemma 3 source (`use_qk_norm`) gets the T5Gemma 2 recipe (arXiv 2512.14856) instead,
`adapt_t5gemma2_params`: `EncoderDecoderConfig(merged_attention=True)` params
(`trainer.model.tied_encoder_decoder`), balanced only (an encoder source of another width or
vocabulary is refused):

* encoder <- the source's embedder, layers and final norm (bidirectional; its sliding layers use
  T5Gemma 2's 'split' window convention, the source's window width);
* decoder layers <- the source's layers as they are: the merged attention is the source's
  self-attention (same q/k/v/o projections and QK-norms, now also over the encoder outputs);
  decoder final norm <- the source's;
* one embedding, the encoder's, tied across encoder input, decoder input and output (the decoder
  has no embedder of its own).

In the unbalanced case train with a cross-attention warm-up (`trainer.training.freezing`,
`CROSS_ATTN_WARMUP_STEPS` in gin/runs/adapt.gin).

`adapt()` (the library form of `python -m trainer.adapt`) writes an orbax params checkpoint that
`train(init_checkpoint=...)` reads, plus the resulting `EncoderDecoderConfig` as JSON next to it;
`adapted_checkpoint()` is the gin hook of gin/runs/adapt.gin. Sources are read by
`trainer.checkpoint.loader.load_decoder_only` (an HF Gemma 2 directory or a trainer orbax checkpoint).

Output layout:
  OUTPUT/params/             orbax params checkpoint ({'encoder': ..., 'decoder': ...})
  OUTPUT/model_config.json   {"encoder": {TransformerConfig fields}, "decoder": {...},
                              "adapted_from": {...}}
"""
import dataclasses
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from trainer.checkpoint import checkpoints
from trainer.checkpoint import loader
from trainer.model import attention
from trainer.model import config_io
from trainer.model import scan_layout
from trainer.model.config import EncoderDecoderConfig, TransformerConfig

PARAMS_DIR = 'params'
CROSS_ATTN_INITS = ('auto', 'self_attn', 'random')
# TransformerConfig fields that change the maths (must agree between an adapted checkpoint and the
# gin model file); dtype, dropout, remat, attention_impl and scan_layers may differ.
SHAPE_FIELDS = ('vocab_size', 'embed_dim', 'num_layers', 'num_heads', 'num_kv_heads', 'head_dim',
                'mlp_dim', 'query_pre_attn_scalar', 'attn_logits_soft_cap', 'final_logit_soft_cap',
                'sliding_window', 'rope_theta', 'rms_norm_eps', 'use_qk_norm', 'local_rope_theta',
                'rope_scaling_factor', 'bidirectional_window', 'eoi_token_id')
ConfigSource = Optional[TransformerConfig]


class AdaptError(ValueError):
  """Bad adaptation input; the message names the path, flag or field."""


def _unrolled_sources(decoder_config, decoder_params, encoder_config, encoder_params):
  """Checked sources in the unrolled layout (adaptation works layer by layer; the result gets each
  config's layout): (encoder_config, encoder_params, decoder_params); the encoder defaults to the
  decoder source."""
  if (encoder_config is None) != (encoder_params is None):
    raise AdaptError('give both encoder_config and encoder_params, or neither')
  _check_source(meta.unbox(decoder_params), decoder_config, 'decoder source')
  decoder_params = scan_layout.unrolled(meta.unbox(decoder_params))
  if encoder_config is None:
    return decoder_config, decoder_params, decoder_params
  _check_source(meta.unbox(encoder_params), encoder_config, 'encoder source')
  return encoder_config, scan_layout.unrolled(meta.unbox(encoder_params)), decoder_params


def _check_source(params, config: TransformerConfig, what: str) -> None:
  try:
    loader.check_decoder_params(params, config, what=what)
  except loader.CheckpointError as e:
    raise AdaptError(str(e)) from e


def load_source(path: str, *, config: ConfigSource = None, param_dtype: Optional[str] = None,
                flag: str = 'decoder_only') -> Tuple[TransformerConfig, Dict[str, Any]]:
  """`loader.load_decoder_only`, its errors as AdaptError."""
  try:
    return loader.load_decoder_only(path, config=config, param_dtype=param_dtype, flag=flag)
  except (loader.CheckpointError, config_io.ConfigFileError) as e:
    raise AdaptError(str(e)) from e


def _copy(tree: Any) -> Any:
  return jax.tree_util.tree_map(lambda x: np.array(x, copy=True), tree)


def random_cross_attention(decoder_config: TransformerConfig, encoder_dim: int,
                           rng: jax.Array) -> Dict[str, Any]:
  """Fresh cross-attention params of one decoder layer, with the model's own initialisers."""
  x = jnp.zeros((1, 1, decoder_config.embed_dim), decoder_config.compute_dtype)
  kv = jnp.zeros((1, 1, encoder_dim), decoder_config.compute_dtype)
  params = attention.Attention(decoder_config).init(rng, x, mask=None, kv_inputs=kv)['params']
  return jax.tree_util.tree_map(np.asarray, meta.unbox(params))


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
  if decoder_config.use_qk_norm:  # Gemma 3 -> T5Gemma 2
    if cross_attn_init != 'auto':
      raise AdaptError(f'cross_attn_init={cross_attn_init!r}: a Gemma 3 source is adapted with the '
                       'T5Gemma 2 recipe, whose merged attention is the source self-attention; '
                       "leave cross_attn_init='auto'")
    return adapt_t5gemma2_params(decoder_config, decoder_params, encoder_config=encoder_config,
                                 encoder_params=encoder_params)
  encoder_config, encoder_params, decoder_params = _unrolled_sources(
      decoder_config, decoder_params, encoder_config, encoder_params)
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


def adapt_t5gemma2_params(decoder_config: TransformerConfig, decoder_params: Mapping[str, Any], *,
                          encoder_config: Optional[TransformerConfig] = None,
                          encoder_params: Optional[Mapping[str, Any]] = None
                          ) -> Tuple[EncoderDecoderConfig, Dict[str, Any]]:
  """Gemma 3 decoder-only params -> T5Gemma 2 (merged attention, tied embedding) params.

  See the module docstring. An optional encoder source must have the decoder source's width and
  vocabulary (T5Gemma 2 is balanced); its embedding becomes the tied one.
  Returns (EncoderDecoderConfig(merged_attention=True), {'encoder': ..., 'decoder': ...}).
  """
  encoder_config, encoder_params, decoder_params = _unrolled_sources(
      decoder_config, decoder_params, encoder_config, encoder_params)
  if not encoder_config.use_qk_norm:  # (a separate encoder source)
    raise AdaptError('the decoder source is Gemma 3 but the encoder source is not (no QK-norm); '
                     'T5Gemma 2 adapts Gemma 3 on both sides')
  for field in ('embed_dim', 'vocab_size'):
    enc, dec = getattr(encoder_config, field), getattr(decoder_config, field)
    if enc != dec:
      raise AdaptError(f'T5Gemma 2 (Gemma 3 sources) is balanced only: the encoder source has '
                       f'{field}={enc} but the decoder source has {dec}; merged attention and the '
                       'tied embedding need equal widths and vocabularies')
  enc_cfg = dataclasses.replace(encoder_config, bidirectional_window='split', eoi_token_id=None)
  dec_cfg = dataclasses.replace(decoder_config, eoi_token_id=None)
  encoder = _copy(encoder_params)
  encoder['embedder'] = {'embedding': encoder['embedder']['embedding']}
  decoder = {k: v for k, v in _copy(decoder_params).items() if k != 'embedder'}
  config = EncoderDecoderConfig(encoder=enc_cfg, decoder=dec_cfg, merged_attention=True)
  return config, scan_layout.for_config({'encoder': encoder, 'decoder': decoder}, config)


def adapt(*, decoder_only: str, output: str, encoder_from: Optional[str] = None,
          decoder_only_config: ConfigSource = None, encoder_config: ConfigSource = None,
          cross_attn_init: str = 'auto', seed: int = 0, param_dtype: Optional[str] = None,
          teacher: Optional[str] = None, overwrite: bool = False, log=print) -> EncoderDecoderConfig:
  """Loads the source(s), adapts, writes OUTPUT/params (orbax) and OUTPUT/model_config.json.

  With `teacher='decoder'` (or 'encoder'), that source's decoder-only params are also stored, as
  `params['teacher']`, for distillation (`trainer.adaptation.distillation.DistillationModel`), and its config
  under "teacher" in the JSON.
  """
  if teacher not in (None, 'decoder', 'encoder'):
    raise AdaptError(f"teacher must be None, 'decoder' or 'encoder', got {teacher!r}")
  params_dir = os.path.join(os.path.abspath(output), PARAMS_DIR)
  if os.path.exists(params_dir) and not overwrite:
    raise AdaptError(f'--output={output} already holds an adapted checkpoint ({params_dir}); '
                     'choose another directory or pass --overwrite')
  log(f'adapt: reading decoder-only source {decoder_only}')
  dec_cfg, dec_params = load_source(decoder_only, config=decoder_only_config,
                                    param_dtype=param_dtype, flag='decoder_only')
  enc_cfg = enc_params = None
  if encoder_from:
    log(f'adapt: reading encoder source {encoder_from}')
    enc_cfg, enc_params = load_source(encoder_from, config=encoder_config,
                                      param_dtype=param_dtype or dec_cfg.param_dtype,
                                      flag='encoder_from')
  config, params = adapt_params(dec_cfg, dec_params, encoder_config=enc_cfg, encoder_params=enc_params,
                                cross_attn_init=cross_attn_init, seed=seed)
  extra = {}
  if teacher is not None:
    use_encoder = teacher == 'encoder' and enc_params is not None
    teacher_cfg, teacher_params = (enc_cfg, enc_params) if use_encoder else (dec_cfg, dec_params)
    params['teacher'] = _copy(teacher_params)
    extra['teacher'] = config_io.config_to_dict(teacher_cfg)
    log(f'adapt: teacher for distillation: the {teacher} source ({teacher_cfg.num_layers} layers x '
        f'd{teacher_cfg.embed_dim})')
  mode = cross_attn_init
  if mode == 'auto':
    mode = 'self_attn' if config.encoder.embed_dim == config.decoder.embed_dim else 'random'
  if config.merged_attention:
    mode = 'merged_self_attn'  # T5Gemma 2: the merged attention is the source self-attention
  os.makedirs(output, exist_ok=True)
  if os.path.exists(params_dir):
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(params_dir)
  checkpoints.save_params(params_dir, params)
  config_file = os.path.join(output, config_io.MODEL_CONFIG_FILE)
  config_io.write_model_config(config, config_file, extra={'adapted_from': {
      'decoder_only': os.path.abspath(decoder_only),
      'encoder_from': os.path.abspath(encoder_from) if encoder_from else None,
      'cross_attn_init': mode, 'seed': seed, 'teacher': teacher}, **extra})
  n = sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(params))
  attn = ('merged attention (T5Gemma 2) from the source self-attention, one tied embedding'
          if config.merged_attention else f'cross-attention from {mode}')
  log(f'adapt: encoder {config.encoder.num_layers} layers x d{config.encoder.embed_dim}, decoder '
      f'{config.decoder.num_layers} layers x d{config.decoder.embed_dim}, {attn}; {n:,} params')
  log(f'adapt: wrote {params_dir} and {config_file}')
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
    if side == 'encoder' and config.merged_attention != model_config.merged_attention:
      raise AdaptError(f'{source} has merged_attention={config.merged_attention} but the gin model '
                       f'file sets EncoderDecoderConfig.merged_attention='
                       f'{model_config.merged_attention} (t5gemma2_* model files set it)')
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
  config_file = os.path.join(output_dir, config_io.MODEL_CONFIG_FILE)
  if os.path.isfile(config_file) and os.path.isdir(os.path.join(output_dir, PARAMS_DIR)):
    recorded = config_io.read_json(config_file).get('adapted_from', {})
    wanted = {'decoder_only': os.path.abspath(decoder_only),
              'encoder_from': os.path.abspath(encoder_from) if encoder_from else None,
              'teacher': teacher}
    for key, value in wanted.items():
      if recorded.get(key) != value:
        raise AdaptError(f'{output_dir} holds a checkpoint adapted from {key}={recorded.get(key)!r}, '
                         f'not {value!r}; use another ADAPTED_DIR')
    config = config_io.load_encoder_decoder_config(config_file)
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
      recorded = config_io.load_teacher_config(config_file)
      check_model_matches(EncoderDecoderConfig(encoder=recorded, decoder=recorded),
                          EncoderDecoderConfig(encoder=teacher_config, decoder=teacher_config),
                          source=f'the teacher in {output_dir}')
  elif model is not None:
    raise AdaptError(f'adaptation needs an encoder-decoder MODEL (a t5gemma gin model file), got '
                     f'{type(model).__name__}')
  if model_dir and jax.process_index() == 0:
    os.makedirs(model_dir, exist_ok=True)
    config_io.write_model_config(
        model_config if isinstance(model_config, EncoderDecoderConfig) else config,
        os.path.join(model_dir, config_io.MODEL_CONFIG_FILE),
        extra={'adapted_from': config_io.read_json(config_file).get('adapted_from')})
  return output_dir


def default_warmup_steps(*, encoder_from: Optional[str] = None, unbalanced_steps: int = 1000) -> int:
  """CROSS_ATTN_WARMUP_STEPS default: `unbalanced_steps` when a separate encoder source is given
  (cross-attention starts random), else 0 (balanced: cross-attention is a copy of self-attention)."""
  return unbalanced_steps if encoder_from else 0


def default_task_name(*, corpus: Optional[str], objective: str = 'ul2') -> str:
  """MIXTURE_OR_TASK_NAME default of gin/runs/adapt.gin: the task or mixture
  `tasks.pretraining.register_corpus_tasks` registers for `corpus` and `objective`
  (`'<corpus>_<objective>'`; e.g. corpus 'pydoc' -> 'pydoc_ul2', the objective T5Gemma and
  T5Gemma 2 were adapted with). Whether it is registered is checked where the data is read.
  Raises AdaptError (one line from the entry points) when neither it nor MIXTURE_OR_TASK_NAME is
  set."""
  if corpus is None:
    raise AdaptError('gin/runs/adapt.gin needs its data: pass --gin.CORPUS=NAME (a corpus '
                     f'registered with tasks.pretraining; trains on NAME_{objective}) or '
                     '--gin.MIXTURE_OR_TASK_NAME=TASK')
  for name, value in (('CORPUS', corpus), ('OBJECTIVE', objective)):
    if not isinstance(value, str) or not value:
      raise AdaptError(f'gin/runs/adapt.gin: {name} must be a non-empty string, got {value!r}')
  return f'{corpus}_{objective}'
