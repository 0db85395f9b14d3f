"""Gemma 2 assemblies: `Decoder` (decoder-only / PrefixLM), `Encoder`, `EncoderDecoder` (T5Gemma).

All three are built from one `Block` (pre/post-norm attention, optional pre/post-norm
cross-attention, pre/post-norm GeGLU MLP) and compute what HF `Gemma2ForCausalLM` / `T5GemmaEncoder` /
`T5GemmaForConditionalGeneration` compute. Contracts (call signatures, parameter names, logical axis
names) are in docs/DESIGN.md ("Model").

Padding conventions (pad id 0, as in Gemma and seqio vocabularies):
- `segment_ids` given: 0 = padding, equal ids attend to each other (packing).
- `Decoder`, `segment_ids=None`: every position is real (causal attention never looks at trailing
  padding; the loss weights drop it). Decoder input tokens may legitimately be 0 (seqio shifts
  targets right with id 0).
- `Encoder` / encoder side of `EncoderDecoder`, `segment_ids=None`: `tokens != 0` (T5X's
  `encoder_input_tokens > 0`, HF T5Gemma's default attention mask).
"""
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from trainer.model import dropout as dropout_lib
from trainer.model import layers
from trainer.model import scan_layout
from trainer.model.attention import Attention
from trainer.model.merged_attention import MergedAttention
from trainer.model.reference_attention import AttentionMask
from trainer.model.config import EncoderDecoderConfig, TransformerConfig

_EMBED_AXES = ('batch', 'length', 'embed')

_REMAT_POLICIES = {
    'full': None,  # save nothing, recompute the block
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nn.Module):
  """One Gemma 2 layer; with `cross_attention`, a T5Gemma decoder layer (self, cross, MLP).

  Each sub-layer: `x + dropout(post_norm(sublayer(pre_norm(x))))`. With `merged_attention`, a
  T5Gemma 2 decoder layer: 'self_attn' is a `MergedAttention` over the decoder's states and
  `encoded` (`self_mask` is then a `MergedMask`), and there is no cross-attention sub-layer.
  """
  config: TransformerConfig
  cross_attention: bool = False
  merged_attention: bool = False

  @nn.compact
  def __call__(self, x, rope, self_mask, encoded, cross_mask, deterministic):
    # Positional arguments only (nn.remat passes them through jax.checkpoint; `deterministic` is
    # static argument 6, counting self as 0).
    cfg = self.config

    def norm(name):
      return layers.RMSNorm(eps=cfg.rms_norm_eps, param_dtype=cfg.parameter_dtype, name=name)

    def dropout(h):
      return dropout_lib.Dropout(rate=cfg.dropout_rate)(h, deterministic=deterministic)

    h = norm('pre_attention_norm')(x)
    if self.merged_attention:
      h = MergedAttention(cfg, name='self_attn')(h, mask=self_mask, encoded=encoded, rope=rope)
    else:
      h = Attention(cfg, name='self_attn')(h, mask=self_mask, rope=rope)
    h = norm('post_attention_norm')(h)
    x = nn.with_logical_constraint(x + dropout(h), _EMBED_AXES)

    if self.cross_attention:
      h = norm('pre_cross_attn_norm')(x)
      h = Attention(cfg, name='cross_attn')(h, mask=cross_mask, kv_inputs=encoded)
      h = norm('post_cross_attn_norm')(h)
      x = nn.with_logical_constraint(x + dropout(h), _EMBED_AXES)

    h = norm('pre_feedforward_norm')(x)
    h = layers.MLP(cfg, name='mlp')(h, deterministic=deterministic)
    h = norm('post_feedforward_norm')(h)
    return nn.with_logical_constraint(x + dropout(h), _EMBED_AXES)


def _block_class(config: TransformerConfig):
  if config.remat == 'none':
    return Block
  return nn.remat(Block, policy=_REMAT_POLICIES[config.remat], static_argnums=(6,))


