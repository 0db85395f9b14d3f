"""Statistics for the comparison: mean with a t-interval, and tokens-to-reach-a-loss.

  >>> mean_ci([1.0, 2.0, 3.0])          # mean 2, sd 1, t(0.975, df=2) = 4.3027
  (2.0, 2.4841...)
"""
import math
from typing import Optional, Sequence, Tuple


def t_quantile(*, confidence: float, df: int) -> float:
  """Two-sided Student-t quantile: P(|T| <= q) = confidence."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return float(stats.t.ppf(0.5 + confidence / 2.0, df))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Tuple[float, float]:
  """(mean, half width of the `confidence` t-interval); half width is nan with one value."""
  values = [float(v) for v in values]
  n = len(values)
  if n == 0:
    raise ValueError('mean_ci needs at least one value')
  mean = sum(values) / n
  if n == 1:
    return mean, float('nan')
  sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
  return mean, t_quantile(confidence=confidence, df=n - 1) * sd / math.sqrt(n)


def format_ci(values: Sequence[float], digits: int = 2) -> str:
  mean, half = mean_ci(values)
  if math.isnan(half):
    return f'{mean:.{digits}f} (1 seed, no CI)'
  return f'{mean:.{digits}f} +- {half:.{digits}f}'


def tokens_to_reach(curve: Sequence[Tuple[float, float]], target: float) -> Optional[float]:
  """Training tokens at which a (tokens, held-out loss) curve first reaches `target`, linearly
  interpolated between evaluation points; None when it never does.

  >>> tokens_to_reach([(0, 5.0), (100, 3.0), (200, 2.0)], 4.0)
  50.0
  """
  prev = None
  for tokens, loss in curve:
    if loss <= target:
      if prev is None or prev[1] == loss:
        return float(tokens)
      t0, l0 = prev
      return float(t0 + (tokens - t0) * (l0 - target) / (l0 - loss))
    prev = (tokens, loss)
  return None
