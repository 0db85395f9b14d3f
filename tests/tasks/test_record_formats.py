"""`tasks.record_formats.read_varint` against protobuf's own varint encoder, and its errors."""
import pytest
from google.protobuf.internal import encoder

from tasks import record_formats


@pytest.mark.parametrize('value', [0, 1, 127, 128, 300, 16_383, 16_384, 2**31, 2**63 - 1,
                                   2**64 - 1])
def test_read_varint_reads_protobuf_varints(value):
  data = b'\x05' + encoder._VarintBytes(value) + b'\x09'  # pylint: disable=protected-access
  got, pos = record_formats.read_varint(data, 1, len(data))
  assert got == value
  assert data[pos] == 0x09  # the position just after the varint


def test_read_varint_errors():
  with pytest.raises(ValueError, match='bad varint'):
    record_formats.read_varint(b'\xac\x02', 0, 1)  # cut by `end`
  with pytest.raises(ValueError, match='bad varint'):
    record_formats.read_varint(b'\xff' * 11, 0, 11)  # over 10 bytes
