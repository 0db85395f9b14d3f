"""KV-cached forward passes of the Gemma 2 / Gemma 3 assemblies, for incremental decoding.

Pure functions over the same params as `trainer.model.transformer` (`Decoder`, `EncoderDecoder`) and
`trainer.model.tied_encoder_decoder.TiedEncoderDecoder` (T5Gemma 2; unrolled `layer_{i}` or scanned
`layers/block_{j}`, as `config.scan_layers` says) that compute what those modules compute, split in
two:

  prefill(...)  the prompt in one pass (the normal masked forward: causal, or a bidirectional
                PrefixLM prefix; for an encoder-decoder, the encoder once and every decoder layer's
                cross-attention K/V once) -> next-token logits [B, V] and a cache;
  step(...)     one new token per example -> its logits [B, V] and the updated cache.

Prompts are right-padded: `tokens [B, L]` with `lengths [B]` real tokens each (a token may be 0,
e.g. seqio's start id, so lengths are explicit). Positions are array indices, so example b's
generated token t sits at position `lengths[b] + t`.

Cache, one entry per self-attention layer (keys as the params: 'layer_{i}' or, scanned,
'block_{j}' with a leading layer-group axis, plus 'layer_{i}' for the unrolled remainder when the
period does not divide the layers):
  {'k': [B, S, K, Dh], 'v': [B, S, K, Dh], 'pos': [B, S] int32 (position stored in the slot, -1
   empty)}
a ring buffer: position p lives in slot `p % S`. Global layers have `S = max_length` (prompt +
generated); sliding layers `S = min(window, max_length)`, so their cache is O(window). A query at
p sees slots with `0 <= pos <= p` (and `p - pos < window` on sliding layers; HF Gemma 2's causal
window). Encoder-decoder caches add {'cross': {layer: {'k', 'v'}}, 'encoder_valid': [B, Le]}.

Gemma 3 (`use_qk_norm`, `local_rope_theta`, `rope_scaling_factor`, `eoi_token_id`) as the modules:
QK-norm before RoPE, each layer's RoPE table (`layers.stack_ropes`, `config.layer_rope_index`).
T5Gemma 2 (`merged_attention=True`): 'cross' holds each decoder layer's merged-attention K/V of
the encoder outputs (k_norm, no RoPE), and a step's one softmax runs over [cached self slots;
encoder K/V] (`MergedMask`); decoder tokens are embedded and logits read through the encoder's
tied embedder.

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
from trainer.model.config import EncoderDecoderConfig
from trainer.model.merged_attention import MergedMask
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


def _qk_norm(cfg, p, name, x):
  """Gemma 3's QK-norm (`trainer.model.attention.qk_norm`), identity without `use_qk_norm`."""
  if not cfg.use_qk_norm:
    return x
  return layers.RMSNorm(eps=cfg.rms_norm_eps, param_dtype=cfg.parameter_dtype,
                        axis_name='head_dim').apply({'params': p[name]}, x)


def _qkv(cfg, p, x, rope):
  cos, sin = rope
  q = layers.apply_rope(_qk_norm(cfg, p, 'q_norm', _proj(cfg, p['q_proj'], x)), cos, sin)
  k = layers.apply_rope(_qk_norm(cfg, p, 'k_norm', _proj(cfg, p['k_proj'], x)), cos, sin)
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
  """One layer (self-attention [cached], optional cross-attention, MLP) -> (x, new self cache).

  `cross` with 'merged': T5Gemma 2's merged attention: the self keys/values (prompt, or cache
  slots) followed by the encoder's (`cross['k'|'v']`, computed once) in one softmax."""
  merged = cross is not None and cross.get('merged', False)
  h = _norm(cfg, p['pre_attention_norm'], x)
  q, k, v = _qkv(cfg, p['self_attn'], h, rope)
  if mode == 'prefill':
    mask = prompt_mask.with_window(window)
    new_cache = _fill(k, v, lengths, cache_size(window, max_length))
    impl = cfg.attention_impl
  else:
    new_cache = _write(cache, k, v, positions)
    pos, now = new_cache['pos'], positions[:, None]
    valid = (pos >= 0) & (pos <= now)
    if window is not None:
      valid &= now - pos < window
    mask = AttentionMask(kv_segment_ids=valid.astype(jnp.int32))
    k, v, impl = new_cache['k'], new_cache['v'], 'reference'
  if merged:
    mask = MergedMask(self_mask=mask, cross_mask=cross['mask'],
                      encoder_length=cross['k'].shape[1])
    k = jnp.concatenate([k, cross['k'].astype(k.dtype)], axis=1)
    v = jnp.concatenate([v, cross['v'].astype(v.dtype)], axis=1)
    impl = 'reference'  # as MergedAttention: no fused kernel for two key runs
  h = _attend(cfg, p['self_attn'], q, k, v, mask, impl)
  h = _norm(cfg, p['post_attention_norm'], h)
  x = x + h
  if cross is not None and not merged:
    h = _norm(cfg, p['pre_cross_attn_norm'], x)
    q = _qk_norm(cfg, p['cross_attn'], 'q_norm', _proj(cfg, p['cross_attn']['q_proj'], h))
    h = _attend(cfg, p['cross_attn'], q, cross['k'], cross['v'], cross['mask'], 'reference')
    x = x + _norm(cfg, p['post_cross_attn_norm'], h)
  h = _norm(cfg, p['pre_feedforward_norm'], x)
  h = layers.MLP(cfg).apply({'params': p['mlp']}, h, deterministic=True)
  return x + _norm(cfg, p['post_feedforward_norm'], h), new_cache


