"""Just enough of the protobuf wire format to write what no library would.

Used to put invalid UTF-8 inside a string field, a field with the wrong wire
type, or a truncated record into an otherwise valid request: appending a
record for a nested field to a valid encoding merges it into that field.
"""

from __future__ import annotations

from collections.abc import Sequence
from random import Random

from google.protobuf.descriptor import FieldDescriptor

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5

_F = FieldDescriptor
_I64_TYPES = {_F.TYPE_DOUBLE, _F.TYPE_FIXED64, _F.TYPE_SFIXED64}
_I32_TYPES = {_F.TYPE_FLOAT, _F.TYPE_FIXED32, _F.TYPE_SFIXED32}
_LEN_TYPES = {_F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_MESSAGE}


def varint(value: int) -> bytes:
    """Base-128 varint; negative numbers as their 64-bit two's complement."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    """The key of a record: field number and wire type."""
    return varint((number << 3) | wire_type)


def record(number: int, wire_type: int, payload: bytes) -> bytes:
    """One record; `payload` is the value as written after the key (LEN adds the length)."""
    if wire_type == LEN:
        return tag(number, LEN) + varint(len(payload)) + payload
    return tag(number, wire_type) + payload


def nest(path: Sequence[FieldDescriptor], inner: bytes) -> bytes:
    """`inner` (the encoding of a message) placed inside the message fields of `path`."""
    for field in reversed(path):
        inner = record(field.number, LEN, inner)
    return inner


def expected_wire_type(field: FieldDescriptor) -> int:
    """The wire type a field of this type is written with (unpacked)."""
    if field.type in _LEN_TYPES:
        return LEN
    if field.type in _I64_TYPES:
        return I64
    if field.type in _I32_TYPES:
        return I32
    return VARINT


def random_record(number: int, wire_type: int, rng: Random) -> bytes:
    """A record of `wire_type` for field `number` with a random value."""
    if wire_type == VARINT:
        return record(number, VARINT, varint(rng.getrandbits(rng.choice((1, 7, 32, 64)))))
    if wire_type == I64:
        return record(number, I64, rng.randbytes(8))
    if wire_type == I32:
        return record(number, I32, rng.randbytes(4))
    if wire_type == LEN:
        return record(number, LEN, rng.randbytes(rng.randint(0, 12)))
    return tag(number, wire_type)  # group markers and the invalid types 6 and 7


INVALID_UTF8: tuple[bytes, ...] = (
    b"\xff",
    b"\xfe\xff",
    b"\xc3\x28",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82",
    b"ok\x80",
    b"run-\xf0\x9f\x98",
)
"""Byte strings that are not UTF-8: stray continuation, overlong, surrogate, too high, cut."""
