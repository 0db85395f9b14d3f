"""Beam search over the KV cache with T5X's length penalty and early stopping.

Scores: a finished hypothesis (it emitted EOS, or reached `max_decode_length`) of n generated
tokens (EOS included) with summed log-probability `logp` ranks by

  logp / ((5 + n) / 6) ** alpha          (T5X's `brevity_penalty`, GNMT's lp; alpha = 0: raw logp)

transformers' `num_beams` search ranks by `logp / n ** length_penalty` instead (with `n` counting
only generated tokens in recent versions), so with EOS the two can pick different hypotheses for
the same nominal penalty; with alpha = length_penalty = 0, or when no hypothesis ends early, they
rank identically (tests/trainer/inference/test_decoding.py checks the latter against HF).

Each step expands every alive beam by the whole vocabulary, keeps the 2K best candidates, moves
those ending in EOS to the finished set (best K kept) and the best K others on as the alive beams
(their caches gathered from their parents). Early stopping, per example: once K hypotheses are
finished and the worst of them beats the best score any alive beam could still reach (its logp
can only fall; divided by the largest penalty left), the example is done; the loop ends when every
example is done or after `max_decode_length` steps.
"""
import jax
import jax.numpy as jnp

NEG = -1.0e9


def brevity_penalty(length, alpha: float):
  """((5 + length) / 6) ** alpha (T5X)."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _take(x, idx):
  """x [B, N, ...], idx [B, M] -> [B, M, ...]."""
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def beam_search(*, prefill, step, reorder, prompt, lengths, num_beams: int,
                max_decode_length: int, alpha: float, eos_id: int):
  """-> (tokens [B, T] of the best hypothesis, its summed log-probability [B]).

  `prefill(prompt [BK, L], lengths [BK]) -> (logits [BK, V], cache, next_positions [BK])`,
  `step(cache, tokens [BK], positions [BK]) -> (logits, cache)`, `reorder(cache, rows [BK])`.
  """
  batch, k, t_max = prompt.shape[0], num_beams, max_decode_length
  logits, cache, next_pos = prefill(jnp.repeat(prompt, k, axis=0), jnp.repeat(lengths, k))
  vocab = logits.shape[-1]
  first = jnp.where(jnp.arange(k) == 0, 0.0, NEG)
  state = dict(
      i=jnp.int32(0), logits=logits, cache=cache,
      alive_seq=jnp.zeros((batch, k, t_max), jnp.int32),
      alive_logp=jnp.broadcast_to(first, (batch, k)),
      fin_seq=jnp.zeros((batch, k, t_max), jnp.int32),
      fin_score=jnp.full((batch, k), NEG), fin_logp=jnp.zeros((batch, k)))

  def done(s):
    max_pen = jnp.maximum(brevity_penalty(t_max, alpha), brevity_penalty(s['i'], alpha))
    best_alive = jnp.max(s['alive_logp'], axis=1) / max_pen
    worst_fin = jnp.min(s['fin_score'], axis=1)
    return (worst_fin > NEG / 2) & (worst_fin >= best_alive)

  def cond(s):
    return (s['i'] < t_max) & ~jnp.all(done(s))

  def body(s):
    i = s['i']
    logp = jax.nn.log_softmax(s['logits'].astype(jnp.float32), axis=-1).reshape(batch, k, vocab)
    cand = (s['alive_logp'][:, :, None] + logp).reshape(batch, k * vocab)
    top_val, top_idx = jax.lax.top_k(cand, 2 * k)
    parent, tok = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    seqs = _take(s['alive_seq'], parent).at[:, :, i].set(tok)
    is_eos = tok == eos_id
    # Finished: the old set plus the candidates ending in EOS, best K by penalised score.
    new_score = jnp.where(is_eos, top_val / brevity_penalty(i + 1, alpha), NEG)
    all_score = jnp.concatenate([s['fin_score'], new_score], axis=1)
    fin_score, fin_idx = jax.lax.top_k(all_score, k)
    fin_seq = _take(jnp.concatenate([s['fin_seq'], seqs], axis=1), fin_idx)
    fin_logp = _take(jnp.concatenate([s['fin_logp'], top_val], axis=1), fin_idx)
    # Alive: the best K candidates that did not end.
    alive_logp, alive_idx = jax.lax.top_k(jnp.where(is_eos, NEG, top_val), k)
    alive_seq = _take(seqs, alive_idx)
    rows = (jnp.arange(batch)[:, None] * k + _take(parent, alive_idx)).reshape(-1)
    cache = reorder(s['cache'], rows)
    alive_tok = _take(tok, alive_idx).reshape(-1)
    logits, cache = step(cache, alive_tok, next_pos + i)
    return dict(i=i + 1, logits=logits, cache=cache, alive_seq=alive_seq, alive_logp=alive_logp,
                fin_seq=fin_seq, fin_score=fin_score, fin_logp=fin_logp)

  s = jax.lax.while_loop(cond, body, state)
  # Alive beams that ran out of length count as finished at length i.
  alive_score = s['alive_logp'] / brevity_penalty(s['i'], alpha)
  score = jnp.concatenate([s['fin_score'], alive_score], axis=1)
  best = jnp.argmax(score, axis=1)[:, None]
  seq = jnp.concatenate([s['fin_seq'], s['alive_seq']], axis=1)
  logp = jnp.concatenate([s['fin_logp'], s['alive_logp']], axis=1)
  return _take(seq, best)[:, 0], _take(logp, best)[:, 0]
