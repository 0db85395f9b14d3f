"""KV-cached forward passes of the Gemma 2 assemblies, for incremental decoding.

Pure functions over the same params as `trainer.model.transformer` (`Decoder`, `EncoderDecoder`;
unrolled `layer_{i}` or scanned `layers/block_{j}`, as `config.scan_layers` says) that compute what
those modules compute, split in two:

  prefill(...)  the prompt in one pass (the normal masked forward: causal, or a bidirectional
                PrefixLM prefix; for an encoder-decoder, the encoder once and every decoder layer's
                cross-attention K/V once) -> next-token logits [B, V] and a cache;
  step(...)     one new token per example -> its logits [B, V] and the updated cache.

Prompts are right-padded: `tokens [B, L]` with `lengths [B]` real tokens each (a token may be 0,
e.g. seqio's start id, so lengths are explicit). Positions are array indices, so example b's
generated token t sits at position `lengths[b] + t`.

Cache, one entry per self-attention layer (keys as the params: 'layer_{i}' or, scanned,
'block_{j}' with a leading layer-group axis):
  {'k': [B, S, K, Dh], 'v': [B, S, K, Dh], 'pos': [B, S] int32 (position stored in the slot, -1
   empty)}
a ring buffer: position p lives in slot `p % S`. Global layers have `S = max_length` (prompt +
generated); sliding layers `S = min(window, max_length)`, so their cache is O(window). A query at
p sees slots with `0 <= pos <= p` (and `p - pos < window` on sliding layers; HF Gemma 2's causal
window). Encoder-decoder caches add {'cross': {layer: {'k', 'v'}}, 'encoder_valid': [B, Le]}.

Example (decoder-only; `config` a TransformerConfig):

  logits, cache = prefill(config, params, tokens=[[0, 17, 9, 0]], lengths=[3], max_length=8)
  next_id = logits.argmax(-1)                                   # predicts position 3
  logits, cache = step(config, params, cache, tokens=next_id, positions=[3])
"""
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from flax.core import meta

from trainer.model import layers
from trainer.model import scan_layout
from trainer.model.attention import dot_product_attention
from trainer.model.config import EncoderDecoderConfig, TransformerConfig
from trainer.model.reference_attention import AttentionMask

Cache = Dict[str, Any]


def cache_size(window: Optional[int], max_length: int) -> int:
  """Slots of one layer's self-attention cache: the window (sliding) or `max_length` (global)."""
  return max_length if window is None else min(int(window), max_length)


def cache_bytes(config: Any, *, batch: int, max_length: int, encoder_length: int = 0) -> int:
  """Bytes of the K/V cache (self-attention, plus cross-attention K/V for an encoder-decoder)."""
  cfg = config.decoder if isinstance(config, EncoderDecoderConfig) else config
  per_slot = 2 * cfg.num_kv_heads * cfg.head_dim * cfg.compute_dtype.itemsize
  total = sum(cache_size(w, max_length) for w in cfg.layer_windows) * per_slot
  if isinstance(config, EncoderDecoderConfig):
    total += cfg.num_layers * encoder_length * per_slot
  return batch * total


# ----------------------------------------------------------------------------------------------
# Sub-layers (same modules, same parameters as the uncached assemblies).


def _norm(cfg, p, x):
  return layers.RMSNorm(eps=cfg.rms_norm_eps, param_dtype=cfg.parameter_dtype).apply(
      {'params': p}, x)


def _proj(cfg, p, x, num_input_axes=1):
  kernel = p['kernel']
  module = layers.Projection(features=tuple(kernel.shape[num_input_axes:]), axes=(),
                             num_input_axes=num_input_axes, dtype=cfg.compute_dtype,
                             param_dtype=cfg.parameter_dtype)
  return module.apply({'params': p}, x)


def _attend(cfg, p, q, k, v, mask, impl):
  out = dot_product_attention(q, k, v, mask=mask, scale=cfg.query_pre_attn_scalar**-0.5,
                              soft_cap=cfg.attn_logits_soft_cap, impl=impl)
  return _proj(cfg, p['o_proj'], out, num_input_axes=2)