class _BlockGroup(nn.Module):
  """One `nn.scan` step of a scanned stack: `config.scan_period` consecutive blocks named
  'block_{j}' (at step g, block_j is layer g * period + j, so its window is `layer_window(j)`).
  The remat policy applies to each block inside the scanned body, as in the unrolled stack.
  `ropes` are the stack's RoPE tables (`layers.stack_ropes`); block_j uses `layer_rope_index(j)`."""
  config: TransformerConfig
  cross_attention: bool = False
  merged_attention: bool = False

  @nn.compact
  def __call__(self, x, ropes, self_mask, encoded, cross_mask, deterministic):
    cfg = self.config
    block_cls = _block_class(cfg)
    for j in range(cfg.scan_period):
      block = block_cls(cfg, cross_attention=self.cross_attention,
                        merged_attention=self.merged_attention,
                        name=f'{scan_layout.BLOCK_PREFIX}{j}')
      x = block(x, ropes[cfg.layer_rope_index(j)], self_mask.with_window(cfg.layer_window(j)),
                encoded, cross_mask, deterministic)
    return x, None


def _scanned_blocks(config: TransformerConfig, cross_attention: bool,
                    merged_attention: bool = False) -> nn.Module:
  """`_BlockGroup` under `nn.scan`: params stacked on a leading axis named 'layers' (logical axis,
  unsharded by the default rules); each step gets its own dropout key."""
  scanned = nn.scan(_BlockGroup,
                    variable_axes={'params': 0},
                    split_rngs={'params': True, 'dropout': True},
                    in_axes=(nn.broadcast,) * 5,  # rope, masks, encoded, deterministic
                    length=config.num_layers // config.scan_period,  # whole periods only
                    metadata_params={nn.PARTITION_NAME: scan_layout.SCAN_KEY})
  return scanned(config, cross_attention=cross_attention, merged_attention=merged_attention)


def _default_positions(tokens):
  return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)


class _Stack(nn.Module):
  """Embedder + blocks + final norm, shared by the assemblies (param names as in DESIGN.md:
  'embedder', 'layer_{i}', 'final_norm' at the top of the module's tree; with
  `config.scan_layers`, 'layers': {'block_{j}': stacked} instead of 'layer_{i}', except the
  unrolled remainder when the period does not divide the layers, see `trainer.model.scan_layout`).

  Subclasses set `cross_attention` (T5Gemma decoder blocks) or `merged_attention` (T5Gemma 2
  decoder blocks; such a stack has no embedder of its own: `hidden_from_embeddings` takes the
  tied embedding's output, `trainer.model.tied_encoder_decoder`).
  """
  config: TransformerConfig
  cross_attention: ClassVar[bool] = False
  merged_attention: ClassVar[bool] = False

  def setup(self):
    cfg = self.config
    if not self.merged_attention:
      self.embedder = layers.Embedder(vocab_size=cfg.vocab_size, embed_dim=cfg.embed_dim,
                                      dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype,
                                      eoi_token_id=cfg.eoi_token_id)
    first_unrolled = 0
    if cfg.scan_layers:
      # Named 'layers' by the attribute: params {'layers': {'block_0': ..., ...}} (scan_layout).
      self.layers = _scanned_blocks(cfg, self.cross_attention, self.merged_attention)
      first_unrolled = cfg.num_scanned_layers  # the remainder of an incomplete last period
    block_cls = _block_class(cfg)
    for i in range(first_unrolled, cfg.num_layers):
      # setattr names the submodule 'layer_{i}' (flax takes setup names from attributes).
      setattr(self, f'layer_{i}', block_cls(cfg, cross_attention=self.cross_attention,
                                            merged_attention=self.merged_attention))
    self.final_norm = layers.RMSNorm(eps=cfg.rms_norm_eps, param_dtype=cfg.parameter_dtype)
    self.dropout = dropout_lib.Dropout(rate=cfg.dropout_rate)

  def hidden(self, tokens, positions, self_mask, encoded, cross_mask, deterministic):
    x = self.embedder.encode(tokens)
    return self.hidden_from_embeddings(x, positions, self_mask, encoded, cross_mask,
                                       deterministic)

  def hidden_from_embeddings(self, x, positions, self_mask, encoded, cross_mask, deterministic):
    """`hidden` after the embedding lookup: x [B, L, D] (scaled embeddings) -> final hidden."""
    cfg = self.config
    if positions is None:
      positions = _default_positions(x[..., 0])
    if cfg.bidirectional_window != 'symmetric' and isinstance(self_mask, AttentionMask):
      self_mask = self_mask.replace(bidirectional_window=cfg.bidirectional_window)
    x = nn.with_logical_constraint(x, _EMBED_AXES)
    x = self.dropout(x, deterministic=deterministic)
    ropes = layers.stack_ropes(positions, cfg)  # (global,) or (global, local): layer_rope_index
    first_unrolled = 0
    if cfg.scan_layers:
      x, _ = self.layers(x, ropes, self_mask, encoded, cross_mask, deterministic)
      first_unrolled = cfg.num_scanned_layers
    for i in range(first_unrolled, cfg.num_layers):
      block = getattr(self, f'layer_{i}')
      x = block(x, ropes[cfg.layer_rope_index(i)], self_mask.with_window(cfg.layer_window(i)),
                encoded, cross_mask, deterministic)
    x = self.final_norm(x)
    return self.dropout(x, deterministic=deterministic)

  def logits(self, x):
    logits = self.embedder.attend(x)
    logits = layers.soft_cap(logits, self.config.final_logit_soft_cap)
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


