"""Generative models on classification tasks: greedy decoding and label-word scoring (no TF).

Both take *unpacked* text-to-text features as `seqio.EncDecFeatureConverter(pack=False)` makes
them, which keep the task's `inputs` and `targets` apart for either model kind:
  {'encoder_input_tokens': [B, Li] (the inputs, 0-padded), 'decoder_target_tokens': [B, Lt], ...}
and return token ids per example (what seqio's Evaluator decodes and postprocesses).

Decoder-only models see the PrefixLM layout seqio's `PrefixLMFeatureConverter` trains them on:
  decoder_input_tokens = [0, x_1 .. x_n, y_1 .. y_m-1], causal_attention = 1 on the first n + 1
  positions (when the model is a PrefixLM), and position n + k predicts y_{k+1}.
Encoder-decoder models: the encoder reads x; the decoder input is [0, y_1 .. y_m-1].

* `greedy_decode`: argmax token by token until EOS (id 1) or `max_decode_length`, over the KV
  cache (`trainer.inference.decoding.generate`: the prompt prefilled once, one cached step per
  token).
* `score_candidates` / `label_word_predictions`: the summed log-probability of each candidate
  target (e.g. the token ids of 'negative</s>' and 'positive</s>') given the inputs; the prediction
  is the best candidate's ids. The inputs are prefilled once; each candidate is teacher-forced
  through cached steps (`trainer.inference.decoding.score_continuations`). This never produces an out-of-vocabulary answer, so it measures
  what the model knows rather than whether it learned the output format.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from trainer.inference import decoding

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


def prompt_layout(model, inputs: np.ndarray):
  """(prompt [B, L], lengths [B], bidirectional) in the layout `model` was trained on: the inputs
  as they are (encoder-decoder), or seqio's `[0, x_1 .. x_n]` (decoder-only; a bidirectional prefix
  when the model is a PrefixLM)."""
  inputs = np.asarray(inputs, np.int32)
  if model_kind(model) == 'encoder_decoder':
    return inputs, _lengths(inputs), False
  n = _lengths(inputs)
  prompt = np.zeros((inputs.shape[0], inputs.shape[1] + 1), np.int32)
  for b in range(inputs.shape[0]):
    prompt[b, 1:n[b] + 1] = inputs[b, :n[b]]
  return prompt, n + 1, bool(getattr(model, 'prefix_lm', False))


def greedy_decode(model, params, batch, *, max_decode_length: int) -> List[List[int]]:
  """Greedy continuation ids per example (EOS included when produced, nothing after it), decoded
  with the KV cache (`trainer.inference.decoding`)."""
  prompt, lengths, bidirectional = prompt_layout(model, batch['encoder_input_tokens'])
  out = decoding.generate(config=model.config, params=params, prompt_tokens=prompt,
                          prompt_lengths=lengths, max_decode_length=max_decode_length,
                          method='greedy', eos_id=EOS_ID, bidirectional_prompt=bidirectional)
  results = []
  for row, n in zip(out.tokens, out.lengths):
    ids = row[:n].tolist()
    results.append(ids if EOS_ID in ids else [i for i in ids if i])
  return results


def score_candidates(model, params, batch, candidates: Sequence[Sequence[int]]) -> np.ndarray:
  """Summed log p(candidate | inputs), float [B, num_candidates] (the inputs prefilled once)."""
  prompt, lengths, bidirectional = prompt_layout(model, batch['encoder_input_tokens'])
  return decoding.score_continuations(config=model.config, params=params, prompt_tokens=prompt,
                                      prompt_lengths=lengths, candidates=candidates,
                                      bidirectional_prompt=bidirectional).astype(np.float32)


def label_word_predictions(model, params, batch,
                           candidates: Sequence[Sequence[int]]) -> List[List[int]]:
  """The ids of the best-scoring candidate per example."""
  best = score_candidates(model, params, batch, candidates).argmax(axis=-1)
  return [list(candidates[i]) for i in best]