def _qkv(cfg, p, x, rope):
  cos, sin = rope
  q = layers.apply_rope(_proj(cfg, p['q_proj'], x), cos, sin)
  k = layers.apply_rope(_proj(cfg, p['k_proj'], x), cos, sin)
  v = _proj(cfg, p['v_proj'], x)
  return q, k, v


def _fill(k, v, lengths, size):
  """Prompt K/V [B, L, K, Dh] -> ring cache of `size` slots holding each row's last positions."""
  slots = jnp.arange(size, dtype=jnp.int32)[None, :]
  last = lengths[:, None].astype(jnp.int32) - 1
  stored = slots + size * jnp.floor_divide(last - slots, size)  # largest p <= last, p % size == s
  idx = jnp.clip(stored, 0, k.shape[1] - 1)[:, :, None, None]
  return {'k': jnp.take_along_axis(k, idx, axis=1), 'v': jnp.take_along_axis(v, idx, axis=1),
          'pos': jnp.where(stored >= 0, stored, -1)}


def _write(cache, k, v, positions):
  """One new K/V per row ([B, 1, K, Dh]) into slot `position % S`."""
  size = cache['pos'].shape[1]
  rows = jnp.arange(positions.shape[0])
  slot = positions % size
  return {'k': cache['k'].at[rows, slot].set(k[:, 0].astype(cache['k'].dtype)),
          'v': cache['v'].at[rows, slot].set(v[:, 0].astype(cache['v'].dtype)),
          'pos': cache['pos'].at[rows, slot].set(positions)}


def _block(cfg, p, x, rope, *, window, mode, cache, prompt_mask, lengths, max_length, positions,
           cross):
  """One layer (self-attention [cached], optional cross-attention, MLP) -> (x, new self cache)."""
  h = _norm(cfg, p['pre_attention_norm'], x)
  q, k, v = _qkv(cfg, p['self_attn'], h, rope)
  if mode == 'prefill':
    h = _attend(cfg, p['self_attn'], q, k, v, prompt_mask.with_window(window), cfg.attention_impl)
    new_cache = _fill(k, v, lengths, cache_size(window, max_length))
  else:
    new_cache = _write(cache, k, v, positions)
    pos, now = new_cache['pos'], positions[:, None]
    valid = (pos >= 0) & (pos <= now)
    if window is not None:
      valid &= now - pos < window
    mask = AttentionMask(kv_segment_ids=valid.astype(jnp.int32))
    h = _attend(cfg, p['self_attn'], q, new_cache['k'], new_cache['v'], mask, 'reference')
  h = _norm(cfg, p['post_attention_norm'], h)
  x = x + h
  if cross is not None:
    h = _norm(cfg, p['pre_cross_attn_norm'], x)
    q = _proj(cfg, p['cross_attn']['q_proj'], h)
    h = _attend(cfg, p['cross_attn'], q, cross['k'], cross['v'], cross['mask'], 'reference')
    x = x + _norm(cfg, p['post_cross_attn_norm'], h)
  h = _norm(cfg, p['pre_feedforward_norm'], x)
  h = layers.MLP(cfg).apply({'params': p['mlp']}, h, deterministic=True)
  return x + _norm(cfg, p['post_feedforward_norm'], h), new_cache


def _cross_kv(cfg, p, encoded):
  return {'k': _proj(cfg, p['cross_attn']['k_proj'], encoded),
          'v': _proj(cfg, p['cross_attn']['v_proj'], encoded)}


