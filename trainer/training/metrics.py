"""Training metrics: reduce (sum, count) pairs, write TensorBoard events, JSON lines and stdout.

Every process computes the same global metrics (they come out of the jitted step already reduced
over the mesh); only process 0 writes. Files under MODEL_DIR:

  MODEL_DIR/train/events.out.tfevents.*   TensorBoard (tensorboardX; no TensorFlow)
  MODEL_DIR/eval/events.out.tfevents.*
  MODEL_DIR/metrics.jsonl                 one JSON object per logged step:
      {"split": "train", "step": 10, "loss": 5.1, "accuracy": 0.12, "learning_rate": 0.001, ...}

The first step of every run (and of every resume) is logged, untimed (it includes compilation).
A run resumed from a checkpoint older than the last logged step drops the lines past that
checkpoint (`drop_after`): the replayed steps are logged again, so a reader gets one value per
(split, step). TensorBoard gets the same view: each run segment writes new event files that
begin with a `SessionLog.START` at the first step it (re)plays (tensorboardX's `purge_step`), and
TensorBoard discards the older files' events from that step on.

Stdout gets one progress line per logged step, e.g.
  `step 10/100 | loss 5.1230 | acc 0.120 | lr 1.00e-03 | gnorm 1.23 | 2345 tok/s | 0.081 s/step`.
"""
import json
import math
import os
import sys
import time
from typing import Any, Dict, Mapping, Optional

import jax
import numpy as np


def reduce_metrics(metrics: Mapping[str, Any]) -> Dict[str, float]:
  """`{name: (sum, count) | scalar}` -> `{name: float}` (sum / count; NaN when count is 0)."""
  out = {}
  for name, value in metrics.items():
    if isinstance(value, (tuple, list)) and len(value) == 2:
      total, count = (float(np.asarray(v)) for v in value)
      out[name] = total / count if count else float('nan')
    else:
      out[name] = float(np.asarray(value))
  return out


def accumulate(acc: Optional[Dict[str, Any]], metrics: Mapping[str, Any]) -> Dict[str, Any]:
  """Adds (sum, count) pairs (host-side, numpy); scalars keep their latest value."""
  metrics = jax.device_get(metrics)
  if acc is None:
    return {k: (tuple(np.asarray(x, np.float64) for x in v) if isinstance(v, (tuple, list))
                else np.asarray(v)) for k, v in metrics.items()}
  out = dict(acc)
  for k, v in metrics.items():
    if isinstance(v, (tuple, list)) and k in acc:
      out[k] = (acc[k][0] + np.asarray(v[0], np.float64), acc[k][1] + np.asarray(v[1], np.float64))
    else:
      out[k] = v
  return out


def _fmt(name: str, value: float) -> str:
  short = {'accuracy': 'acc', 'learning_rate': 'lr', 'grad_norm': 'gnorm',
           'tokens_per_s': 'tok/s', 'step_time_s': 's/step', 'mfu': 'mfu'}
  label = short.get(name, name)
  if name == 'learning_rate':
    return f'{label} {value:.2e}'
  if name == 'tokens_per_s':
    return f'{value:.0f} {label}'
  if name == 'step_time_s':
    return f'{value:.3f} {label}'
  if name == 'mfu':
    return f'mfu {100 * value:.1f}%'
  return f'{label} {value:.4f}'


class MetricsWriter:
  """Writes scalars to TensorBoard, JSON lines and stdout (process 0 only)."""

  def __init__(self, model_dir: str, *, total_steps: Optional[int] = None, stream=None):
    self.model_dir = model_dir
    self.total_steps = total_steps
    self.stream = stream or sys.stdout
    self.enabled = jax.process_index() == 0
    self._writers = {}
    self._purge_step = None  # set by drop_after: TensorBoard drops older events from this step
    if self.enabled:
      os.makedirs(model_dir, exist_ok=True)
      self._jsonl = open(os.path.join(model_dir, 'metrics.jsonl'), 'a', encoding='utf-8')

  def drop_after(self, step: int) -> int:
    """Removes metrics.jsonl lines past `step` (and unreadable ones: a line cut by a kill).

    Called when a run starts or resumes at `step` (0 for a fresh start), before anything is
    written; returns the number of lines dropped. The file is replaced atomically. The event
    files written from now on start with a purge at `step + 1` (see the module docstring).
    """
    if not self.enabled:
      return 0
    self._purge_step = int(step) + 1
    path = os.path.join(self.model_dir, 'metrics.jsonl')
    self._jsonl.close()
    kept, dropped = [], 0
    with open(path, encoding='utf-8') as f:
      for line in f:
        try:
          record = json.loads(line)
          keep = int(record['step']) <= step
        except (ValueError, KeyError, TypeError):
          keep = False
        if keep:
          kept.append(line if line.endswith('\n') else line + '\n')
        else:
          dropped += 1
    if dropped:
      tmp = path + '.tmp'
      with open(tmp, 'w', encoding='utf-8') as f:
        f.writelines(kept)
      os.replace(tmp, path)
    self._jsonl = open(path, 'a', encoding='utf-8')
    return dropped

  def _tb(self, split: str):
    if split not in self._writers:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      # A new file per run segment (tensorboardX names files by the second and host alone: the
      # nanosecond suffix keeps two segments apart and in order, which TensorBoard reads by name).
      self._writers[split] = SummaryWriter(os.path.join(self.model_dir, split),
                                           purge_step=self._purge_step,
                                           filename_suffix=f'.{time.time_ns()}')
    return self._writers[split]

  def write(self, step: int, scalars: Mapping[str, float], *, split: str = 'train') -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items() if v is not None}
    writer = self._tb(split)
    for name, value in scalars.items():
      if math.isfinite(value):
        writer.add_scalar(name, value, step)
    writer.flush()
    record = {'split': split, 'step': int(step)}
    record.update({k: (v if math.isfinite(v) else None) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record, sort_keys=True) + '\n')
    self._jsonl.flush()
    total = f'/{self.total_steps}' if self.total_steps else ''
    order = ['loss', 'accuracy', 'z_loss', 'learning_rate', 'grad_norm', 'tokens_per_s',
             'step_time_s', 'mfu']
    names = [n for n in order if n in scalars] + sorted(n for n in scalars if n not in order and
                                                        n != 'cross_entropy')
    parts = [f'{split} step {step}{total}'] + [_fmt(n, scalars[n]) for n in names]
    print(' | '.join(parts), file=self.stream, flush=True)

  def close(self):
    if not self.enabled:
      return
    for writer in self._writers.values():
      writer.close()
    self._jsonl.close()
