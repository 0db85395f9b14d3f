"""Record formats read without TensorFlow: TFRecord framing, tf.Example, prepared TFDS files.

Also `BadRecord`, the one description of why a raw record is not a document, shared by the
TF-free reader (`tasks.sources`) and the seqio face (`tasks.seqio_sources`). Pure Python: the
TFRecord reader checks record lengths and the CRC32C checksums of every length and payload
(`masked_crc32c`: `google_crc32c` when installed, else a table-driven fallback), raising
`CorruptRecordError` naming the file and byte offset.
"""
import glob as glob_lib
import os
import re
import struct
from typing import Iterator, Optional, Sequence, Tuple, Union

# Why a record is not a document. `malformed_example` is for TFRecord/TFDS payloads that are not a
# decodable tf.Example (the text/JSONL reasons cannot describe them). `invalid_text` is text that
# decodes but is not encodable Unicode: a lone surrogate such as JSON's "\ud800".
BAD_RECORD_REASONS = ('invalid_utf8', 'malformed_json', 'missing_field', 'empty', 'too_long',
                      'malformed_example', 'invalid_text')

class BadRecord(ValueError):
  """A raw record that is not a valid document; `reason` is one of `BAD_RECORD_REASONS`."""

  def __init__(self, reason: str, detail: str = ''):
    if reason not in BAD_RECORD_REASONS:
      raise ValueError(f'BadRecord reason must be one of {BAD_RECORD_REASONS}, got {reason!r}')
    self.reason = reason
    self.detail = detail
    super().__init__(f'{reason}: {detail}' if detail else reason)


# ------------------------------------------------------------------------------------------------
# TFRecord framing and tf.Example wire format, in pure Python.
# A TFRecord is `uint64 length | uint32 masked_crc32c(length bytes) | data | uint32
# masked_crc32c(data)`, little-endian.


class CorruptRecordError(ValueError):
  """A TFRecord whose length or payload fails its CRC32C check, or a truncated file."""


