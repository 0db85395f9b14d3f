"""The work of one input range: read, validate, tokenise, run the task's objective, serialise.

Plain Python + TF, no Beam: `pipelines.cache.beam_graph` wraps `UnitProcessor` in DoFns, and tests
call it directly.

How a task's preprocessing is run. A task's preprocessors look like
`[rekey?, tokenize(_and_append_eos), objective..., append_eos_after_trim?]`. The tokenize step is
done by SentencePiece's batch `encode` on a list of documents in plain Python, which gives the same
ids as seqio's TF op (same model proto: `vocab.tokenizer` is what `vocab.encode` uses; the tests
compare with `task.get_dataset`), and every other preprocessor (the objective, with its own seeds)
runs as the task defines it, through tf.data, under `seqio.map_seed_manager` exactly as
`Task.get_dataset(seed=...)` does. So the examples of a range are those
`task.get_dataset(seed=range_seed, shuffle=False)` would produce from that range's documents.
`rekey` before tokenize and `append_eos` after it are applied in Python (no per-document tf.data
trip); any other preprocessor before the objective runs in tf.data.

The objective. With `objective_impl='numpy'` (the default) a preprocessor of `tasks.objectives`
runs as its NumPy twin (`tasks.objectives.numpy_impl`): the range's documents are one stream,
corrupted a batch of chunks at a time. The twin draws its own random numbers (seeded by the range
seed), so the examples follow the same distribution as `task.get_dataset` (tests/tasks/
test_objectives.py checks both implementations with the same statistical tests and against each
other) but are not the same bytes; `objective_impl='tf'` runs the task's TF preprocessor and gives
exactly `task.get_dataset(seed=range_seed)`. Preprocessors that are not ours always run in tf.data.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any, Callable, Iterator, Mapping, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines.cache import plan as cache_plan  # noqa: E402
from pipelines.cache import stats as stats_lib  # noqa: E402
from tasks import cli  # noqa: E402

_MODE_PIECE = re.compile(r"^\[[A-Z0-9_]+\]$")
# Raw bytes kept in a dead-letter record (a too-long document is cut; the reason says why).
MAX_DEAD_LETTER_RAW = 4096
_DOC_BATCH = 2048


def corpus_of(source) -> Optional[Any]:
  """The plain-Python record API behind a seqio source, if it has one (tasks.sources)."""
  for attr in ("corpus", "corpus_spec", "spec"):
    spec = getattr(source, attr, None)
    if spec is not None and all(hasattr(spec, m) for m in ("files", "read_range", "parse")):
      return spec
  return None


def _base_fn(fn):
  while isinstance(fn, functools.partial):
    fn = fn.func
  return fn


def _keywords(fn) -> dict:
  out = {}
  chain = []
  while isinstance(fn, functools.partial):
    chain.append(fn.keywords)
    fn = fn.func
  for kw in reversed(chain):
    out.update(kw)
  return out


def _is_rekey(fn) -> bool:
  return _base_fn(fn) is seqio.preprocessors.rekey


def _tokenize_kind(fn) -> Optional[dict]:
  """{'with_eos': bool, 'copy_pretokenized': bool} if `fn` is seqio's tokenize step, else None."""
  base = _base_fn(fn)
  kw = _keywords(fn)
  if base is seqio.preprocessors.tokenize:
    return {"with_eos": bool(kw.get("with_eos", False)),
            "copy_pretokenized": bool(kw.get("copy_pretokenized", True))}
  if base is seqio.preprocessors.tokenize_and_append_eos:
    return {"with_eos": True, "copy_pretokenized": bool(kw.get("copy_pretokenized", True))}
  return None


def _mode_ids(vocab) -> dict[int, str]:
  """id -> mode token string ('[NLU]', ...) for the UL2 mode-token statistics."""
  try:
    from tasks import vocab as tasks_vocab  # pylint: disable=g-import-not-at-top
    return {int(i): name for name, i in tasks_vocab.special_tokens(vocab).mode_ids.items()}
  except Exception:  # pylint: disable=broad-except  (no tasks package / not a mode vocabulary)
    pass
  out = {}
  tokenizer = getattr(vocab, "tokenizer", None)
  if tokenizer is not None:
    for i in range(tokenizer.get_piece_size()):
      piece = tokenizer.id_to_piece(i)
      if _MODE_PIECE.match(piece):
        out[i] = piece
  return out


