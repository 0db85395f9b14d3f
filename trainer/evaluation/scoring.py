"""Generative models on classification tasks: greedy decoding and label-word scoring (no TF).

Both take *unpacked* text-to-text features as `seqio.EncDecFeatureConverter(pack=False)` makes
them, which keep the task's `inputs` and `targets` apart for either model kind:
  {'encoder_input_tokens': [B, Li] (the inputs, 0-padded), 'decoder_target_tokens': [B, Lt], ...}
and return token ids per example (what seqio's Evaluator decodes and postprocesses).

Decoder-only models see the PrefixLM layout seqio's `PrefixLMFeatureConverter` trains them on:
  decoder_input_tokens = [0, x_1 .. x_n, y_1 .. y_m-1], causal_attention = 1 on the first n + 1
  positions (when the model is a PrefixLM), and position n + k predicts y_{k+1}.
Encoder-decoder models: the encoder reads x; the decoder input is [0, y_1 .. y_m-1].

* `greedy_decode`: argmax token by token until EOS (id 1) or `max_decode_length`; every step
  re-runs the model on the whole prefix (no KV cache: label words are a few tokens; a cache would
  be the first thing to add for long generations).
* `score_candidates` / `label_word_predictions`: the summed log-probability of each candidate
  target (e.g. the token ids of 'negative</s>' and 'positive</s>') given the inputs; the prediction
  is the best candidate's ids. This never produces an out-of-vocabulary answer, so it measures
  what the model knows rather than whether it learned the output format.
"""
from __future__ import annotations

from typing import List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

EOS_ID = 1


def model_kind(model) -> str:
  """'decoder_only' | 'encoder_decoder' from a `trainer.training.models` wrapper."""
  name = type(model).__name__
  if name == 'DecoderOnlyModel' or hasattr(model, 'prefix_lm'):
    return 'decoder_only'
  if name == 'EncoderDecoderModel' or hasattr(getattr(model, 'module', None), 'encode'):
    return 'encoder_decoder'
  raise ValueError(f'generative scoring needs a DecoderOnlyModel or EncoderDecoderModel, got '
                   f'{type(model).__name__}')


def _lengths(tokens: np.ndarray) -> np.ndarray:
  return (np.asarray(tokens) > 0).sum(axis=-1)


def _prefix_batch(inputs: np.ndarray, continuation: np.ndarray, prefix_lm: bool):
  """Decoder-only rows [0, x.., c..] with causal_attention over [0, x..] when `prefix_lm`."""
  n = _lengths(inputs)
  m = continuation.shape[1]
  total = 1 + inputs.shape[1] + m
  tokens = np.zeros((inputs.shape[0], total), np.int32)
  seg = np.zeros_like(tokens)
  causal = np.zeros_like(tokens)
  for b in range(inputs.shape[0]):
    row = np.concatenate([[0], inputs[b, :n[b]], continuation[b]])
    tokens[b, :len(row)] = row
    seg[b, :len(row)] = 1
    if prefix_lm:
      causal[b, :n[b] + 1] = 1
  return tokens, seg, causal, n


_JIT_CACHE = {}


def _fns(model):
  """Jitted forward functions of `model` (compiled once per model and batch shape)."""
  key = id(model)
  if key not in _JIT_CACHE:
    prefix_lm = bool(getattr(model, 'prefix_lm', False))

    def dec_only(params, tokens, seg, causal):
      kwargs = dict(segment_ids=seg)
      if prefix_lm:
        kwargs['causal_attention'] = causal
      return model.module.apply({'params': params}, tokens, **kwargs)

    def encode(params, inputs, enc_seg):
      return model.module.apply({'params': params}, inputs, encoder_segment_ids=enc_seg,
                                method='encode')

    def decode(params, encoded, enc_seg, dec_in, dec_seg):
      return model.module.apply({'params': params}, encoded, dec_in, encoder_segment_ids=enc_seg,
                                decoder_segment_ids=dec_seg, method='decode')

    _JIT_CACHE[key] = (model, {'decoder_only': jax.jit(dec_only), 'encode': jax.jit(encode),
                               'decode': jax.jit(decode)})
  return _JIT_CACHE[key][1]