def _cross_kv(cfg, p, encoded, merged):
  """Encoder K/V of one decoder layer: its cross-attention's, or (T5Gemma 2) its merged
  attention's (same k/v projections and k_norm as the self part, no RoPE)."""
  p = p['self_attn'] if merged else p['cross_attn']
  return {'k': _qk_norm(cfg, p, 'k_norm', _proj(cfg, p['k_proj'], encoded)),
          'v': _proj(cfg, p['v_proj'], encoded)}


def _run_stack(cfg, stack, x, rope, *, mode, caches, prompt_mask, lengths, max_length, positions,
               cross):
  """Embedded x through every block -> (final-normed x, caches keyed like the params)."""
  kwargs = dict(mode=mode, prompt_mask=prompt_mask, lengths=lengths, max_length=max_length,
                positions=positions)
  ropes = rope  # layers.stack_ropes: indexed by cfg.layer_rope_index
  extra = {} if cross is None else {'mask': cross['mask'], 'merged': cross.get('merged', False)}
  def unrolled(x, first):
    new = {}
    for i in range(first, cfg.num_layers):
      key = f'{scan_layout.LAYER_PREFIX}{i}'
      c = None if cross is None else dict(cross[key], **extra)
      x, new[key] = _block(cfg, stack[key], x, ropes[cfg.layer_rope_index(i)],
                           window=cfg.layer_window(i),
                           cache=None if caches is None else caches[key], cross=c, **kwargs)
    return x, new

  if not cfg.scan_layers:
    x, new = unrolled(x, 0)
    return _norm(cfg, stack['final_norm'], x), new
  blocks = stack[scan_layout.SCAN_KEY]
  keys = [f'{scan_layout.BLOCK_PREFIX}{j}' for j in range(len(blocks))]

  def body(x, xs):
    params_g, caches_g, cross_g = xs
    out = {}
    for j, key in enumerate(keys):
      c = None if cross_g is None else dict(cross_g[key], **extra)
      x, out[key] = _block(cfg, params_g[key], x, ropes[cfg.layer_rope_index(j)],
                           window=cfg.layer_window(j),
                           cache=None if caches_g is None else caches_g[key], cross=c, **kwargs)
    return x, out

  cross_layers = None if cross is None else {k: cross[k] for k in keys}
  scanned_caches = None if caches is None else {k: caches[k] for k in keys}
  x, new = jax.lax.scan(body, x, (blocks, scanned_caches, cross_layers))
  # An incomplete last period (`cfg.num_scanned_layers < num_layers`) runs unrolled after the
  # scan; its caches sit beside the stacked block_j ones under their 'layer_{i}' names.
  x, rest = unrolled(x, cfg.num_scanned_layers)
  return _norm(cfg, stack['final_norm'], x), {**new, **rest}


def _embedder(emb_cfg):
  return layers.Embedder(vocab_size=emb_cfg.vocab_size, embed_dim=emb_cfg.embed_dim,
                         dtype=emb_cfg.compute_dtype, param_dtype=emb_cfg.parameter_dtype,
                         eoi_token_id=emb_cfg.eoi_token_id)


def _embed(cfg, emb, tokens):
  """`emb` = (config, params) of the embedder: the stack's own, or (T5Gemma 2) the encoder's."""
  emb_cfg, emb_params = emb
  x = _embedder(emb_cfg).apply({'params': emb_params}, tokens, method='encode')
  return x.astype(cfg.compute_dtype)


def _logits(cfg, emb, x):
  emb_cfg, emb_params = emb
  logits = _embedder(emb_cfg).apply({'params': emb_params}, x, method='attend')
  return layers.soft_cap(logits, cfg.final_logit_soft_cap)


def _rope(cfg, positions):
  return layers.stack_ropes(positions, cfg)


def _stack_prefill(cfg, stack, tokens, lengths, *, max_length, bidirectional, cross, emb):
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
                       bidirectional=prefix, causal=True,
                       bidirectional_window=cfg.bidirectional_window)
  positions = jnp.broadcast_to(idx, (batch, length))
  x = _embed(cfg, emb, tokens)
  x, caches = _run_stack(cfg, stack, x, _rope(cfg, positions), mode='prefill', caches=None,
                         prompt_mask=mask, lengths=lengths, max_length=max_length,
                         positions=None, cross=cross)
  last = jnp.take_along_axis(x, jnp.clip(lengths - 1, 0, length - 1)[:, None, None], axis=1)
  return _logits(cfg, emb, last)[:, 0], caches