def _run_stack(cfg, stack, x, rope, *, mode, caches, prompt_mask, lengths, max_length, positions,
               cross):
  """Embedded x through every block -> (final-normed x, caches keyed like the params)."""
  kwargs = dict(mode=mode, prompt_mask=prompt_mask, lengths=lengths, max_length=max_length,
                positions=positions)
  if not cfg.scan_layers:
    new = {}
    for i in range(cfg.num_layers):
      key = f'{scan_layout.LAYER_PREFIX}{i}'
      c = None if cross is None else dict(cross[key], mask=cross['mask'])
      x, new[key] = _block(cfg, stack[key], x, rope, window=cfg.layer_window(i),
                           cache=None if caches is None else caches[key], cross=c, **kwargs)
    return _norm(cfg, stack['final_norm'], x), new
  blocks = stack[scan_layout.SCAN_KEY]
  keys = [f'{scan_layout.BLOCK_PREFIX}{j}' for j in range(len(blocks))]

  def body(x, xs):
    params_g, caches_g, cross_g = xs
    out = {}
    for j, key in enumerate(keys):
      c = None if cross_g is None else dict(cross_g[key], mask=cross['mask'])
      x, out[key] = _block(cfg, params_g[key], x, rope, window=cfg.layer_window(j),
                           cache=None if caches_g is None else caches_g[key], cross=c, **kwargs)
    return x, out

  cross_layers = None if cross is None else {k: cross[k] for k in keys}
  x, new = jax.lax.scan(body, x, (blocks, caches, cross_layers))
  return _norm(cfg, stack['final_norm'], x), new


def _embed(cfg, stack, tokens):
  embedder = layers.Embedder(vocab_size=cfg.vocab_size, embed_dim=cfg.embed_dim,
                             dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype)
  return embedder.apply({'params': stack['embedder']}, tokens, method='encode')


def _logits(cfg, stack, x):
  embedder = layers.Embedder(vocab_size=cfg.vocab_size, embed_dim=cfg.embed_dim,
                             dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype)
  logits = embedder.apply({'params': stack['embedder']}, x, method='attend')
  return layers.soft_cap(logits, cfg.final_logit_soft_cap)


def _rope(cfg, positions):
  return layers.rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, cfg.compute_dtype)


def _stack_prefill(cfg, stack, tokens, lengths, *, max_length, bidirectional, cross):
  tokens = jnp.asarray(tokens, jnp.int32)
  lengths = jnp.asarray(lengths, jnp.int32)
  batch, length = tokens.shape
  if length > max_length:
    raise ValueError(f'prompt length {length} > max_length {max_length}')
  idx = jnp.arange(length, dtype=jnp.int32)[None, :]
  segment_ids = (idx < lengths[:, None]).astype(jnp.int32)
  prefix = None
  if bidirectional:
    prefix = segment_ids.astype(bool)
  mask = AttentionMask(q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                       bidirectional=prefix, causal=True)
  positions = jnp.broadcast_to(idx, (batch, length))
  x = _embed(cfg, stack, tokens)
  x, caches = _run_stack(cfg, stack, x, _rope(cfg, positions), mode='prefill', caches=None,
                         prompt_mask=mask, lengths=lengths, max_length=max_length,
                         positions=None, cross=cross)
  last = jnp.take_along_axis(x, jnp.clip(lengths - 1, 0, length - 1)[:, None, None], axis=1)
  return _logits(cfg, stack, last)[:, 0], caches


def _stack_step(cfg, stack, caches, tokens, positions, cross):
  tokens = jnp.asarray(tokens, jnp.int32)[:, None]
  positions = jnp.asarray(positions, jnp.int32)
  x = _embed(cfg, stack, tokens)
  x, caches = _run_stack(cfg, stack, x, _rope(cfg, positions[:, None]), mode='step',
                         caches=caches, prompt_mask=None, lengths=None, max_length=None,
                         positions=positions, cross=cross)
  return _logits(cfg, stack, x)[:, 0], caches


def _encoder_decoder_cross(config, params, encoder_tokens):
  from trainer.model.transformer import EncoderDecoder  # pylint: disable=g-import-not-at-top
  encoder_tokens = jnp.asarray(encoder_tokens, jnp.int32)
  encoded = EncoderDecoder(config).apply({'params': params}, encoder_tokens, method='encode')
  cfg, stack = config.decoder, params['decoder']
  if cfg.scan_layers:
    blocks = stack[scan_layout.SCAN_KEY]
    cross = {key: jax.vmap(lambda p: _cross_kv(cfg, p, encoded))(blocks[key]) for key in blocks}
  else:
    cross = {f'layer_{i}': _cross_kv(cfg, stack[f'layer_{i}'], encoded)
             for i in range(cfg.num_layers)}
  return cross, (encoder_tokens != 0)