def _check_tokens(name, tokens, **others):
  if tokens.ndim != 2:
    raise ValueError(f'{name} must be [batch, length], got shape {tokens.shape}')
  for other_name, value in others.items():
    if value is not None and value.shape != tokens.shape:
      raise ValueError(f'{other_name} shape {value.shape} != {name} shape {tokens.shape}')


class Decoder(_Stack):
  """Decoder-only Gemma 2 (causal; optional bidirectional PrefixLM prefix).

  __call__(tokens [B, L], *, positions, segment_ids, causal_attention, deterministic)
    -> fp32 logits [B, L, V] (final soft-cap applied).
  Params: {'embedder', 'layer_0', ..., 'final_norm'} as in docs/DESIGN.md.
  """
  def __call__(self, tokens, *, positions=None, segment_ids=None, causal_attention=None,
               deterministic=True, return_hidden=False):
    """`return_hidden=True` returns the final hidden states [B, L, D] instead of the logits (for a
    loss that computes the logits in chunks, `trainer.training.chunked_xent`)."""
    _check_tokens('tokens', tokens, positions=positions, segment_ids=segment_ids,
                  causal_attention=causal_attention)
    mask = AttentionMask(q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                         bidirectional=causal_attention, causal=True)
    x = self.hidden(tokens, positions, mask, None, None, deterministic)
    return x if return_hidden else self.logits(x)


class Encoder(_Stack):
  """Bidirectional Gemma 2 encoder (Gemma Encoder / T5Gemma encoder).

  __call__(tokens [B, L], *, positions, segment_ids, deterministic) -> hidden [B, L, D] after the
  final norm, in the compute dtype. `segment_ids=None` means `tokens != 0`.
  """
  def __call__(self, tokens, *, positions=None, segment_ids=None, deterministic=True):
    _check_tokens('tokens', tokens, positions=positions, segment_ids=segment_ids)
    if segment_ids is None:
      segment_ids = (tokens != 0).astype(jnp.int32)
    mask = AttentionMask(q_segment_ids=segment_ids, kv_segment_ids=segment_ids, causal=False)
    return self.hidden(tokens, positions, mask, None, None, deterministic)


class _CrossAttentionDecoder(_Stack):
  """Decoder side of EncoderDecoder: blocks with cross-attention (see EncoderDecoder.decode)."""
  cross_attention: ClassVar[bool] = True


def decoder_masks(encoded, decoder_tokens, *, encoded_width: int, width_name: str,
                  encoder_segment_ids=None, decoder_positions=None, decoder_segment_ids=None):
  """Checks an encoder-decoder's decode inputs; (decoder self-attention mask, cross mask).

  Decoder segment k sees its own causal prefix and encoder segment k (when both segment ids are
  given); encoder positions with segment id 0 are never attended; `encoder_segment_ids=None`: all
  encoder positions valid.
  """
  _check_tokens('decoder_tokens', decoder_tokens, decoder_positions=decoder_positions,
                decoder_segment_ids=decoder_segment_ids)
  if encoded.shape[0] != decoder_tokens.shape[0]:
    raise ValueError(f'encoded batch {encoded.shape[0]} != decoder_tokens batch '
                     f'{decoder_tokens.shape[0]}')
  if encoded.shape[-1] != encoded_width:
    raise ValueError(f'encoded width {encoded.shape[-1]} != {width_name} {encoded_width}')
  self_mask = AttentionMask(q_segment_ids=decoder_segment_ids,
                            kv_segment_ids=decoder_segment_ids, causal=True)
  cross_mask = AttentionMask(
      q_segment_ids=decoder_segment_ids if encoder_segment_ids is not None else None,
      kv_segment_ids=encoder_segment_ids, causal=False)
  return self_mask, cross_mask