def greedy_decode(model, params, batch, *, max_decode_length: int) -> List[List[int]]:
  """Greedy continuation ids per example (EOS included when produced, nothing after it)."""
  inputs = np.asarray(batch['encoder_input_tokens'])
  bsz = inputs.shape[0]
  out = np.zeros((bsz, max_decode_length), np.int32)
  done = np.zeros(bsz, bool)
  kind = model_kind(model)
  fns = _fns(model)
  if kind == 'encoder_decoder':
    enc_seg = jnp.asarray((inputs > 0).astype(np.int32))
    encoded = fns['encode'](params, jnp.asarray(inputs), enc_seg)
  for k in range(max_decode_length):
    if kind == 'encoder_decoder':
      dec_in = np.concatenate([np.zeros((bsz, 1), np.int32), out[:, :k]], axis=1)
      dec_in = np.pad(dec_in, [(0, 0), (0, max_decode_length - k - 1)])
      seg = np.zeros_like(dec_in)
      seg[:, :k + 1] = 1
      logits = fns['decode'](params, encoded, enc_seg, jnp.asarray(dec_in), jnp.asarray(seg))
      next_ids = np.asarray(jnp.argmax(logits[:, k], axis=-1))
    else:
      cont = np.pad(out[:, :k], [(0, 0), (0, max_decode_length - k)])
      tokens, seg, causal, n = _prefix_batch(inputs, cont, getattr(model, 'prefix_lm', False))
      # Only the first n + 1 + k positions are real; mark the rest as padding.
      seg = (np.arange(tokens.shape[1])[None, :] < (n[:, None] + 1 + k)).astype(np.int32)
      tokens = tokens * seg
      logits = fns['decoder_only'](params, jnp.asarray(tokens), jnp.asarray(seg),
                                   jnp.asarray(causal))
      next_ids = np.asarray(jnp.argmax(logits[np.arange(bsz), n + k], axis=-1))
    out[:, k] = np.where(done, 0, next_ids)
    done |= next_ids == EOS_ID
    if done.all():
      break
  results = []
  for row in out:
    ids = row.tolist()
    results.append(ids[:ids.index(EOS_ID) + 1] if EOS_ID in ids else [i for i in ids if i])
  return results


def score_candidates(model, params, batch, candidates: Sequence[Sequence[int]]) -> np.ndarray:
  """Summed log p(candidate | inputs), float [B, num_candidates]."""
  inputs = np.asarray(batch['encoder_input_tokens'])
  bsz = inputs.shape[0]
  m = max(len(c) for c in candidates)
  kind = model_kind(model)
  fns = _fns(model)
  scores = np.zeros((bsz, len(candidates)), np.float32)
  for ci, cand in enumerate(candidates):
    target = np.zeros((bsz, m), np.int32)
    target[:, :len(cand)] = np.asarray(cand, np.int32)
    weights = (target > 0).astype(np.float32)
    if kind == 'encoder_decoder':
      dec_in = np.concatenate([np.zeros((bsz, 1), np.int32), target[:, :-1]], axis=1)
      enc_seg = jnp.asarray((inputs > 0).astype(np.int32))
      encoded = fns['encode'](params, jnp.asarray(inputs), enc_seg)
      logits = fns['decode'](params, encoded, enc_seg, jnp.asarray(dec_in),
                             jnp.asarray((target > 0).astype(np.int32)))
      logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
      tok = np.asarray(jnp.take_along_axis(logp, jnp.asarray(target)[..., None], -1)[..., 0])
    else:
      tokens, seg, causal, n = _prefix_batch(inputs, target[:, :-1],
                                             getattr(model, 'prefix_lm', False))
      seg = (np.arange(tokens.shape[1])[None, :] < (n[:, None] + m)).astype(np.int32)
      tokens = tokens * seg
      logits = fns['decoder_only'](params, jnp.asarray(tokens), jnp.asarray(seg),
                                   jnp.asarray(causal))
      logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
      idx = n[:, None] + np.arange(m)[None, :]  # position n + j predicts target j
      tok = np.take_along_axis(logp[np.arange(bsz)[:, None], idx], target[..., None], -1)[..., 0]
    scores[:, ci] = (tok * weights).sum(axis=-1)
  return scores


def label_word_predictions(model, params, batch,
                           candidates: Sequence[Sequence[int]]) -> List[List[int]]:
  """The ids of the best-scoring candidate per example."""
  best = score_candidates(model, params, batch, candidates).argmax(axis=-1)
  return [list(candidates[i]) for i in best]

