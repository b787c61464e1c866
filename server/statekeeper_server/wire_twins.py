"""Screening JSON values at C speed with wire twins of the request messages.

protobuf (upb) decodes a map much more slowly than a repeated field, and
slower per key the larger the map: a `google.protobuf.Struct` of 95,000
keys takes about 100 ms to decode, the same bytes read as a repeated field
about 5 ms. It decodes holding the GIL, so no thread helps; and walking the
decoded values in Python to check them costs as much again.

A *wire twin* of a request type is the same message declared in another
descriptor pool in which `google.protobuf.Struct`, `Value` and `ListValue`
are plain messages with the same field numbers and wire types: an object's
`fields` map becomes a repeated entry (a map is a repeated entry on the
wire). A body decodes into a twin whenever it decodes into the real message
(twins keep strings as bytes: text that is not UTF-8 is left for the real
decode to refuse). Two twins screen a request before its real decode:

- the *skeleton twin* keeps only the fields that lead to JSON, each as
  undecoded bytes, so counting an object's keys is `len()`, and only what is
  large enough to hold an object over MAX_JSON_OBJECT_KEYS is looked into;
  such an object is refused here, naming the field, before the real decode
  that would cost most for it;
- the *depth twin* nests JSON types only MAX_JSON_DEPTH levels deep: an
  object or list one level deeper decodes into a message with a required
  field that is never sent, and encoding the twin (C, which checks required
  fields as it goes) fails exactly when some value nests too deep.

Non-finite numbers are found in the depth twin's encoding: every JSON
number is a `double` (field 2, wire type 1), which the encoder writes as
the tag byte 0x11 and eight bytes, so a NaN or an infinity shows as 0x11,
six bytes, and two whose exponent bits are all set.

The screen is sound, not exact: it passes a body only if every JSON value
in it nests at most MAX_JSON_DEPTH levels and every number is finite; when
it cannot tell (a value too deep, or eight bytes that look like a
non-finite number, perhaps inside a string), the exact check of
`request_checks` decides and names the field.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message_factory, struct_pb2
from google.protobuf.message import EncodeError, Message

from statekeeper_server.errors import InvalidArgument
from statekeeper_server.limits import MAX_JSON_DEPTH, MAX_JSON_OBJECT_KEYS
from statekeeper_server.piecewise import LENGTH_DELIMITED, read_varint, records

STRUCT_FILE = "google/protobuf/struct.proto"
PACKAGE = "google.protobuf"
STRUCT = f"{PACKAGE}.Struct"
LIST_VALUE = f"{PACKAGE}.ListValue"
VALUE = f"{PACKAGE}.Value"
JSON_TYPES = frozenset((STRUCT, LIST_VALUE, VALUE))

Field = descriptor_pb2.FieldDescriptorProto

NON_FINITE_NUMBER = re.compile(rb"\x11[\x00-\xff]{6}[\xf0-\xff][\x7f\xff]")
"""A number field (2, wire type 1) whose IEEE 754 exponent is all ones: NaN or an infinity."""

ENTRY_BYTES_PER_KEY = 2
"""The fewest bytes an object's key takes on the wire (an empty entry: tag and length)."""
WIDE_BYTES = ENTRY_BYTES_PER_KEY * (MAX_JSON_OBJECT_KEYS + 1)
"""Bytes below which nothing can hold an object over MAX_JSON_OBJECT_KEYS keys."""


def _long_length(minimum: int) -> bytes:
    """A pattern of every shortest varint of `minimum` or more (and maybe a few less)."""
    if 1 << 7 <= minimum < 1 << 14:
        # Two bytes whose second is at least minimum >> 7, or three bytes or more.
        return rb"[\x80-\xff][" + re.escape(bytes([minimum >> 7])) + rb"-\xff]"
    return rb"[\x80-\xff]"


WIDE_OBJECT = re.compile(rb"\x2a" + _long_length(WIDE_BYTES))
"""A `struct_value` (field 5, wire type 2) of about WIDE_BYTES or more, in the shortest
encoding."""


# -- the twin struct.proto files ------------------------------------------------------


def _field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    kind: int,
    type_name: str = "",
    *,
    label: int = Field.LABEL_OPTIONAL,
    oneof: int | None = None,
) -> None:
    added = message.field.add(name=name, number=number, type=kind, label=label)
    if type_name:
        added.type_name = f".{PACKAGE}.{type_name}"
    if oneof is not None:
        added.oneof_index = oneof