def encode_then_decode(model, encoder_tokens, decoder_tokens, *, encoder_positions=None,
                       encoder_segment_ids=None, decoder_positions=None,
                       decoder_segment_ids=None, deterministic=True, return_hidden=False):
  """An encoder-decoder's forward: `model.encode`, then `model.decode` (encoder segment ids
  default to the non-padding positions, token id 0 being padding)."""
  if encoder_segment_ids is None:
    encoder_segment_ids = (encoder_tokens != 0).astype(jnp.int32)
  encoded = model.encode(encoder_tokens, encoder_positions=encoder_positions,
                         encoder_segment_ids=encoder_segment_ids, deterministic=deterministic)
  return model.decode(encoded, decoder_tokens, encoder_segment_ids=encoder_segment_ids,
                      decoder_positions=decoder_positions,
                      decoder_segment_ids=decoder_segment_ids, deterministic=deterministic,
                      return_hidden=return_hidden)


class EncoderDecoder(nn.Module):
  """T5Gemma encoder-decoder: Encoder + Decoder whose blocks add cross-attention (global, no RoPE,
  soft-capped, K/V from the encoder's final hidden states). Logits use the decoder's tied embedding.

  Params: {'encoder': {...}, 'decoder': {...}} (decoder layers also have 'pre_cross_attn_norm',
  'cross_attn', 'post_cross_attn_norm').
  """
  config: EncoderDecoderConfig

  def setup(self):
    self.encoder = _Stack(self.config.encoder)
    self.decoder = _CrossAttentionDecoder(self.config.decoder)

  def encode(self, encoder_tokens, *, encoder_positions=None, encoder_segment_ids=None,
             deterministic=True):
    """-> encoder hidden states [B, Le, D_enc]. `encoder_segment_ids=None` means tokens != 0."""
    _check_tokens('encoder_tokens', encoder_tokens, encoder_positions=encoder_positions,
                  encoder_segment_ids=encoder_segment_ids)
    if encoder_segment_ids is None:
      encoder_segment_ids = (encoder_tokens != 0).astype(jnp.int32)
    mask = AttentionMask(q_segment_ids=encoder_segment_ids, kv_segment_ids=encoder_segment_ids,
                         causal=self.config.causal_encoder)
    return self.encoder.hidden(encoder_tokens, encoder_positions, mask, None, None, deterministic)

  def decode(self, encoded, decoder_tokens, *, encoder_segment_ids=None, decoder_positions=None,
             decoder_segment_ids=None, deterministic=True, return_hidden=False):
    """Encoder hidden states [B, Le, D_enc] + decoder tokens [B, Ld] -> fp32 logits [B, Ld, V].

    Cross-attention: decoder segment k sees encoder segment k (when both segment ids are given);
    encoder positions with segment id 0 are never attended; `encoder_segment_ids=None` = all valid.
    """
    self_mask, cross_mask = decoder_masks(
        encoded, decoder_tokens, encoded_width=self.config.encoder.embed_dim,
        width_name='encoder.embed_dim', encoder_segment_ids=encoder_segment_ids,
        decoder_positions=decoder_positions, decoder_segment_ids=decoder_segment_ids)
    x = self.decoder.hidden(decoder_tokens, decoder_positions, self_mask, encoded, cross_mask,
                            deterministic)
    return x if return_hidden else self.decoder.logits(x)

  def __call__(self, encoder_tokens, decoder_tokens, *, encoder_positions=None,
               encoder_segment_ids=None, decoder_positions=None, decoder_segment_ids=None,
               deterministic=True, return_hidden=False):
    return encode_then_decode(
        self, encoder_tokens, decoder_tokens, encoder_positions=encoder_positions,
        encoder_segment_ids=encoder_segment_ids, decoder_positions=decoder_positions,
        decoder_segment_ids=decoder_segment_ids, deterministic=deterministic,
        return_hidden=return_hidden)