def _to_dataset(docs: list[dict]) -> tf.data.Dataset:
  """A list of feature dicts (strings, numeric scalars such as a GLUE 'label', or 1-D int
  sequences) -> tf.data.Dataset of the same."""
  columns = {}
  for key in docs[0]:
    values = [d[key] for d in docs]
    first = values[0]
    if isinstance(first, (bytes, str)):
      columns[key] = tf.constant(values, dtype=tf.string)
    elif np.ndim(first) == 0:
      columns[key] = tf.constant(np.stack(values))
    else:
      arrays = [np.asarray(v) for v in values]
      dtype = arrays[0].dtype if arrays[0].size else np.int32
      flat = np.concatenate(arrays).astype(dtype) if arrays else np.zeros([0], dtype)
      columns[key] = tf.RaggedTensor.from_row_lengths(
          flat, np.array([len(a) for a in arrays], dtype=np.int64))
  return tf.data.Dataset.from_tensor_slices(columns)


def _ragged_to_dense(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Slices of a ragged column are RaggedTensors of ragged_rank 0 on some TF versions: densify."""
  def fix(ex):
    return {k: (v.to_tensor() if isinstance(v, tf.RaggedTensor) else v) for k, v in ex.items()}
  if any(isinstance(s, tf.RaggedTensorSpec) for s in ds.element_spec.values()):
    ds = ds.map(fix)
  return ds


class TaskProgram:
  """A task's preprocessing, run on the documents of one input range.

  Mirrors `seqio.Task.get_dataset(sequence_length, seed=seed, shuffle=False)`: the same
  preprocessors in the same order under the same seed manager (pre-/post-CacheDatasetPlaceholder
  seed offsets included), then seqio's validation and trimming to the feature lengths; only the
  tokenize step is done by SentencePiece's batch encoder (see the module docstring).
  """

  def __init__(self, task: seqio.Task, feature_lengths: Mapping[str, int],
               objective_impl: str = "numpy"):
    if objective_impl not in cache_plan.OBJECTIVE_IMPLS:
      raise cache_plan.CacheJobError(
          f"--objective_impl: must be one of {', '.join(cache_plan.OBJECTIVE_IMPLS)}, got "
          f"{objective_impl!r}")
    self.task = task
    self.feature_lengths = dict(feature_lengths)
    self.objective_impl = objective_impl
    self.output_features = dict(task.output_features)
    # A scalar feature (rank 0, e.g. a classification task's 'label') has no length.
    missing = [k for k, f in self.output_features.items()
               if k not in self.feature_lengths and f.required and getattr(f, "rank", 1) > 0]
    if missing:
      raise cache_plan.CacheJobError(
          f"--feature_lengths: task {task.name!r} needs a length for {', '.join(missing)} "
          f"(given: {', '.join(sorted(self.feature_lengths))})")
    preps = list(task.preprocessors)
    cache_idx = next((i for i, p in enumerate(preps)
                      if isinstance(p, seqio.CacheDatasetPlaceholder)), None)
    # Seed offsets as seqio.Task.preprocess_precache / preprocess_postcache.
    if cache_idx is None:
      self.segments = [(0, preps)]
    else:
      self.segments = [(0, preps[:cache_idx]), (42 * cache_idx, preps[cache_idx + 1:])]
    self.mode_ids = {}
    if "inputs" in self.output_features:
      self.mode_ids = _mode_ids(self.output_features["inputs"].vocabulary)

  def _tokenize(self, docs: list[dict], with_eos: bool, copy_pretokenized: bool) -> list[dict]:
    """seqio.preprocessors.tokenize_impl on a list of documents, batched per feature."""
    keys = [k for k in docs[0] if k in self.output_features]
    out = [dict(d) for d in docs]
    for key in keys:
      feature = self.output_features[key]
      vocab = feature.vocabulary
      texts = [d[key].decode("utf-8") if isinstance(d[key], bytes) else d[key] for d in docs]
      if isinstance(vocab, seqio.SentencePieceVocabulary):
        ids = vocab.tokenizer.encode(texts)
      else:
        ids = [vocab.encode(t) for t in texts]
      eos = [vocab.eos_id] if (with_eos and feature.add_eos) else []
      for d, original, tokens in zip(out, docs, ids):
        if copy_pretokenized:
          d[f"{key}_pretokenized"] = original[key]
        d[key] = np.asarray(list(tokens) + eos, dtype=np.int32)
    return out

  def run(self, docs: list[dict], seed: int) -> tuple[Iterator[dict], int]:
    """Examples (numpy dicts, not yet trimmed) and the number of source tokens."""
    state: Any = docs  # a list of dicts until the first tf.data-only step, then a Dataset
    source_tokens = 0
    if not docs:
      return iter(()), 0
    for offset, preps in self.segments:
      with seqio.map_seed_manager(seed + offset):
        for index, prep in enumerate(preps):
          if isinstance(prep, seqio.CacheDatasetPlaceholder):
            continue
          twin = self._numpy_twin(prep)
          if twin is not None and isinstance(state, list) and "targets" in state[0]:
            state = twin([d["targets"] for d in state], sequence_length=self.feature_lengths,
                         output_features=self.output_features, seed=(seed, offset, index))
            continue
          if _is_rekey(prep) and isinstance(state, list):
            key_map = _keywords(prep).get("key_map")
            if key_map:
              state = [{new: (d[old] if old else b"") for new, old in key_map.items()}
                       for d in state]
            continue
          if _base_fn(prep) is seqio.preprocessors.append_eos and isinstance(state, list):
            state = self._append_eos(state)
            continue
          tok = _tokenize_kind(prep)
          if tok is not None:
            if isinstance(state, tf.data.Dataset):
              state = list(state.as_numpy_iterator())
              if not state:
                return iter(()), 0
            state = self._tokenize(state, **tok)
            source_tokens = sum(int(d[k].size) for d in state for k in d
                                if k in self.output_features)
            continue
          if isinstance(state, list):
            state = _ragged_to_dense(_to_dataset(state))
          prep = seqio.utils.add_kwargs_to_transform(
              prep, sequence_length=self.feature_lengths, output_features=self.output_features)
          state = prep(state)
    if isinstance(state, list):
      return iter(self._validate(state)), source_tokens
    state = self.task._validate_preprocessing(state)  # pylint: disable=protected-access
    return state.as_numpy_iterator(), source_tokens

  def _append_eos(self, docs: list[dict]) -> list[dict]:
    """seqio.preprocessors.append_eos on tokenized documents (1-D id arrays)."""
    eos = {k: np.array([f.vocabulary.eos_id], np.int32)
           for k, f in self.output_features.items() if f.add_eos}
    out = []
    for d in docs:
      d = dict(d)
      for k in eos.keys() & d.keys():
        v = d[k]
        if isinstance(v, np.ndarray) and v.ndim == 1:
          d[k] = np.concatenate((v, eos[k].astype(v.dtype)))
      out.append(d)
    return out

  def _numpy_twin(self, prep):
    if self.objective_impl != "numpy":
      return None
    from tasks.objectives import numpy_impl  # pylint: disable=g-import-not-at-top
    return numpy_impl.numpy_objective(prep)

  def _validate(self, examples: list[dict]) -> list[dict]:
    """seqio's Task._validate_preprocessing for examples that never entered tf.data: every
    required feature present, with the feature's dtype and rank."""
    for ex in examples[:1]:
      for k, f in self.output_features.items():
        if k not in ex:
          if f.required:
            raise ValueError(
                f"task {self.task.name!r}: preprocessing did not produce feature {k!r}")
          continue
        v = np.asarray(ex[k])
        if v.ndim != f.rank or not np.can_cast(v.dtype, f.dtype.as_numpy_dtype, "same_kind"):
          raise ValueError(f"task {self.task.name!r}: feature {k!r} is {v.dtype}[rank {v.ndim}], "
                           f"expected {f.dtype.name}[rank {f.rank}]")
    return examples


@dataclasses.dataclass
class UnitResult:
  examples: list  # (shard, sort_key, serialized tf.Example)
  dead_letters: list  # dicts, JSON-ready
  stats: dict


def _feature(v: np.ndarray) -> tf.train.Feature:
  """Token ids and integer scalars (a class 'label') as int64s, float scalars ('score') as floats
  (seqio's cached reader parses each by the dtype in info.<split>.json)."""
  values = np.asarray(v).reshape(-1).tolist()
  if np.asarray(v).dtype.kind == "f":
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def serialize_example(ex: Mapping[str, np.ndarray]) -> bytes:
  feature = {k: _feature(v) for k, v in sorted(ex.items())}
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
      deterministic=True)


