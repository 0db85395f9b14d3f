"""Per-split statistics of the cache job (`stats.<split>.json`) and the job's summary lines.

Each work unit counts into a fresh `new_stats` dict; the pipeline merges a split's dicts with
`merge_stats`, `finish_stats` adds derived figures, and the driver adds wall-time figures. Keys
(`<f>` for each output feature): seqio's `examples`, `<f>_tokens`, `<f>_max_tokens` (EOS and pad
excluded), plus `records`, `documents`, `source_tokens`, `dead_letters` {reason: n},
`mode_examples` {'[NLU]': n, ...}, `<f>_length_tokens`, `<f>_truncated_tokens`,
`<f>_padded_slots`, `<f>_padding_fraction`. Plain Python.
"""
from __future__ import annotations

from typing import Mapping


def new_stats(output_features) -> dict:
  stats = {"records": 0, "documents": 0, "source_tokens": 0, "examples": 0,
           "dead_letters": {}, "mode_examples": {}}
  for k in output_features:
    for suffix in ("tokens", "max_tokens", "length_tokens", "truncated_tokens", "padded_slots"):
      stats[f"{k}_{suffix}"] = 0
  return stats


def merge_stats(a: dict, b: dict) -> dict:
  """Sums counters; `*max_tokens` take the max; nested dicts merge recursively."""
  out = dict(a)
  for k, v in b.items():
    if k not in out:
      out[k] = v
    elif isinstance(v, dict):
      out[k] = merge_stats(out[k], v)
    elif k.endswith("max_tokens"):
      out[k] = max(out[k], v)
    else:
      out[k] = out[k] + v
  return out


def finish_stats(stats: dict, feature_lengths: Mapping[str, int]) -> dict:
  """Adds derived figures (padding fraction per feature) to merged stats."""
  out = dict(stats)
  n = stats.get("examples", 0)
  for k, length in sorted(feature_lengths.items()):
    if f"{k}_padded_slots" in stats:
      out[f"{k}_padding_fraction"] = (stats[f"{k}_padded_slots"] / (n * length)) if n else 0.0
  return out


def format_summary(summary: dict, feature_lengths, wall_s: float) -> list[str]:
  lines = []
  for cached, splits in summary.items():
    for split, s in splits.items():
      lines.append(f"{cached} [{split}]: {s['examples']:,} examples from {s['documents']:,} "
                   f"documents ({s['records']:,} records, {s['source_tokens']:,} source tokens)")
      for k, length in sorted(feature_lengths.items()):
        if f"{k}_tokens" in s:
          lines.append(f"  {k}: {s[f'{k}_tokens']:,} tokens (+EOS: {s[f'{k}_length_tokens']:,}),"
                       f" max {s[f'{k}_max_tokens']}, padding {s.get(f'{k}_padding_fraction', 0):.1%}"
                       f" of {length}, truncated {s[f'{k}_truncated_tokens']:,}")
      if s.get("mode_examples"):
        modes = ", ".join(f"{m} {n:,}" for m, n in sorted(s["mode_examples"].items()))
        lines.append(f"  examples per mode token: {modes}")
      dead = s.get("dead_letters") or {}
      total_dead = sum(dead.values())
      detail = ", ".join(f"{r} {n:,}" for r, n in sorted(dead.items()))
      lines.append(f"  dead letters: {total_dead:,}" + (f" ({detail})" if detail else ""))
      lines.append(f"  {s['tokens_per_s']:,.0f} tokens/s ({s['source_tokens_per_s']:,.0f} source "
                   f"tokens/s) over the job's wall time {wall_s:.1f}s")
  return lines