def check_supported(config) -> None:
  """Raises ValueError naming the config field when the cached maths would differ from the
  uncached modules' (nothing is decoded silently wrong)."""
  if isinstance(config, EncoderDecoderConfig):
    if config.merged_attention:
      raise ValueError('kv_cache does not support EncoderDecoderConfig.merged_attention=True '
                       '(T5Gemma 2) yet')
    cfgs = (('decoder.', config.decoder),)
  else:
    cfgs = (('', config),)
  for prefix, cfg in cfgs:
    if cfg.use_qk_norm:
      raise ValueError(f'kv_cache does not support TransformerConfig {prefix}use_qk_norm=True '
                       f'(Gemma 3) yet')
    if cfg.has_local_rope:
      raise ValueError(f'kv_cache does not support TransformerConfig {prefix}local_rope_theta / '
                       f'{prefix}rope_scaling_factor (per-layer RoPE, Gemma 3) yet')
    if cfg.eoi_token_id is not None:
      raise ValueError(f'kv_cache does not support TransformerConfig {prefix}eoi_token_id yet')


def prefill(config, params, *, tokens, lengths, max_length: int,
            bidirectional_prompt: bool = False,
            encoder_tokens=None) -> Tuple[jax.Array, Cache]:
  """Runs the prompt; returns (fp32 logits [B, V] at each row's last prompt token, cache).

  Decoder-only (`config` a TransformerConfig): `tokens` is the prompt, `bidirectional_prompt` makes
  it a PrefixLM prefix (every prompt token sees the whole prompt, seqio's
  `decoder_causal_attention`). Encoder-decoder (`EncoderDecoderConfig`): `encoder_tokens [B, Le]`
  (0 = padding) are encoded once; `tokens` is the decoder prompt (usually the start id 0).
  `max_length`: prompt + generated positions the cache must hold (global layers' size).
  """
  check_supported(config)
  params = meta.unbox(params)
  if isinstance(config, EncoderDecoderConfig):
    if encoder_tokens is None:
      raise ValueError('an encoder-decoder prefill needs encoder_tokens')
    cross, valid = _encoder_decoder_cross(config, params, encoder_tokens)
    cross['mask'] = AttentionMask(kv_segment_ids=valid.astype(jnp.int32))
    logits, caches = _stack_prefill(config.decoder, params['decoder'], tokens, lengths,
                                    max_length=max_length, bidirectional=False, cross=cross)
    del cross['mask']
    return logits, {'self': caches, 'cross': cross, 'encoder_valid': valid}
  logits, caches = _stack_prefill(config, params, tokens, lengths, max_length=max_length,
                                  bidirectional=bidirectional_prompt, cross=None)
  return logits, {'self': caches}


def step(config, params, cache: Cache, *, tokens, positions) -> Tuple[jax.Array, Cache]:
  """Feeds one token per row (`tokens [B]` at `positions [B]`); returns (logits [B, V], cache)."""
  check_supported(config)
  params = meta.unbox(params)
  if isinstance(config, EncoderDecoderConfig):
    cross = dict(cache['cross'],
                 mask=AttentionMask(kv_segment_ids=cache['encoder_valid'].astype(jnp.int32)))
    logits, caches = _stack_step(config.decoder, params['decoder'], cache['self'], tokens,
                                 positions, cross)
    return logits, dict(cache, self=caches)
  logits, caches = _stack_step(config, params, cache['self'], tokens, positions, None)
  return logits, {'self': caches}


def reorder(config, cache: Cache, index) -> Cache:
  """Rows of the cache gathered by `index [B']` (beam search: each beam takes its parent's cache).

  Scanned stacks keep the layer-group axis first, so their batch axis is 1."""
  cfg = config.decoder if isinstance(config, EncoderDecoderConfig) else config
  axis = 1 if cfg.scan_layers else 0

  def take(tree, ax):
    return jax.tree_util.tree_map(lambda x: jnp.take(x, index, axis=ax), tree)

  out = {'self': take(cache['self'], axis)}
  if 'cross' in cache:
    out['cross'] = take(cache['cross'], axis)
    out['encoder_valid'] = take(cache['encoder_valid'], 0)
  return out