def _struct_name(depth: int) -> str:
    return "Struct" if depth == 1 else f"StructAt{depth}"


def _list_name(depth: int) -> str:
    return "ListValue" if depth == 1 else f"ListValueAt{depth}"


def _value_name(depth: int) -> str:
    return "Value" if depth == 0 else f"ValueAt{depth}"


def depth_twin_file() -> descriptor_pb2.FileDescriptorProto:
    """struct.proto with its types nesting at most MAX_JSON_DEPTH levels.

    `Value` is a lone value (depth 0); the objects and lists inside it are
    `Struct` and `ListValue` (depth 1), whose values are `ValueAt1`, and so
    on. A value at depth MAX_JSON_DEPTH holds objects and lists as
    `TooDeep`, whose required field is never sent.
    """
    file = descriptor_pb2.FileDescriptorProto(name=STRUCT_FILE, package=PACKAGE, syntax="proto2")
    too_deep = file.message_type.add(name="TooDeep")
    _field(too_deep, "never_sent", 1, Field.TYPE_BOOL, label=Field.LABEL_REQUIRED)
    for depth in range(MAX_JSON_DEPTH + 1):
        value = file.message_type.add(name=_value_name(depth))
        value.oneof_decl.add(name="kind")
        _field(value, "null_value", 1, Field.TYPE_INT32, oneof=0)
        _field(value, "number_value", 2, Field.TYPE_DOUBLE, oneof=0)
        _field(value, "string_value", 3, Field.TYPE_BYTES, oneof=0)
        _field(value, "bool_value", 4, Field.TYPE_BOOL, oneof=0)
        inner = depth < MAX_JSON_DEPTH
        struct = _struct_name(depth + 1) if inner else "TooDeep"
        array = _list_name(depth + 1) if inner else "TooDeep"
        _field(value, "struct_value", 5, Field.TYPE_MESSAGE, struct, oneof=0)
        _field(value, "list_value", 6, Field.TYPE_MESSAGE, array, oneof=0)
    for depth in range(1, MAX_JSON_DEPTH + 1):
        entry = file.message_type.add(name=f"{_struct_name(depth)}Entry")
        # Required, as every encoder writes them: a twin whose entries all have both
        # encodes to the same size as the real message.
        _field(entry, "key", 1, Field.TYPE_BYTES, label=Field.LABEL_REQUIRED)
        _field(
            entry, "value", 2, Field.TYPE_MESSAGE, _value_name(depth), label=Field.LABEL_REQUIRED
        )
        struct_message = file.message_type.add(name=_struct_name(depth))
        _field(
            struct_message,
            "fields",
            1,
            Field.TYPE_MESSAGE,
            f"{_struct_name(depth)}Entry",
            label=Field.LABEL_REPEATED,
        )
        array_message = file.message_type.add(name=_list_name(depth))
        _field(
            array_message,
            "values",
            1,
            Field.TYPE_MESSAGE,
            _value_name(depth),
            label=Field.LABEL_REPEATED,
        )
    return file


def _twin_pool(struct_file: descriptor_pb2.FileDescriptorProto) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(struct_file)
    return pool


def _add_file(pool: descriptor_pool.DescriptorPool, file: descriptor.FileDescriptor) -> None:
    """Add `file` and what it imports (but struct.proto, which the pool has its own of)."""
    try:
        pool.FindFileByName(file.name)
        return
    except KeyError:
        pass
    for dependency in file.dependencies:
        _add_file(pool, dependency)
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb))


@functools.cache
def _depth_pool() -> descriptor_pool.DescriptorPool:
    return _twin_pool(depth_twin_file())


def depth_twin(message_type: descriptor.Descriptor) -> type[Message]:
    """The depth twin of `message_type` (the same message, JSON types capped)."""
    pool = _depth_pool()
    _add_file(pool, message_type.file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(message_type.full_name))


# -- which fields lead to JSON --------------------------------------------------------


def carries_json(message_type: descriptor.Descriptor) -> bool:
    """Whether a message of `message_type` can hold a Struct, Value or ListValue."""
    return _carries_json(message_type, frozenset())


def _carries_json(message_type: descriptor.Descriptor, seen: frozenset[str]) -> bool:
    if message_type.full_name in JSON_TYPES:
        return True
    if message_type.full_name in seen:
        return False
    seen = seen | {message_type.full_name}
    return any(
        field.message_type is not None and _carries_json(field.message_type, seen)
        for field in message_type.fields
    )


