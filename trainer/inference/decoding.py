"""Generation over the KV cache: greedy, sampling and beam search, jitted with fixed shapes.

  generate(config=, params=, prompt_tokens=[[0, 17, 9], [0, 5, 0]], prompt_lengths=[3, 2],
           max_decode_length=16, method='greedy')
    -> Generation(tokens [B, T] (0 after EOS), lengths [B] (EOS included), scores [B])

Decoder-only (`config` a TransformerConfig): the prompt is continued as given (right-padded rows
with explicit lengths; `bidirectional_prompt=True` reads it as a PrefixLM prefix). Callers choose
the layout: transformers' semantics (the prompt as is) or seqio's (start id 0 before the inputs,
`trainer.inference.infer.prompt_layout`). Encoder-decoder (`EncoderDecoderConfig`): the prompt is
the encoder input (0 = padding), and the decoder starts from `decoder_start_id`.

One `lax.while_loop` per call: prefill, then a step per generated token until every row has
produced `eos_id` or `max_decode_length` tokens. `scores` are the log-probabilities of the
generated ids under the model (untempered), summed (EOS included). Sampling is seeded per row:
row b uses `fold_in(fold_in(PRNGKey(seed), example_ids[b]), step)`, so an example's sample does
not depend on the batch it is in. Beam search: `trainer.inference.beam_search`.
"""
import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from trainer.inference import beam_search
from trainer.inference import placement
from trainer.inference import sampling
from trainer.model import kv_cache
from trainer.model import scan_layout
from trainer.model.config import EncoderDecoderConfig

EOS_ID = 1


@dataclasses.dataclass
class Generation:
  tokens: np.ndarray   # [B, T] int32, 0 after EOS
  lengths: np.ndarray  # [B] generated tokens (EOS included)
  scores: np.ndarray   # [B] summed log-probability of the generated tokens


def _prefill(config, params, prompt, lengths, encoder_tokens, max_length, bidirectional,
             decoder_start_id):
  if isinstance(config, EncoderDecoderConfig):
    start = jnp.full((prompt.shape[0], 1), decoder_start_id, jnp.int32)
    logits, cache = kv_cache.prefill(config, params, tokens=start,
                                     lengths=jnp.ones(prompt.shape[0], jnp.int32),
                                     max_length=max_length, encoder_tokens=encoder_tokens)
    return logits, cache, jnp.ones(prompt.shape[0], jnp.int32)
  logits, cache = kv_cache.prefill(config, params, tokens=prompt, lengths=lengths,
                                   max_length=max_length, bidirectional_prompt=bidirectional)
  return logits, cache, lengths


def _sample_loop(config, params, prompt, lengths, example_ids, seed, *, max_decode_length,
                 method, temperature, top_k, top_p, eos_id, bidirectional, decoder_start_id,
                 max_length):
  batch = prompt.shape[0]
  logits, cache, next_pos = _prefill(config, params, prompt, lengths, prompt, max_length,
                                     bidirectional, decoder_start_id)
  base = jax.random.PRNGKey(seed)
  row_keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(example_ids)
  out = jnp.zeros((batch, max_decode_length), jnp.int32)
  state = (jnp.int32(0), logits, cache, out, jnp.zeros(batch, bool), jnp.zeros(batch, jnp.float32))

  def cond(state):
    i, _, _, _, done, _ = state
    return (i < max_decode_length) & ~jnp.all(done)

  def body(state):
    i, logits, cache, out, done, score = state
    keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(row_keys)
    tok = sampling.choose(logits, keys=keys, method=method, temperature=temperature,
                          top_k=top_k, top_p=top_p)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tok_logp = jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]
    tok = jnp.where(done, 0, tok)
    score = score + jnp.where(done, 0.0, tok_logp)
    out = out.at[:, i].set(tok)
    done = done | (tok == eos_id)
    logits, cache = kv_cache.step(config, params, cache, tokens=tok, positions=next_pos + i)
    return i + 1, logits, cache, out, done, score

  _, _, _, out, _, score = jax.lax.while_loop(cond, body, state)
  return out, score


@functools.lru_cache(maxsize=32)
def _compiled(config, method, max_decode_length, temperature, top_k, top_p, num_beams,
              length_penalty, eos_id, bidirectional, decoder_start_id, max_length,
              partitioner=None):
  if method == 'beam':
    def fn(params, prompt, lengths, example_ids, seed):
      del example_ids, seed
      prefill = functools.partial(_prefill, config, params, max_length=max_length,
                                  bidirectional=bidirectional, decoder_start_id=decoder_start_id)
      return beam_search.beam_search(
          prefill=lambda p, n: prefill(p, n, p),
          step=lambda cache, tok, pos: kv_cache.step(config, params, cache, tokens=tok,
                                                     positions=pos),
          reorder=lambda cache, idx: kv_cache.reorder(config, cache, idx),
          prompt=prompt, lengths=lengths, num_beams=num_beams,
          max_decode_length=max_decode_length, alpha=length_penalty, eos_id=eos_id)
  else:
    def fn(params, prompt, lengths, example_ids, seed):
      return _sample_loop(config, params, prompt, lengths, example_ids, seed,
                          max_decode_length=max_decode_length, method=method,
                          temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id,
                          bidirectional=bidirectional, decoder_start_id=decoder_start_id,
                          max_length=max_length)
  if partitioner is None:
    return jax.jit(fn)
  # Replicated outputs: every process can read the whole batch's ids.
  return jax.jit(fn, out_shardings=partitioner.replicated())


