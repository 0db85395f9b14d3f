"""Checks and files that keep a run directory consistent: token ids vs. the embedding table, a
resume against the recorded model config, and atomic writes of MODEL_DIR's run files.

* `checked_batches(batches, vocab_size=...)`: every batch's token ids are checked against the
  model's vocabulary size before the step sees them (an id past the embedding table reads NaNs
  and the run would report a divergence instead of the cause):
    {'decoder_input_tokens': [[0, 5, 300]]} with vocab_size 259 ->
    ValueError: token id 300 in feature 'decoder_input_tokens' is >= the model's vocab_size 259 ...
* `check_resume(model_dir, config)`: a run directory with checkpoints resumes only with the model
  config it was started with (`model_config.json`); a mismatch is one line naming the fields.
* `write_run_files(model_dir, config=..., gin_config=...)`: `model_config.json` and `config.gin`,
  written atomically (temp file + rename), called once the run has started.
"""
import json
import os
from typing import Any, Dict, Iterator, Mapping, Optional

import numpy as np

from trainer.model import config_io
from trainer.model.config import EncoderDecoderConfig, TransformerConfig


def model_vocab_size(model) -> Optional[int]:
  """The embedding table's size of a model wrapper (smallest of its stacks), if it has one."""
  config = getattr(model, 'config', None)
  if isinstance(config, EncoderDecoderConfig):
    return min(config.encoder.vocab_size, config.decoder.vocab_size)
  if isinstance(config, TransformerConfig):
    return config.vocab_size
  return None


def check_token_ids(batch: Mapping[str, Any], *, vocab_size: int) -> None:
  """Raises ValueError naming the feature and id when a token id is outside [0, vocab_size)."""
  for name, value in batch.items():
    if not name.endswith('_tokens'):
      continue
    arr = np.asarray(value)
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
      continue
    top, low = int(arr.max()), int(arr.min())
    if top >= vocab_size or low < 0:
      bad = top if top >= vocab_size else low
      raise ValueError(f'token id {bad} in feature {name!r} is outside the model\'s vocabulary '
                       f'(vocab_size {vocab_size}, VOCAB_SIZE in gin): set VOCAB_SIZE to the task '
                       f'vocabulary\'s size (at least {top + 1})')


class checked_batches:  # pylint: disable=invalid-name  (used like the generator it replaces)
  """`batches`, each checked by `check_token_ids` (nothing checked when vocab_size is None).

  Other attributes are the wrapped stream's, so a resumable loader's `checkpoint_state()` still
  reaches the checkpoint through this wrapper.
  """

  def __init__(self, batches: Iterator[Mapping[str, np.ndarray]], *, vocab_size: Optional[int]):
    self._source = batches
    self._batches = iter(batches)
    self._vocab_size = vocab_size

  def __iter__(self):
    return self

  def __next__(self) -> Mapping[str, np.ndarray]:
    batch = next(self._batches)
    if self._vocab_size is not None:
      check_token_ids(batch, vocab_size=self._vocab_size)
    return batch

  def __getattr__(self, name: str) -> Any:
    return getattr(self._source, name)


def _config_dict(config) -> Dict[str, Any]:
  return config_io.model_config_to_dict(config)


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = '') -> list:
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      out += _differences(a, b, f'{prefix}{key}.')
    elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
                         and list(a) == list(b)):
      out.append(f'{prefix}{key}: {a!r} -> {b!r}')
  return out


def check_resume(model_dir: str, config) -> None:
  """Raises ValueError when MODEL_DIR's recorded model config differs from `config` (one line).

  Only model fields matter here: runtime fields (dtype, remat, dropout, attention_impl) may change
  between a run and its resume.
  """
  path = os.path.join(model_dir, config_io.MODEL_CONFIG_FILE)
  if config is None or not os.path.isfile(path):
    return
  try:
    recorded = config_io.read_json(path)
  except config_io.ConfigFileError:
    return  # a damaged record says nothing; it is rewritten once the run starts
  recorded = {k: v for k, v in recorded.items() if k not in ('adapted_from', 'teacher')}
  runtime = {'dtype', 'remat', 'dropout_rate', 'attention_impl'}

  def strip(d):
    if 'encoder' in d or 'decoder' in d:
      return {side: strip(d.get(side) or {}) for side in ('encoder', 'decoder')}
    return {k: v for k, v in d.items() if k not in runtime}

  diffs = _differences(strip(recorded), strip(_config_dict(config)))
  if diffs:
    shown = '; '.join(diffs[:4]) + (f'; and {len(diffs) - 4} more' if len(diffs) > 4 else '')
    raise ValueError(f'cannot resume {model_dir}: its checkpoints were written by a different '
                     f'model ({shown}); use a new MODEL_DIR or the original settings')


def write_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` through a temp file and a rename (never a half-written file)."""
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_run_files(model_dir: str, *, config=None, gin_config: Optional[str] = None) -> None:
  """MODEL_DIR/model_config.json (when `config` is a model config) and config.gin, atomically."""
  os.makedirs(model_dir, exist_ok=True)
  if isinstance(config, (TransformerConfig, EncoderDecoderConfig)):
    write_atomic(os.path.join(model_dir, config_io.MODEL_CONFIG_FILE),
                 json.dumps(_config_dict(config), indent=2, sort_keys=True))
  if gin_config is not None:
    write_atomic(os.path.join(model_dir, 'config.gin'), gin_config)