@functools.cache
def _json_fields(
    message_type: descriptor.Descriptor,
) -> tuple[tuple[descriptor.FieldDescriptor, descriptor.Descriptor], ...]:
    """The fields of `message_type` that lead to JSON, with their message types."""
    return tuple(
        (field, field.message_type)
        for field in message_type.fields
        if field.message_type is not None and carries_json(field.message_type)
    )


# -- the skeleton twins: messages as undecoded bytes ------------------------------------

SKELETON_PACKAGE = "statekeeper_skeleton"


@functools.cache
def _skeleton_pool() -> descriptor_pool.DescriptorPool:
    return descriptor_pool.DescriptorPool()


@functools.cache
def skeleton_twin(message_type: descriptor.Descriptor) -> type[Message]:
    """`message_type` with only its fields that lead to JSON, each as repeated bytes.

    Every occurrence of a field is kept (a decoder merges the occurrences of a
    singular message field, so the key count must see all of them), and
    decoding one reads no more than the field boundaries of one message.
    """
    name = message_type.full_name.replace(".", "_")
    file = descriptor_pb2.FileDescriptorProto(
        name=f"{SKELETON_PACKAGE}/{name}.proto", package=SKELETON_PACKAGE, syntax="proto2"
    )
    skeleton = file.message_type.add(name=name)
    for field, _ in _json_fields(message_type):
        skeleton.field.add(
            name=field.name, number=field.number, type=Field.TYPE_BYTES, label=Field.LABEL_REPEATED
        )
    pool = _skeleton_pool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{SKELETON_PACKAGE}.{name}"))


def count_keys(
    message_type: descriptor.Descriptor, data: bytes, path: str = "", *, thorough: bool = False
) -> None:
    """Refuse, naming the field, any JSON object in `data` (a `message_type`) that holds
    more than MAX_JSON_OBJECT_KEYS keys (every entry counted as sent).

    Only what is large enough to hold such an object is looked into: an
    object's key takes at least ENTRY_BYTES_PER_KEY bytes. In a list or an
    object whose `data` is in its shortest encoding (every tag in one byte),
    a nested object that large shows as tag 0x2a and a long length; without
    one, its items are not looked at. `thorough` looks into every list and
    object whatever its encoding. `data` must decode as a `message_type`.
    """
    _count_in(message_type, memoryview(data), path, thorough)


def _count_in(
    message_type: descriptor.Descriptor, data: memoryview, path: str, thorough: bool
) -> None:
    counter = _JSON_COUNTERS.get(message_type.full_name)
    if counter is not None:
        counter(data, path, thorough)
        return
    skeleton_class: Any = skeleton_twin(message_type)
    skeleton = skeleton_class.FromString(data)
    for field, field_type in _json_fields(message_type):
        items = getattr(skeleton, field.name)
        if not items:
            continue
        name = f"{path}.{field.name}" if path else field.name
        if field.is_repeated:
            for index, item in _wide_items(items):
                _count_in(field_type, item, f"{name}[{index}]", thorough)
        else:
            # A decoder merges every occurrence of a singular message field: so does this.
            joined = memoryview(items[0] if len(items) == 1 else b"".join(items))
            if len(joined) >= WIDE_BYTES:
                _count_in(field_type, joined, name, thorough)


def _wide_items(items: Any) -> list[tuple[int, memoryview]]:
    """The items (and their indexes) large enough to hold an object over the key limit."""
    listed = list(items)  # one copy out of the container: iterating it is slower
    if not listed or max(map(len, listed)) < WIDE_BYTES:
        return []
    return [
        (index, memoryview(item)) for index, item in enumerate(listed) if len(item) >= WIDE_BYTES
    ]


def _count_struct(data: memoryview, path: str, thorough: bool) -> None:
    single = _single_item(data)
    if single is not None:
        # One entry (an object wrapping another, say): no decode, no copy.
        _count_entry(single, path, thorough)
        return
    entries = _skeleton_struct().FromString(data).fields
    if len(entries) > MAX_JSON_OBJECT_KEYS:
        raise InvalidArgument(
            path, f"must not hold a JSON object of more than {MAX_JSON_OBJECT_KEYS} keys"
        )
    if not thorough and WIDE_OBJECT.search(data) is None:
        return
    for _, entry in _wide_items(entries):
        _count_entry(entry, path, thorough)


def _count_list(data: memoryview, path: str, thorough: bool) -> None:
    if not thorough and WIDE_OBJECT.search(data) is None:
        return
    single = _single_item(data)
    if single is not None:
        _count_value(single, path, thorough)
        return
    for _, item in _wide_items(_skeleton_list().FromString(data).values):
        _count_value(item, path, thorough)