def generate(*, config, params, prompt_tokens, prompt_lengths=None, max_decode_length: int,
             method: str = 'greedy', temperature: float = 1.0, top_k: Optional[int] = None,
             top_p: Optional[float] = None, seed: int = 0, num_beams: int = 4,
             length_penalty: float = 0.6, eos_id: int = EOS_ID, bidirectional_prompt: bool = False,
             decoder_start_id: int = 0, example_ids: Optional[Sequence[int]] = None,
             partitioner=None) -> Generation:
  """Generates up to `max_decode_length` tokens per row (module docstring).

  `prompt_lengths=None`: every prompt token is real up to trailing zeros (an encoder input, or a
  prompt without 0 ids). `length_penalty` is beam search's T5X `alpha` (see
  `trainer.inference.beam_search`). Params in either layout (converted to `config`'s).
  `partitioner` (a `trainer.training.partitioning.Partitioner`): decode under its mesh, the batch
  sharded over ('data', 'fsdp') and params by its rules (`trainer.inference.placement`; params
  already placed with `placement.put_params` are used as they are); same ids as one device.
  """
  sampling.check_params(method=method, temperature=temperature, top_k=top_k, top_p=top_p,
                        num_beams=num_beams)
  if isinstance(max_decode_length, bool) or not isinstance(max_decode_length, int) or \
      max_decode_length < 1:
    raise ValueError(f'max_decode_length must be a positive int, got {max_decode_length!r}')
  prompt = np.asarray(prompt_tokens, np.int32)
  if prompt.ndim != 2:
    raise ValueError(f'prompt_tokens must be [batch, length], got shape {prompt.shape}')
  if prompt_lengths is None:
    nonzero = prompt != 0
    prompt_lengths = np.where(nonzero.any(1), prompt.shape[1] - np.argmax(nonzero[:, ::-1], 1), 0)
  lengths = np.asarray(prompt_lengths, np.int32)
  if (lengths < 1).any():
    raise ValueError('every prompt needs at least one token')
  if example_ids is None:
    example_ids = np.arange(prompt.shape[0])
  encdec = isinstance(config, EncoderDecoderConfig)
  max_length = (1 if encdec else prompt.shape[1]) + max_decode_length
  fn = _compiled(config, method, max_decode_length, float(temperature), top_k,
                 None if top_p is None else float(top_p), num_beams, float(length_penalty),
                 eos_id, bool(bidirectional_prompt), decoder_start_id, max_length, partitioner)
  example_ids = np.asarray(example_ids, np.int32)
  if partitioner is None:
    params = scan_layout.for_config(params, config)
    tokens, scores = fn(params, prompt, lengths, example_ids, seed)
  else:
    batch = prompt.shape[0]
    rows = placement.padded_rows(batch, partitioner)
    params = placement.put_params(partitioner=partitioner, config=config, params=params)
    arrays = placement.put_batch(partitioner=partitioner, arrays=[
        placement.pad_rows(a, rows) for a in (prompt, lengths, example_ids)])
    with partitioner.activate():
      tokens, scores = fn(params, *arrays, seed)
    tokens, scores = np.asarray(tokens)[:batch], np.asarray(scores)[:batch]
  tokens = np.asarray(tokens)
  is_eos = tokens == eos_id
  gen_lengths = np.where(is_eos.any(1), np.argmax(is_eos, 1) + 1, max_decode_length)
  tokens = np.where(np.arange(tokens.shape[1])[None] < gen_lengths[:, None], tokens, 0)
  return Generation(tokens=tokens, lengths=gen_lengths.astype(np.int32),
                    scores=np.asarray(scores, np.float32))


@functools.lru_cache(maxsize=16)
def _compiled_scorer(config, bidirectional, decoder_start_id, max_length):
  def fn(params, prompt, lengths, candidates):
    logits, cache, next_pos = _prefill(config, params, prompt, lengths, prompt, max_length,
                                       bidirectional, decoder_start_id)

    def one(candidate):  # [m] -> [B]
      def body(carry, j):
        logits, cache, total = carry
        tok = jnp.broadcast_to(candidate[j], (prompt.shape[0],))
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)[:, candidate[j]]
        total = total + jnp.where(candidate[j] > 0, logp, 0.0)
        logits, cache = kv_cache.step(config, params, cache, tokens=tok, positions=next_pos + j)
        return (logits, cache, total), None

      init = (logits, cache, jnp.zeros(prompt.shape[0], jnp.float32))
      (_, _, total), _ = jax.lax.scan(body, init, jnp.arange(candidate.shape[0]))
      return total

    return jax.lax.map(one, candidates).T
  return jax.jit(fn)


def score_continuations(*, config, params, prompt_tokens, prompt_lengths=None, candidates,
                        bidirectional_prompt: bool = False, decoder_start_id: int = 0) -> np.ndarray:
  """Summed log p(candidate | prompt) [B, C]: the prompt is prefilled once and every candidate
  (token ids; 0 = padding, not scored) is teacher-forced through the cached steps.

  Example: candidates [[3, 1], [4, 1]] (the ids of 'negative</s>', 'positive</s>').
  """
  prompt = np.asarray(prompt_tokens, np.int32)
  if prompt_lengths is None:
    nonzero = prompt != 0
    prompt_lengths = np.where(nonzero.any(1), prompt.shape[1] - np.argmax(nonzero[:, ::-1], 1), 0)
  width = max(len(c) for c in candidates)
  cands = np.zeros((len(candidates), width), np.int32)
  for i, c in enumerate(candidates):
    cands[i, :len(c)] = c
  encdec = isinstance(config, EncoderDecoderConfig)
  max_length = (1 if encdec else prompt.shape[1]) + width
  params = scan_layout.for_config(params, config)
  fn = _compiled_scorer(config, bool(bidirectional_prompt), decoder_start_id, max_length)
  return np.asarray(fn(params, prompt, np.asarray(prompt_lengths, np.int32), cands))