def _stack_step(cfg, stack, caches, tokens, positions, cross, emb):
  tokens = jnp.asarray(tokens, jnp.int32)[:, None]
  positions = jnp.asarray(positions, jnp.int32)
  x = _embed(cfg, emb, tokens)
  x, caches = _run_stack(cfg, stack, x, _rope(cfg, positions[:, None]), mode='step',
                         caches=caches, prompt_mask=None, lengths=None, max_length=None,
                         positions=positions, cross=cross)
  return _logits(cfg, emb, x)[:, 0], caches


def _emb(config, params):
  """(config, params) of the embedder the decoder side reads and writes through."""
  if isinstance(config, EncoderDecoderConfig):
    if config.merged_attention:  # T5Gemma 2: one tied embedding, the encoder's
      return config.encoder, params['encoder']['embedder']
    return config.decoder, params['decoder']['embedder']
  return config, params['embedder']


def _encoder_decoder_cross(config, params, encoder_tokens):
  # pylint: disable=g-import-not-at-top
  from trainer.model.tied_encoder_decoder import TiedEncoderDecoder
  from trainer.model.transformer import EncoderDecoder
  merged = config.merged_attention
  module = TiedEncoderDecoder(config) if merged else EncoderDecoder(config)
  encoder_tokens = jnp.asarray(encoder_tokens, jnp.int32)
  encoded = module.apply({'params': params}, encoder_tokens, method='encode')
  cfg, stack = config.decoder, params['decoder']
  cross, first_unrolled = {}, 0
  if cfg.scan_layers:
    blocks = stack[scan_layout.SCAN_KEY]
    cross = {key: jax.vmap(lambda p: _cross_kv(cfg, p, encoded, merged))(blocks[key])
             for key in blocks}
    first_unrolled = cfg.num_scanned_layers  # remainder layers, unrolled beside the blocks
  cross.update({f'layer_{i}': _cross_kv(cfg, stack[f'layer_{i}'], encoded, merged)
                for i in range(first_unrolled, cfg.num_layers)})
  return cross, (encoder_tokens != 0)


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
  params = meta.unbox(params)
  if isinstance(config, EncoderDecoderConfig):
    if encoder_tokens is None:
      raise ValueError('an encoder-decoder prefill needs encoder_tokens')
    cross, valid = _encoder_decoder_cross(config, params, encoder_tokens)
    cross['mask'] = AttentionMask(kv_segment_ids=valid.astype(jnp.int32))
    cross['merged'] = config.merged_attention
    logits, caches = _stack_prefill(config.decoder, params['decoder'], tokens, lengths,
                                    max_length=max_length, bidirectional=False, cross=cross,
                                    emb=_emb(config, params))
    del cross['mask'], cross['merged']
    return logits, {'self': caches, 'cross': cross, 'encoder_valid': valid}
  logits, caches = _stack_prefill(config, params, tokens, lengths, max_length=max_length,
                                  bidirectional=bidirectional_prompt, cross=None,
                                  emb=_emb(config, params))
  return logits, {'self': caches}


def step(config, params, cache: Cache, *, tokens, positions) -> Tuple[jax.Array, Cache]:
  """Feeds one token per row (`tokens [B]` at `positions [B]`); returns (logits [B, V], cache)."""
  params = meta.unbox(params)
  if isinstance(config, EncoderDecoderConfig):
    cross = dict(cache['cross'],
                 mask=AttentionMask(kv_segment_ids=cache['encoder_valid'].astype(jnp.int32)),
                 merged=config.merged_attention)
    logits, caches = _stack_step(config.decoder, params['decoder'], cache['self'], tokens,
                                 positions, cross, _emb(config, params))
    return logits, dict(cache, self=caches)
  logits, caches = _stack_step(config, params, cache['self'], tokens, positions, None,
                               _emb(config, params))
  return logits, {'self': caches}


def reorder(config, cache: Cache, index) -> Cache:
  """Rows of the cache gathered by `index [B']` (beam search: each beam takes its parent's cache).

  Scanned stacks keep the layer-group axis first, so the batch axis of their `block_j` entries
  is 1 (that of an unrolled remainder's `layer_i` entries stays 0)."""
  del config  # the layout is read from the cache's keys

  def take(tree, ax):
    return jax.tree_util.tree_map(lambda x: jnp.take(x, index, axis=ax), tree)

  def take_layers(layers_cache):
    return {key: take(value, 1 if key.startswith(scan_layout.BLOCK_PREFIX) else 0)
            for key, value in layers_cache.items()}

  out = {'self': take_layers(cache['self'])}
  if 'cross' in cache:
    out['cross'] = take_layers(cache['cross'])
    out['encoder_valid'] = take(cache['encoder_valid'], 0)
  return out
