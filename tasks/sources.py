"""Corpora: where raw documents come from, with one definition of a valid document.

A corpus is described by a `CorpusSpec` (a frozen dataclass). It has two faces:

1. A TensorFlow-free record API, for the Beam cache job and anything else that must not import TF:
   - `spec.files(split)`: the sorted list of files of a split (glob patterns expanded).
   - `spec.unit_count(path)`: the size of a file in the units `read_range` takes: bytes for text and
     JSONL files, records for TFRecord files.
   - `spec.split_ranges(path, num_ranges)`: `num_ranges` contiguous `(start, end)` ranges covering
     the file.
   - `spec.read_range(path, start, end)`: yields `(record_key, raw_bytes)`. For text/JSONL files the
     range is in bytes and a record belongs to the range where it STARTS, so any partition of a file
     into ranges yields every record exactly once. For TFRecord files the range is in record
     indices.
   - `spec.parse(raw_bytes) -> str`: the document text, or raises `BadRecord(reason)` with `reason`
     in `BAD_RECORD_REASONS`.
2. A `seqio.DataSource` (`spec.data_source()`) for on-the-fly use with `seqio.get_dataset` /
   `task.get_dataset`. It yields `{'text': tf.string}` and is built on the record API above (the same
   reader and the same `parse`, bad records skipped), so both faces agree on what a valid document
   is, byte for byte.

Formats:
- `'text'`: plain text; `text_mode='line'` (one document per line) or `'paragraph'` (documents are
  runs of non-blank lines separated by blank lines). Blank lines are separators, never records.
- `'jsonl'`: one JSON object per line; the document is `text_field` (dots address nested objects:
  `'meta.body'`). Blank lines are skipped.
- `'tfrecord'`: TFRecord files of serialized `tf.Example`; the document is the first value of the
  bytes feature `feature_key`. The TF-free reader parses TFRecord framing and `tf.Example` wire
  format in pure Python; it checks record lengths but not the CRC32C checksums (no CRC32C in the
  standard library); TF's reader, used by nothing here, would.
- `'tfds'`: a TFDS dataset already prepared under `tfds_data_dir` (never downloaded). The seqio face
  reads it with `tfds.builder(name, data_dir=...)`; the TF-free face reads the prepared TFRecord
  shards directly (TFDS stores `Text` features as `tf.Example` bytes features under the feature's
  name), so `feature_key` names the text feature for both.

Example (TF-free):
  spec = CorpusSpec(name='wiki', format='jsonl', splits={'train': '/data/wiki/*.jsonl'})
  for path in spec.files('train'):
    for start, end in spec.split_ranges(path, 8):
      for key, raw in spec.read_range(path, start, end):
        try:
          text = spec.parse(raw)
        except BadRecord as e:
          count_dead_letter(e.reason)
"""
import dataclasses
import glob as glob_lib
import json
import os
import re
from typing import Callable, Iterator, Mapping, Optional, Sequence, Tuple, Union

from tasks import record_formats
from tasks.record_formats import BAD_RECORD_REASONS  # noqa: F401  (part of this module's API)
from tasks.record_formats import BadRecord

