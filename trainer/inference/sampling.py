"""Next-token choice from logits: greedy, and temperature sampling with top-k / top-p filtering.

  filter_logits(logits [B, V], top_k=2, top_p=None) -> logits with all but each row's 2 largest
                                                       set to -inf
  choose(logits, key=..., method='sample', temperature=0.7, top_k=40, top_p=0.95) -> ids [B]

Top-p keeps the smallest set of most likely tokens whose probability (after the temperature)
reaches `top_p` (always at least the most likely token); top-k and top-p combine (both apply).
Ties at the top-k boundary keep every tied token.
"""
from typing import Optional

import jax
import jax.numpy as jnp

METHODS = ('greedy', 'sample', 'beam')


def check_params(*, method: str, temperature: float = 1.0, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, num_beams: int = 1) -> None:
  """Raises ValueError naming the bad decoding parameter."""
  if method not in METHODS:
    raise ValueError(f'decode method must be one of {METHODS}, got {method!r}')
  if not isinstance(temperature, (int, float)) or not temperature > 0:
    raise ValueError(f'temperature must be > 0, got {temperature!r}')
  if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
    raise ValueError(f'top_k must be a positive int or None, got {top_k!r}')
  if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
    raise ValueError(f'top_p must be in (0, 1] or None, got {top_p!r}')
  if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
    raise ValueError(f'num_beams must be an int >= 1, got {num_beams!r}')


def filter_logits(logits: jax.Array, *, top_k: Optional[int] = None,
                  top_p: Optional[float] = None) -> jax.Array:
  """Logits outside the top-k / top-p set become -inf (fp32)."""
  logits = logits.astype(jnp.float32)
  neg = jnp.finfo(jnp.float32).min
  if top_k is not None and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits >= kth, logits, neg)
  if top_p is not None and top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
    keep_sorted = before < top_p
    keep = jnp.zeros_like(keep_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, neg)
  return logits


def choose(logits: jax.Array, *, keys: Optional[jax.Array], method: str, temperature: float = 1.0,
           top_k: Optional[int] = None, top_p: Optional[float] = None) -> jax.Array:
  """Next ids [B]: argmax ('greedy'), or a sample ('sample') with one PRNG key per row (`keys`
  [B, 2] or typed keys [B]), from softmax(filtered(logits / temperature))."""
  if method == 'greedy':
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = logits.astype(jnp.float32) / temperature
  filtered = filter_logits(scaled, top_k=top_k, top_p=top_p)
  return jax.vmap(lambda k, l: jax.random.categorical(k, l))(keys, filtered).astype(jnp.int32)
