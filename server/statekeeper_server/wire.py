"""Protobuf wire bytes built by concatenation, for answers made of encoded records.

Stored records (snapshots, checkpoints, event envelopes) are kept in their
encoded form, and a record the server has just encoded for storage is at
hand as bytes too. A response carrying such records is built around those
bytes here instead of parsing them into messages and encoding those again:
for a record of many JSON fields that round trip costs tens of
milliseconds of the event loop per megabyte.

Each function writes one field as protobuf's own encoder does (tag, then
value; empty text and zero numbers omitted; a message field written
whenever it is present, even empty). Fields written in field-number order
therefore make exactly the bytes protobuf produces for the same message.
Servicers return such bytes as their response; the request interceptor
sends bytes as they are.
"""

from __future__ import annotations

from collections.abc import Iterable

_ONE_BYTE = tuple(bytes((value,)) for value in range(0x80))

_VARINT = 0
_LENGTH_DELIMITED = 2


def varint(value: int) -> bytes:
    """The base-128 varint of a non-negative integer."""
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def message_field(number: int, data: bytes) -> bytes:
    """Field `number` holding the message whose encoding is `data` (written even when
    `data` is empty: the field is present)."""
    return _tag(number, _LENGTH_DELIMITED) + varint(len(data)) + data


def repeated_message_field(number: int, items: Iterable[bytes]) -> bytes:
    """Repeated field `number` holding the messages encoded as `items`, in order."""
    tag = _tag(number, _LENGTH_DELIMITED)
    return b"".join([tag + varint(len(data)) + data for data in items])


def string_field(number: int, text: str) -> bytes:
    """String field `number`; nothing when `text` is empty (the default)."""
    return message_field(number, text.encode()) if text else b""


def repeated_string_field(number: int, texts: Iterable[str]) -> bytes:
    """Repeated string field `number` holding `texts`, in order (empty ones included)."""
    return repeated_message_field(number, (text.encode() for text in texts))


def uint_field(number: int, value: int) -> bytes:
    """Unsigned integer (or bool) field `number`; nothing when `value` is 0 (the default)."""
    return _tag(number, _VARINT) + varint(value) if value else b""


def packed_bool_field(number: int, values: Iterable[bool]) -> bytes:
    """Repeated bool field `number` in proto3's packed form; nothing when `values` is empty."""
    body = bytes(1 if value else 0 for value in values)
    return message_field(number, body) if body else b""
