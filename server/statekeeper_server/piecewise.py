"""Decoding a large request in pieces, so that other calls are served in between.

protobuf decodes holding the GIL, so a thread does not help; but decoding
the concatenation of two encodings is merging the second into the first,
so a body cut at field boundaries decodes piece by piece into the same
message, with the event loop free between pieces. A field too large for
one piece is decoded in pieces itself, into the message it fills: the
singular message field, the new item of a repeated one, or the value of a
map entry with a string key (the key's previous value dropped first, since
a map keeps the last value of a key rather than merging). Anything else
(a string, an entry of another map) is decoded whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from google.protobuf import descriptor
from google.protobuf.message import DecodeError, Message

from statekeeper_server.limits import KIB

PIECE_BYTES = 128 * KIB
"""Bytes decoded at a time (about a millisecond of protobuf's slowest decoding here)."""

MANY_RECORDS = 2_000
"""Fields of one message past which the rest is decoded whole: finding each in Python
costs about a microsecond, more than protobuf takes to decode a small one (an object's
fields are bounded by MAX_JSON_OBJECT_KEYS, and a list's items decode fast)."""

FieldDescriptor = descriptor.FieldDescriptor
LENGTH_DELIMITED = 2
_START_GROUP, _END_GROUP = 3, 4
_FIELD_KINDS = frozenset((0, 1, LENGTH_DELIMITED, _START_GROUP, 5))
"""Wire types a field may start with (an end-group tag only closes a group)."""
_MAP_KEY, _MAP_VALUE = 1, 2


async def decode_in_pieces(message_class: type[Message], data: bytes) -> Message:
    """`message_class.FromString(data)`, letting the event loop run between pieces of at
    most PIECE_BYTES (but a field that cannot be cut).

    `data` must be a well-formed encoding (the request's screen decoded it);
    raises `google.protobuf.message.DecodeError` where the decode would (text
    that is not UTF-8).
    """
    message = message_class()
    for _ in _merge(message, memoryview(data)):
        await asyncio.sleep(0)
    return message


def merge_in_pieces(message: Message, data: bytes) -> None:
    """`message.MergeFromString(data)` in pieces of at most PIECE_BYTES, for a worker
    thread: between two pieces the interpreter may hand the event loop the GIL, which it
    cannot while protobuf decodes one large value.

    Raises `google.protobuf.message.DecodeError` if `data` is not an encoding of the
    message (perhaps after merging some of it).
    """
    if len(data) <= PIECE_BYTES:
        message.MergeFromString(data)
        return
    try:
        for _ in _merge(message, memoryview(data)):
            pass
    except (IndexError, ValueError) as exc:
        # Cut where no well-formed encoding would be: the decode says so.
        raise DecodeError("truncated or malformed encoding") from exc


def _merge(message: Any, data: memoryview) -> Iterator[None]:
    """Merge `data` into `message`, yielding after each piece."""
    if len(data) <= PIECE_BYTES:
        message.MergeFromString(data)
        yield
        return
    fields = message.DESCRIPTOR.fields_by_number
    start = end = 0
    for count, (record_start, payload, record_end, number, kind) in enumerate(records(data)):
        if count == MANY_RECORDS:
            # Small fields: finding them here would cost more than decoding them.
            message.MergeFromString(data[start:])
            yield
            return
        if record_end - record_start > PIECE_BYTES and _can_cut(fields.get(number), kind):
            if end > start:
                # Decoded first: the field's target may be a new item, after these.
                message.MergeFromString(data[start:end])
                yield
            found = _target(message, fields[number], data[payload:record_end])
            if found is not None:
                yield from _merge(*found)
            else:
                message.MergeFromString(data[record_start:record_end])
                yield
            start = end = record_end
            continue
        if record_end - start > PIECE_BYTES and end > start:
            message.MergeFromString(data[start:end])
            yield
            start = record_start
        end = record_end
    if end > start:
        message.MergeFromString(data[start:end])
        yield


def _can_cut(field: FieldDescriptor | None, kind: int) -> bool:
    return (
        field is not None
        and kind == LENGTH_DELIMITED
        and field.type == FieldDescriptor.TYPE_MESSAGE
    )


def _target(
    message: Any, field: FieldDescriptor, payload: memoryview
) -> tuple[Any, memoryview] | None:
    """The message a large field's payload decodes into, and what to decode into it;
    None if the field must be decoded whole."""
    message_type = field.message_type
    if message_type is None:
        return None
    if message_type.GetOptions().map_entry:
        return _map_value(message, message_type, field.name, payload)
    if field.is_repeated:
        return getattr(message, field.name).add(), payload
    return getattr(message, field.name), payload


def _map_value(
    message: Any, entry_type: descriptor.Descriptor, name: str, entry: memoryview
) -> tuple[Any, memoryview] | None:
    key_field = entry_type.fields_by_number[_MAP_KEY]
    value_field = entry_type.fields_by_number[_MAP_VALUE]
    if key_field.type != FieldDescriptor.TYPE_STRING or value_field.message_type is None:
        return None
    found = [(number, kind) for _, _, _, number, kind in records(entry)]
    if found != [(_MAP_KEY, LENGTH_DELIMITED), (_MAP_VALUE, LENGTH_DELIMITED)]:
        # Not the one key and one value every encoder writes: decoded whole, the entry is
        # read, or refused, exactly as the decode would.
        return None
    (_, key_start, key_end, _, _), (_, value_start, value_end, _, _) = records(entry)
    key_bytes, value = entry[key_start:key_end], entry[value_start:value_end]
    try:
        key = key_bytes.tobytes().decode()
    except UnicodeDecodeError:
        return None
    container = getattr(message, name)
    if key in container:
        del container[key]
    return container[key], value


def records(data: memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """(start, payload start, end, field number, wire type) of each top-level field of
    `data`, a well-formed encoding; a group is one field, what it holds skipped."""
    at, end = 0, len(data)
    while at < end:
        start = at
        key, at = read_varint(data, at)
        number, kind = key >> 3, key & 7
        if number == 0 or kind not in _FIELD_KINDS:
            raise ValueError("not a field's tag")
        payload = at
        if kind == LENGTH_DELIMITED:
            length, payload = read_varint(data, at)
            at = payload + length
        else:
            at = _skip(data, at, kind)
        if at > end:
            raise ValueError("a field runs past the end of the encoding")
        yield start, payload, at, number, kind


def _skip(data: memoryview, at: int, kind: int) -> int:
    """The position after a field's value of wire type `kind` starting at `at`."""
    if kind == 0:
        return read_varint(data, at)[1]
    if kind == 1:
        return at + 8
    if kind == 5:
        return at + 4
    if kind == LENGTH_DELIMITED:
        length, at = read_varint(data, at)
        return at + length
    if kind == _START_GROUP:
        depth = 1
        while depth:
            key, at = read_varint(data, at)
            inner = key & 7
            if inner not in _FIELD_KINDS and inner != _END_GROUP:
                raise ValueError("not a field's tag")
            if inner == _START_GROUP:
                depth += 1
            elif inner == _END_GROUP:
                depth -= 1
            else:
                at = _skip(data, at, inner)
        return at
    return at


def read_varint(data: memoryview, at: int) -> tuple[int, int]:
    """The varint at `at` and the position after it."""
    result = shift = 0
    while True:
        byte = data[at]
        at += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, at
        shift += 7
