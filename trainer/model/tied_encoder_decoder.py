"""T5Gemma 2 assembly: bidirectional Gemma 3 encoder + merged-attention decoder, one tied embedding.

`TiedEncoderDecoder(config)` for an `EncoderDecoderConfig` with `merged_attention=True`; the same
call signature as `trainer.model.transformer.EncoderDecoder` (`encode`, `decode`, `__call__`), so
`trainer.training.models.EncoderDecoderModel`, losses, distillation and the benchmark run it
unchanged. What HF `T5Gemma2ForConditionalGeneration` computes on text inputs:

- encoder: a Gemma 3 stack (QK-norm, local/global RoPE bases), bidirectional, its sliding layers
  windowed with the config's `bidirectional_window` ('split' for HF T5Gemma 2);
- decoder: Gemma 3 blocks whose attention is `trainer.model.merged_attention.MergedAttention`
  (keys/values: the decoder's own states, causal and windowed on sliding layers, followed by the
  encoder outputs); no cross-attention sub-layer;
- one embedding, the encoder's: it embeds encoder and decoder tokens (times sqrt(D)) and is the
  output projection (HF ties `decoder.embed_tokens` and `lm_head.out_proj` to it).

Params: {'encoder': {'embedder', 'layer_{i}' | 'layers', 'final_norm'},
         'decoder': {'layer_{i}' | 'layers', 'final_norm'}}  (no decoder embedder: tied).
Each decoder layer has the names and shapes of a Gemma 3 decoder-only layer ('self_attn' with
q/k/v/o_proj, q_norm, k_norm), so adaptation copies layers as they are.
"""
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from trainer.model import layers
from trainer.model import transformer
from trainer.model.config import EncoderDecoderConfig
from trainer.model.merged_attention import MergedMask
from trainer.model.reference_attention import AttentionMask


class _MergedDecoder(transformer._Stack):  # pylint: disable=protected-access
  """Decoder side: merged-attention blocks, no embedder (see TiedEncoderDecoder)."""
  merged_attention: ClassVar[bool] = True


class TiedEncoderDecoder(nn.Module):
  """See the module docstring."""
  config: EncoderDecoderConfig

  def setup(self):
    if not self.config.merged_attention:
      raise ValueError('TiedEncoderDecoder needs EncoderDecoderConfig.merged_attention=True '
                       '(use trainer.model.transformer.EncoderDecoder for T5Gemma)')
    self.encoder = transformer._Stack(self.config.encoder)  # pylint: disable=protected-access
    self.decoder = _MergedDecoder(self.config.decoder)

  def encode(self, encoder_tokens, *, encoder_positions=None, encoder_segment_ids=None,
             deterministic=True):
    """-> encoder hidden states [B, Le, D]. `encoder_segment_ids=None` means tokens != 0."""
    transformer._check_tokens('encoder_tokens', encoder_tokens,  # pylint: disable=protected-access
                              encoder_positions=encoder_positions,
                              encoder_segment_ids=encoder_segment_ids)
    if encoder_segment_ids is None:
      encoder_segment_ids = (encoder_tokens != 0).astype(jnp.int32)
    mask = AttentionMask(q_segment_ids=encoder_segment_ids, kv_segment_ids=encoder_segment_ids,
                         causal=self.config.causal_encoder)
    return self.encoder.hidden(encoder_tokens, encoder_positions, mask, None, None, deterministic)

  def decode(self, encoded, decoder_tokens, *, encoder_segment_ids=None, decoder_positions=None,
             decoder_segment_ids=None, deterministic=True, return_hidden=False):
    """Encoder hidden states [B, Le, D] + decoder tokens [B, Ld] -> fp32 logits [B, Ld, V].

    Masks as `EncoderDecoder.decode`: decoder segment k sees its own causal prefix and encoder
    segment k (when both segment ids are given); encoder positions with segment id 0 are never
    attended; `encoder_segment_ids=None` = all encoder positions valid.
    """
    self_mask, cross_mask = transformer.decoder_masks(
        encoded, decoder_tokens, encoded_width=self.config.decoder.embed_dim,
        width_name='decoder.embed_dim', encoder_segment_ids=encoder_segment_ids,
        decoder_positions=decoder_positions, decoder_segment_ids=decoder_segment_ids)
    mask = MergedMask(self_mask=self_mask, cross_mask=cross_mask,
                      encoder_length=encoded.shape[1])
    embedder = self.encoder.embedder
    x = embedder.encode(decoder_tokens).astype(self.config.decoder.compute_dtype)
    x = self.decoder.hidden_from_embeddings(x, decoder_positions, mask, encoded, None,
                                            deterministic)
    if return_hidden:
      return x
    logits = embedder.attend(x)
    logits = layers.soft_cap(logits, self.config.decoder.final_logit_soft_cap)
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))

  def __call__(self, encoder_tokens, decoder_tokens, *, encoder_positions=None,
               encoder_segment_ids=None, decoder_positions=None, decoder_segment_ids=None,
               deterministic=True, return_hidden=False):
    return transformer.encode_then_decode(
        self, encoder_tokens, decoder_tokens, encoder_positions=encoder_positions,
        encoder_segment_ids=encoder_segment_ids, decoder_positions=decoder_positions,
        decoder_segment_ids=decoder_segment_ids, deterministic=deterministic,
        return_hidden=return_hidden)