def _count_entry(data: memoryview, path: str, thorough: bool) -> None:
    values = [payload for number, payload in _fields(data) if number == ENTRY_VALUE]
    if values:
        _count_value(_merged(values), path, thorough)


def _count_value(data: memoryview, path: str, thorough: bool) -> None:
    structs: list[memoryview] = []
    arrays: list[memoryview] = []
    for number, payload in _fields(data):
        if number == VALUE_STRUCT:
            structs.append(payload)
        elif number == VALUE_LIST:
            arrays.append(payload)
    if structs:
        merged = _merged(structs)
        if len(merged) >= WIDE_BYTES:
            _count_struct(merged, path, thorough)
    if arrays:
        merged = _merged(arrays)
        if len(merged) >= WIDE_BYTES:
            _count_list(merged, path, thorough)


def _merged(parts: list[memoryview]) -> memoryview:
    """The occurrences of one message field as the one message a decoder makes of them."""
    return parts[0] if len(parts) == 1 else memoryview(b"".join(parts))


ENTRY_VALUE = 2
VALUE_STRUCT = 5
VALUE_LIST = 6


def _fields(data: memoryview) -> list[tuple[int, memoryview]]:
    """The length-delimited fields of a message's encoding: (number, payload)."""
    return [
        (number, data[payload:end])
        for _, payload, end, number, kind in records(data)
        if kind == LENGTH_DELIMITED
    ]


def _single_item(data: memoryview) -> memoryview | None:
    """The payload of field 1 if `data` is exactly one such field (an object of one key,
    a list of one item), else None."""
    if not data or data[0] != 0x0A:
        return None
    length, at = read_varint(data, 1)
    return data[at:] if at + length == len(data) else None


@functools.cache
def _skeleton_struct() -> Any:
    return skeleton_twin(struct_pb2.Struct.DESCRIPTOR)


@functools.cache
def _skeleton_list() -> Any:
    return skeleton_twin(struct_pb2.ListValue.DESCRIPTOR)


_JSON_COUNTERS: dict[str, Callable[[memoryview, str, bool], None]] = {
    STRUCT: _count_struct,
    LIST_VALUE: _count_list,
    VALUE: _count_value,
}


# -- the screen ------------------------------------------------------------------------


class JsonScreen:
    """Screens the bodies of one request type for its JSON values, at C speed."""

    def __init__(self, message_type: descriptor.Descriptor) -> None:
        self._message_type = message_type
        self._depth_twin = depth_twin(message_type)
        skeleton_twin(message_type)

    def passes(self, data: bytes) -> bool:
        """Whether `data` passes the screen (see `screen`)."""
        return self.screen(data) is not None

    def screen(self, data: bytes) -> Message | None:
        """The depth twin of `data` if every JSON value in it nests at most
        MAX_JSON_DEPTH levels and holds only finite numbers; None if the exact
        check must decide.

        A twin that passed encodes to the sizes the real message does (but for
        a key sent twice in one object, which it keeps twice): its sizes can
        stand for the real message's. Raises InvalidArgument, naming the
        field, if an object holds more than MAX_JSON_OBJECT_KEYS keys, and
        `google.protobuf.message.DecodeError` if `data` is not an encoding of
        the message.
        """
        twin = self._depth_twin.FromString(data)
        try:
            # Encoding checks required fields: only a value nested too deep (or an
            # object's entry without its key or value, which no encoder writes) lacks one.
            shortest = twin.SerializeToString()
        except EncodeError:
            # What lies too deep stays as it was sent: look into everything.
            count_keys(self._message_type, data, thorough=True)
            return None
        if len(shortest) >= WIDE_BYTES:
            count_keys(self._message_type, shortest)
        return None if _holds_non_finite_number(shortest) else twin


def _holds_non_finite_number(shortest: bytes) -> bool:
    """Whether a shortest encoding may hold a NaN or an infinity (which ends in 0x7f or 0xff)."""
    if b"\x7f" not in shortest and b"\xff" not in shortest:
        return False
    return NON_FINITE_NUMBER.search(shortest) is not None


@functools.cache
def screen_for(message_type: descriptor.Descriptor) -> JsonScreen | None:
    """The screen of `message_type`'s bodies; None if it holds no JSON."""
    return JsonScreen(message_type) if carries_json(message_type) else None