FORMATS = ('text', 'jsonl', 'tfrecord', 'tfds')
TEXT_MODES = ('line', 'paragraph')
_READ_CHUNK = 1 << 16


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """Where a corpus lives and how to read documents from it.

  Attributes:
    name: corpus name; tasks are registered as `<name>_<objective>`. Lowercase letters, digits, `_`.
    format: one of `FORMATS`.
    splits: split name -> glob pattern (or tuple of patterns) of files. Not used for `'tfds'`.
    text_mode: `'line'` or `'paragraph'` (format `'text'` only).
    text_field: JSONL field holding the document (dots address nested objects).
    feature_key: tf.Example bytes feature (format `'tfrecord'`) or TFDS text feature (`'tfds'`).
    tfds_name: TFDS dataset name, `name[/config][:version]` (format `'tfds'`).
    tfds_data_dir: directory holding prepared TFDS datasets (format `'tfds'`).
    tfds_splits: split names offered for a TFDS corpus.
    max_document_chars: documents longer than this (in characters) are `too_long` bad records.
    prepare: optional module-level function called (with no arguments) before the files of a split
      are listed, for corpora derived on first use (e.g. `tasks.builtin`); must be idempotent.
  """
  name: str
  format: str = 'text'
  splits: Mapping[str, Union[str, Tuple[str, ...]]] = dataclasses.field(default_factory=dict)
  text_mode: str = 'line'
  text_field: str = 'text'
  feature_key: str = 'text'
  tfds_name: Optional[str] = None
  tfds_data_dir: Optional[str] = None
  tfds_splits: Tuple[str, ...] = ('train', 'validation')
  max_document_chars: int = 1_000_000
  prepare: Optional[Callable[[], None]] = None

  def __post_init__(self):
    if not re.fullmatch(r'[a-z][a-z0-9_]*', self.name or ''):
      raise ValueError(f'CorpusSpec.name must match [a-z][a-z0-9_]* (it names tasks), got '
                       f'{self.name!r}')
    if self.format not in FORMATS:
      raise ValueError(f'CorpusSpec.format must be one of {FORMATS}, got {self.format!r}')
    if self.text_mode not in TEXT_MODES:
      raise ValueError(f'CorpusSpec.text_mode must be one of {TEXT_MODES}, got {self.text_mode!r}')
    if not self.text_field:
      raise ValueError(f'CorpusSpec.text_field must be non-empty, got {self.text_field!r}')
    if not self.feature_key:
      raise ValueError(f'CorpusSpec.feature_key must be non-empty, got {self.feature_key!r}')
    if self.prepare is not None and not callable(self.prepare):
      raise ValueError(f'CorpusSpec.prepare must be callable or None, got {self.prepare!r}')
    if not isinstance(self.max_document_chars, int) or self.max_document_chars <= 0:
      raise ValueError(f'CorpusSpec.max_document_chars must be a positive int, got '
                       f'{self.max_document_chars!r}')
    if self.format == 'tfds':
      if not self.tfds_name:
        raise ValueError("CorpusSpec.tfds_name is required when format='tfds', got "
                         f'{self.tfds_name!r}')
      if not self.tfds_data_dir:
        raise ValueError("CorpusSpec.tfds_data_dir is required when format='tfds' (datasets are "
                         f'never downloaded), got {self.tfds_data_dir!r}')
      if not self.tfds_splits:
        raise ValueError(f'CorpusSpec.tfds_splits must be non-empty, got {self.tfds_splits!r}')
    else:
      if not self.splits:
        raise ValueError(f'CorpusSpec.splits must map split names to file patterns, got '
                         f'{self.splits!r}')
      for split, pattern in self.splits.items():
        patterns = (pattern,) if isinstance(pattern, str) else tuple(pattern)
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
          raise ValueError(f'CorpusSpec.splits[{split!r}] must be a glob pattern or a tuple of '
                           f'them, got {pattern!r}')
    # Freeze the mapping's values into tuples/str so the spec is hashable and picklable.
    object.__setattr__(self, 'splits', {
        k: (v if isinstance(v, str) else tuple(v)) for k, v in dict(self.splits).items()})
    object.__setattr__(self, 'tfds_splits', tuple(self.tfds_splits))

  def __hash__(self):
    return hash((self.name, self.format, tuple(sorted(self.splits.items())), self.text_mode,
                 self.text_field, self.feature_key, self.tfds_name, self.tfds_data_dir,
                 self.tfds_splits, self.max_document_chars, self.prepare))

  # ----------------------------------------------------------------------------------------------
  # TF-free record API.

  @property
  def split_names(self) -> Tuple[str, ...]:
    return self.tfds_splits if self.format == 'tfds' else tuple(self.splits)

  @property
  def is_tfrecord(self) -> bool:
    """Whether `read_range` takes record-index ranges (else byte ranges)."""
    return self.format in ('tfrecord', 'tfds')

  def files(self, split: str) -> Sequence[str]:
    """Sorted, de-duplicated list of the files of `split`. Raises if there are none."""
    if split not in self.split_names:
      raise ValueError(f'Corpus {self.name!r} has no split {split!r}; splits: '
                       f'{list(self.split_names)}')
    if self.prepare is not None:
      self.prepare()
    if self.format == 'tfds':
      return record_formats.tfds_prepared_files(self.tfds_name, self.tfds_data_dir, split)
    pattern = self.splits[split]
    patterns = (pattern,) if isinstance(pattern, str) else pattern
    found = set()
    for p in patterns:
      p = os.path.expanduser(p)
      if glob_lib.has_magic(p):
        found.update(f for f in glob_lib.glob(p, recursive=True) if os.path.isfile(f))
      elif os.path.isfile(p):
        found.add(p)
    if not found:
      raise FileNotFoundError(f'Corpus {self.name!r} split {split!r}: no file matches '
                              f'{list(patterns)}')
    return sorted(found)

  def unit_count(self, path: str) -> int:
    """Size of `path` in `read_range` units: records for TFRecord, bytes otherwise."""
    if self.is_tfrecord:
      return sum(1 for _ in record_formats.tfrecord_offsets(path))
    return os.path.getsize(path)

  def split_ranges(self, path: str, num_ranges: int) -> Sequence[Tuple[int, int]]:
    """`num_ranges` contiguous `(start, end)` ranges (some possibly empty) covering `path`."""
    if num_ranges < 1:
      raise ValueError(f'num_ranges must be >= 1, got {num_ranges}')
    total = self.unit_count(path)
    bounds = [total * i // num_ranges for i in range(num_ranges + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(num_ranges)]

  def read_range(self, path: str, start: int = 0,
                 end: Optional[int] = None) -> Iterator[Tuple[str, bytes]]:
    """Yields `(record_key, raw_bytes)` for records starting in `[start, end)`.

    Units are bytes for text/JSONL (a record belongs to the range where its first byte lies) and
    record indices for TFRecord/TFDS. `end=None` reads to the end of the file. `record_key` is
    `'<path>:<start offset or record index>'`, unique within a corpus.
    """
    if start < 0 or (end is not None and end < start):
      raise ValueError(f'read_range needs 0 <= start <= end, got start={start} end={end}')
    if self.is_tfrecord:
      yield from record_formats.read_tfrecord_range(path, start, end)
    elif self.format == 'text' and self.text_mode == 'paragraph':
      yield from _read_paragraph_range(path, start, end)
    else:
      yield from _read_line_range(path, start, end)

  def parse(self, raw: bytes) -> str:
    """The document text of a raw record, or raises `BadRecord`.

    A UTF-8 byte order mark at the start of a file is not part of its first record (the readers
    drop it). The same rules apply in both faces: UTF-8 must be valid (`invalid_utf8`) and encodable
    (`invalid_text`: no lone surrogates, which JSON escapes can make); JSONL must be a JSON
    object (`malformed_json`) holding a string at `text_field` (`missing_field`); tf.Example must
    decode (`malformed_example`) and hold the bytes feature `feature_key` (`missing_field`); the
    text must have a non-whitespace character (`empty`) and at most `max_document_chars`
    characters (`too_long`).
    """
    if self.format == 'jsonl':
      text = _decode_utf8(raw)
      try:
        obj = json.loads(text)
      except ValueError as e:
        raise BadRecord('malformed_json', str(e)) from None
      if not isinstance(obj, dict):
        raise BadRecord('malformed_json', f'expected a JSON object, got {type(obj).__name__}')
      for part in self.text_field.split('.'):
        if not isinstance(obj, dict) or part not in obj:
          raise BadRecord('missing_field', self.text_field)
        obj = obj[part]
      if not isinstance(obj, str):
        raise BadRecord('missing_field', f'{self.text_field} is {type(obj).__name__}, not a string')
      text = obj
    elif self.is_tfrecord:
      text = _decode_utf8(record_formats.example_bytes_feature(raw, self.feature_key))
    else:
      text = _decode_utf8(raw)
    return self.check_text(text)

  def check_text(self, text: str) -> str:
    """The rules every document passes whatever its format: `invalid_text`, `empty`, `too_long`.

    `invalid_text`: the text holds a lone surrogate (JSON allows `"\\ud800"`), which no UTF-8
    encoder (SentencePiece, TF, the cache's writers) accepts.
    """
    try:
      text.encode('utf-8')
    except UnicodeEncodeError as e:
      raise BadRecord('invalid_text', f'not encodable as UTF-8 (lone surrogate?): {e.reason} at '
                      f'character {e.start}') from None
    if not text.strip():
      raise BadRecord('empty')
    if len(text) > self.max_document_chars:
      raise BadRecord('too_long', f'{len(text)} > max_document_chars={self.max_document_chars}')
    return text

  def iter_documents(self, split: str, paths: Optional[Sequence[str]] = None) -> Iterator[str]:
    """All valid documents of `split` (or of `paths`), in file order; bad records skipped."""
    for path in (self.files(split) if paths is None else paths):
      for _, raw in self.read_range(path, 0, None):
        try:
          yield self.parse(raw)
        except BadRecord:
          continue

  # ----------------------------------------------------------------------------------------------
  # seqio face.

  def data_source(self):
    """A `seqio.DataSource` yielding `{'text': tf.string}` (valid documents only)."""
    from tasks import seqio_sources  # pylint: disable=g-import-not-at-top  (keeps this module TF-free)
    return seqio_sources.make_data_source(self)


def _decode_utf8(raw: bytes) -> str:
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise BadRecord('invalid_utf8', str(e)) from None


# ------------------------------------------------------------------------------------------------
# Text and JSONL byte-range readers.


def _first_line_start_at_or_after(f, start: int) -> int:
  """Offset of the first line start >= start (a line starts at 0 or right after b'\\n')."""
  if start == 0:
    return 0
  f.seek(start - 1)
  if f.read(1) == b'\n':
    return start
  f.readline()  # Rest of the line that began before `start`.
  return f.tell()


def _line_before_is_blank(f, line_start: int) -> bool:
  """Whether the line ending at `line_start - 1` is blank (True at the start of the file)."""
  if line_start == 0:
    return True
  # Scan backwards from the '\n' at line_start - 1 to the previous '\n' (or the file start).
  pos = line_start - 1
  content = b''
  while pos > 0:
    chunk_start = max(0, pos - _READ_CHUNK)
    f.seek(chunk_start)
    chunk = f.read(pos - chunk_start)
    nl = chunk.rfind(b'\n')
    if nl >= 0:
      content = chunk[nl + 1:] + content
      return not content.strip()
    content = chunk + content
    if _strip_bom(content, chunk_start).strip():
      return False
    pos = chunk_start
  return not _strip_bom(content, 0).strip()  # the file's first line: a BOM alone is blank


UTF8_BOM = b'\xef\xbb\xbf'


def _strip_bom(line: bytes, pos: int) -> bytes:
  """The first line of a file without a leading UTF-8 byte order mark (editors on Windows add one)."""
  return line[len(UTF8_BOM):] if pos == 0 and line.startswith(UTF8_BOM) else line


def _strip_eol(line: bytes) -> bytes:
  if line.endswith(b'\r\n'):
    return line[:-2]
  if line.endswith(b'\n'):
    return line[:-1]
  return line


def _read_line_range(path: str, start: int, end: Optional[int]) -> Iterator[Tuple[str, bytes]]:
  with open(path, 'rb') as f:
    pos = _first_line_start_at_or_after(f, start)
    f.seek(pos)
    while end is None or pos < end:
      raw_line = f.readline()
      if not raw_line:
        break
      line = _strip_bom(raw_line, pos)
      if line.strip():
        yield f'{path}:{pos}', _strip_eol(line)
      pos += len(raw_line)


def _read_paragraph_range(path: str, start: int,
                          end: Optional[int]) -> Iterator[Tuple[str, bytes]]:
  with open(path, 'rb') as f:
    pos = _first_line_start_at_or_after(f, start)
    prev_blank = _line_before_is_blank(f, pos)
    f.seek(pos)
    para_start, para_lines = None, []
    while True:
      raw_line = f.readline()
      line = _strip_bom(raw_line, pos)
      blank = not line.strip()
      if para_lines and (blank or not raw_line):
        yield f'{path}:{para_start}', b'\n'.join(_strip_eol(l) for l in para_lines)
        para_start, para_lines = None, []
      if not raw_line:
        break
      if not blank:
        if prev_blank:  # A paragraph starts here.
          if end is not None and pos >= end:
            break
          para_start, para_lines = pos, [line]
        elif para_lines:
          para_lines.append(line)
        # else: continuation of a paragraph that started before `start`: not ours.
      prev_blank = blank
      pos += len(raw_line)