class UnitProcessor:
  """Runs work units (see cache_plan.WorkUnit); one per Beam worker (tasks cached per name)."""

  def __init__(self, *, module_import=(), feature_lengths: Mapping[str, int],
               max_document_chars: Optional[int] = None, objective_impl: str = "numpy"):
    self.module_import = tuple(module_import)
    self.feature_lengths = dict(feature_lengths)
    self.max_document_chars = max_document_chars
    self.objective_impl = objective_impl
    self._programs: dict[str, TaskProgram] = {}
    self._corpora: dict[str, Any] = {}
    self._text_keys: dict[tuple[str, str], str] = {}
    self._imported = False

  def _setup(self):
    if not self._imported:
      cli.import_modules(self.module_import)
      self._imported = True

  def program(self, task_name: str) -> TaskProgram:
    self._setup()
    if task_name not in self._programs:
      self._programs[task_name] = TaskProgram(seqio.get_mixture_or_task(task_name),
                                              self.feature_lengths, self.objective_impl)
    return self._programs[task_name]

  def corpus(self, task_name: str):
    if task_name not in self._corpora:
      spec = corpus_of(self.program(task_name).task.source)
      if spec is not None and self.max_document_chars is not None:
        spec = dataclasses.replace(spec, max_document_chars=self.max_document_chars)
      self._corpora[task_name] = spec
    return self._corpora[task_name]

  def text_key(self, task_name: str, split: str) -> str:
    """The source's (single) string feature: where a parsed document goes."""
    if (task_name, split) not in self._text_keys:
      spec = self.program(task_name).task.source.get_dataset(
          split=split, shuffle=False).element_spec
      keys = [k for k, s in spec.items() if s.dtype == tf.string and s.shape.rank == 0]
      key = getattr(self.corpus(task_name), "output_key", None) or (keys[0] if keys else "text")
      self._text_keys[(task_name, split)] = key
    return self._text_keys[(task_name, split)]

  def _documents(self, unit: cache_plan.WorkUnit, stats: dict, dead: list) -> list[dict]:
    task = self.program(unit.task).task
    if unit.kind == "shard":
      ds = task.source.get_dataset(split=unit.split, shuffle=False,
                                   shard_info=seqio.ShardInfo(unit.start, unit.end))
      docs = list(ds.as_numpy_iterator())
      stats["records"] += len(docs)
      stats["documents"] += len(docs)
      return docs
    spec = self.corpus(unit.task)
    key = self.text_key(unit.task, unit.split)
    docs = []
    source = os.path.basename(unit.path)
    for record_key, raw in spec.read_range(unit.path, unit.start, unit.end):
      stats["records"] += 1
      try:
        text = spec.parse(raw)
      except Exception as e:  # pylint: disable=broad-except
        reason = getattr(e, "reason", None)
        if reason is None:
          raise
        stats["dead_letters"][reason] = stats["dead_letters"].get(reason, 0) + 1
        raw_bytes = raw if isinstance(raw, bytes) else str(raw).encode()
        dead.append({"source": source, "record_key": record_key, "reason": reason,
                     "raw": raw_bytes[:MAX_DEAD_LETTER_RAW].decode("utf-8", "backslashreplace"),
                     "raw_bytes": len(raw_bytes)})
        continue
      docs.append({key: text.encode("utf-8")})
    stats["documents"] += len(docs)
    return docs

  def process(self, unit: cache_plan.WorkUnit,
              progress: Optional[Callable[[dict], None]] = None) -> UnitResult:
    program = self.program(unit.task)
    stats = stats_lib.new_stats(program.output_features)
    dead: list = []
    docs = self._documents(unit, stats, dead)
    if progress:
      progress(stats)
    examples_iter, source_tokens = program.run(docs, unit.seed)
    stats["source_tokens"] = source_tokens
    examples = []
    eos_pad = {}
    for k, f in program.output_features.items():
      eos_pad[k] = sorted({i for i in (f.vocabulary.eos_id, f.vocabulary.pad_id) if i is not None})
    for index, ex in enumerate(examples_iter):
      out = {}
      for k in program.output_features:
        if k not in ex:
          continue
        v = np.asarray(ex[k])
        if v.ndim == 0:  # a scalar feature (label, score): no length, no token statistics
          out[k] = v
          continue
        length = self.feature_lengths.get(k)
        if length is not None and v.shape[0] > length:
          stats[f"{k}_truncated_tokens"] += int(v.shape[0] - length)
          v = v[:length]
        out[k] = v
        real = int(v.size) - sum(int(np.count_nonzero(v == i)) for i in eos_pad[k])
        stats[f"{k}_tokens"] += real
        stats[f"{k}_max_tokens"] = max(stats[f"{k}_max_tokens"], real)
        stats[f"{k}_length_tokens"] += int(v.size)
        if length is not None:
          stats[f"{k}_padded_slots"] += int(length - v.size)
      if "inputs" in out and out["inputs"].size and program.mode_ids:
        mode = program.mode_ids.get(int(out["inputs"][0]))
        if mode is not None:
          stats["mode_examples"][mode] = stats["mode_examples"].get(mode, 0) + 1
      stats["examples"] += 1
      key = cache_plan.example_key(unit.seed, index)
      examples.append((cache_plan.shard_of(key, unit.num_shards), key, serialize_example(out)))
    return UnitResult(examples=examples, dead_letters=dead, stats=stats)