def _crc32c_table():
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_CRC_TABLE = None


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of `data`: `google_crc32c` when installed, else pure Python (slow)."""
  try:
    import google_crc32c  # pylint: disable=g-import-not-at-top
    return google_crc32c.value(bytes(data))
  except ImportError:
    pass
  global _CRC_TABLE
  if _CRC_TABLE is None:
    _CRC_TABLE = _crc32c_table()
  c = 0xFFFFFFFF
  for b in data:
    c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC: `((crc >> 15) | (crc << 17)) + 0xa282ead8` (mod 2**32)."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecord_at(f, path: str, frame_offset: int, length: int) -> bytes:
  """The payload of the record whose frame starts at `frame_offset`, both CRCs checked.

  `f`: `path` opened in binary mode. Raises `CorruptRecordError` naming the file and offset.
  """
  f.seek(frame_offset)
  return check_tfrecord_frame(f.read(12 + length + 4), path, frame_offset, length)


def check_tfrecord_frame(frame: bytes, path: str, frame_offset: int, length: int) -> bytes:
  """The payload of a whole record frame (read at `frame_offset`), both CRCs checked."""
  if len(frame) != 12 + length + 4:
    raise CorruptRecordError(f'{path}: truncated TFRecord at byte {frame_offset}')
  (stored_length,) = struct.unpack('<Q', frame[:8])
  (length_crc,) = struct.unpack('<I', frame[8:12])
  if stored_length != length or masked_crc32c(frame[:8]) != length_crc:
    raise CorruptRecordError(f'{path}: corrupted TFRecord at byte {frame_offset} (length does '
                             'not match its CRC32C or the index)')
  data = frame[12:12 + length]
  (data_crc,) = struct.unpack('<I', frame[12 + length:])
  if masked_crc32c(data) != data_crc:
    raise CorruptRecordError(f'{path}: corrupted TFRecord at byte {frame_offset} (payload fails '
                             'its CRC32C check)')
  return data


def tfrecord_offsets(path: str) -> Iterator[Tuple[int, int]]:
  """Yields `(data_offset, length)` per record of a TFRecord file (length CRCs verified)."""
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    pos = 0
    while pos < size:
      f.seek(pos)
      header = f.read(12)
      if len(header) < 12:
        raise ValueError(f'{path}: truncated TFRecord header at byte {pos}')
      (length,) = struct.unpack('<Q', header[:8])
      if masked_crc32c(header[:8]) != struct.unpack('<I', header[8:12])[0]:
        raise CorruptRecordError(f'{path}: corrupted TFRecord length at byte {pos} (fails its '
                                 'CRC32C check)')
      if pos + 12 + length + 4 > size:
        raise ValueError(f'{path}: TFRecord at byte {pos} claims {length} bytes past the end')
      yield pos + 12, length
      pos += 12 + length + 4


def read_tfrecord_range(path: str, start: int,
                         end: Optional[int]) -> Iterator[Tuple[str, bytes]]:
  with open(path, 'rb') as f:
    for index, (offset, length) in enumerate(tfrecord_offsets(path)):
      if end is not None and index >= end:
        break
      if index >= start:
        yield f'{path}:{index}', read_tfrecord_at(f, path, offset - 12, length)


def read_varint(buf: bytes, pos: int, end: int) -> Tuple[int, int]:
  """`(value, position after it)` of the protobuf base-128 varint at `buf[pos:end]`; ValueError
  when it runs past `end` or past 10 bytes.

  >>> read_varint(bytes([0xAC, 0x02, 0x07]), 0, 3)   # 300, then the next byte at 2
  (300, 2)
  """
  value = shift = 0
  while True:
    if pos >= end or shift > 63:
      raise ValueError('bad varint')
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if not byte & 0x80:
      return value, pos
    shift += 7


def _wire_fields(buf: bytes) -> Iterator[Tuple[int, int, Union[int, bytes]]]:
  """Yields `(field_number, wire_type, value)` of a protobuf message; raises ValueError if bad."""
  pos, n = 0, len(buf)

  while pos < n:
    key, pos = read_varint(buf, pos, n)
    field, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = read_varint(buf, pos, n)
      yield field, wire, value
    elif wire == 1:
      pos += 8
      yield field, wire, 0
    elif wire == 2:
      length, pos = read_varint(buf, pos, n)
      if pos + length > n:
        raise ValueError('length-delimited field past the end')
      yield field, wire, buf[pos:pos + length]
      pos += length
    elif wire == 5:
      pos += 4
      yield field, wire, 0
    else:
      raise ValueError(f'unsupported wire type {wire}')
    if pos > n:
      raise ValueError('field past the end')


def example_bytes_feature(raw: bytes, key: str) -> bytes:
  """First value of bytes feature `key` of a serialized tf.Example.

  tf.Example = {1: Features}; Features = {1: map<string, Feature>} (entries {1: key, 2: value});
  Feature = {1: BytesList, 2: FloatList, 3: Int64List}; BytesList = {1: repeated bytes}.
  """
  want = key.encode('utf-8')
  try:
    for f1, w1, features in _wire_fields(raw):
      if f1 != 1 or w1 != 2:
        continue
      for f2, w2, entry in _wire_fields(features):
        if f2 != 1 or w2 != 2:
          continue
        name, value = b'', b''
        for f3, w3, v in _wire_fields(entry):
          if w3 == 2 and f3 == 1:
            name = v
          elif w3 == 2 and f3 == 2:
            value = v
        if name != want:
          continue
        for f4, w4, lst in _wire_fields(value):
          if f4 == 1 and w4 == 2:
            for f5, w5, item in _wire_fields(lst):
              if f5 == 1 and w5 == 2:
                return item
            raise BadRecord('empty', f'bytes feature {key!r} has no values')
        raise BadRecord('missing_field', f'feature {key!r} is not a bytes feature')
  except ValueError as e:
    if isinstance(e, BadRecord):
      raise
    raise BadRecord('malformed_example', str(e)) from None
  raise BadRecord('missing_field', key)


# ------------------------------------------------------------------------------------------------
# Prepared TFDS datasets on disk.


def _version_key(v: str):
  return tuple(int(x) if x.isdigit() else -1 for x in v.split('.'))


def tfds_dataset_dir(tfds_name: str, data_dir: str) -> str:
  """`data_dir/<name>[/<config>]/<version>` of a prepared TFDS dataset (newest version if none)."""
  name, _, version = tfds_name.partition(':')
  base = os.path.join(os.path.expanduser(data_dir), *name.split('/'))
  if not os.path.isdir(base):
    raise FileNotFoundError(
        f'TFDS dataset {tfds_name!r} is not prepared under tfds_data_dir={data_dir!r} '
        f'(looked for {base}); datasets are never downloaded: prepare it there first.')
  if version:
    path = os.path.join(base, version)
    if not os.path.isdir(path):
      raise FileNotFoundError(f'TFDS dataset {tfds_name!r}: version directory {path} not found')
    return path
  versions = [v for v in os.listdir(base) if re.fullmatch(r'\d+\.\d+\.\d+', v)
              and os.path.isdir(os.path.join(base, v))]
  if not versions:
    raise FileNotFoundError(f'TFDS dataset {tfds_name!r}: no version directory under {base}')
  return os.path.join(base, max(versions, key=_version_key))


def tfds_prepared_files(tfds_name: str, data_dir: str, split: str) -> Sequence[str]:
  path = tfds_dataset_dir(tfds_name, data_dir)
  stem = tfds_name.partition(':')[0].split('/')[0]
  files = sorted(glob_lib.glob(os.path.join(path, f'{stem}-{split}.tfrecord*')))
  if not files:
    raise FileNotFoundError(f'TFDS dataset {tfds_name!r} split {split!r}: no TFRecord shards '
                            f'{stem}-{split}.tfrecord* in {path}')
  return files
