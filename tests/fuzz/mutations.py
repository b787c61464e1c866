"""Mutations of a valid-looking request, each of one kind.

Structured mutations change the request message at one to three places
found through its descriptor (any depth): boundary values of every scalar
kind, hostile strings, unknown enum numbers, NaN and infinities, Timestamps
and Durations at and past their ranges, deep and wide JSON, forged page
tokens, oversized repeated fields. Raw mutations return bytes no protobuf
library would write: random bytes, a truncated encoding, invalid UTF-8 in
a string field, a field with the wrong wire type. Header mutations
duplicate or spoil `x-statekeeper-namespace`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from random import Random
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from tests.fuzz import values, wire
from tests.fuzz.catalog import Rpc, descriptor_of
from tests.fuzz.generator import (
    FLOAT_TYPES,
    TIME_TYPES,
    RequestBuilder,
    get_json,
    is_repeated,
    set_json,
)
from tests.fuzz.pool import WELL_KNOWN

Path = tuple[FieldDescriptor, ...]
"""Fields from the request down to one field, each a message field but the last."""

JSON_TYPES = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)
MAX_PATH = 6
NAMESPACE_HEADER = "x-statekeeper-namespace"

VALID = "valid"
METADATA = "namespace-header"


@dataclass(frozen=True)
class MutationInput:
    """What a mutation may use besides the request."""

    rpc: Rpc
    builder: RequestBuilder
    rng: Random


@cache
def paths(descriptor: Descriptor) -> tuple[Path, ...]:
    """Every field reachable from `descriptor`, as a path (well-known types are leaves)."""
    found: list[Path] = []

    def walk(current: Descriptor, prefix: Path, seen: frozenset[str]) -> None:
        for field in current.fields:
            path = (*prefix, field)
            found.append(path)
            inner = field.message_type
            if (
                inner is not None
                and inner.full_name not in WELL_KNOWN
                and inner.full_name not in seen
                and len(path) < MAX_PATH
            ):
                walk(inner, path, seen | {inner.full_name})

    walk(descriptor, (), frozenset({descriptor.full_name}))
    return tuple(found)


def describe(path: Path) -> str:
    """`a.b.c` for a path."""
    return ".".join(field.name for field in path)


def _leaves(descriptor: Descriptor, accept: Callable[[FieldDescriptor], bool]) -> list[Path]:
    return [path for path in paths(descriptor) if accept(path[-1])]


def _message_type(field: FieldDescriptor) -> str:
    return field.message_type.full_name if field.message_type is not None else ""


def _existing(items: Any, chance: float, rng: Random) -> int | None:
    """Index of an existing element to change (with `chance`), or None to add one.

    Draws the same randoms however many elements there are, so what a seed
    decides further on does not depend on what earlier requests revealed.
    """
    roll, where = rng.random(), rng.random()
    return int(where * len(items)) if items and roll < chance else None


def _parent(message: Message, path: Path, rng: Random) -> Message:
    """The message holding the last field of `path`, created where missing."""
    current = message
    for field in path[:-1]:
        if is_repeated(field):
            items = getattr(current, field.name)
            index = _existing(items, 0.7, rng)
            current = items.add() if index is None else items[index]
        else:
            current = getattr(current, field.name)
    return current


def _set_scalar(message: Message, path: Path, value: object, rng: Random) -> None:
    parent, field = _parent(message, path, rng), path[-1]
    if is_repeated(field):
        items = getattr(parent, field.name)
        index = _existing(items, 0.5, rng)
        if index is None:
            items.append(value)
        else:
            items[index] = value
    else:
        setattr(parent, field.name, value)


def _sub_message(message: Message, path: Path, rng: Random) -> Message:
    parent, field = _parent(message, path, rng), path[-1]
    child: Message
    if is_repeated(field):
        items = getattr(parent, field.name)
        index = _existing(items, 0.5, rng)
        child = items.add() if index is None else items[index]
    else:
        child = getattr(parent, field.name)
        child.SetInParent()
    return child


# -- structured mutations: each changes one to three fields it accepts ----------------


@dataclass(frozen=True)
class LeafMutation:
    """Changes fields of the kinds it `accepts`, wherever they sit in the request."""

    accepts: Callable[[FieldDescriptor], bool]
    change: Callable[[Message, Path, MutationInput], str]
    """Changes the field at the path; returns a note saying how."""

    def applies_to(self, descriptor: Descriptor) -> bool:
        """Whether a request of this type has a field to change."""
        return bool(_leaves(descriptor, self.accepts))

    def __call__(self, request: Message, given: MutationInput) -> str | None:
        """Change one to three accepted fields; None if the request has none."""
        candidates = _leaves(descriptor_of(request), self.accepts)
        if not candidates:
            return None
        rng = given.rng
        count = min(rng.choice((1, 1, 2, 3)), len(candidates))
        return "; ".join(
            self.change(request, path, given) for path in rng.sample(candidates, count)
        )


NUMERIC = frozenset(
    {
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
        FieldDescriptor.CPPTYPE_DOUBLE,
        FieldDescriptor.CPPTYPE_FLOAT,
        FieldDescriptor.CPPTYPE_BOOL,
    }
)


def _boundary(message: Message, path: Path, given: MutationInput) -> str:
    """0, -1 and the extremes of each integer kind; NaN, infinities and extremes of doubles."""
    field, rng = path[-1], given.rng
    if field.type == FieldDescriptor.TYPE_BOOL:
        value: object = rng.random() < 0.5
    elif field.type in FLOAT_TYPES:
        value = rng.choice(values.DOUBLES)
    elif field.cpp_type == FieldDescriptor.CPPTYPE_INT32:
        value = rng.choice(values.INT32)
    elif field.cpp_type == FieldDescriptor.CPPTYPE_INT64:
        value = rng.choice(values.INT64)
    elif field.cpp_type == FieldDescriptor.CPPTYPE_UINT32:
        value = rng.choice(values.UINT32)
    else:
        value = rng.choice(values.UINT64)
    _set_scalar(message, path, value, rng)
    return f"{describe(path)}={value!r}"


def _hostile(message: Message, path: Path, given: MutationInput) -> str:
    """Empty, huge, control characters, newlines, ANSI escapes, NUL, odd Unicode.

    In a string field, or as a key of a JSON object.
    """
    rng = given.rng
    text = values.hostile_string(rng)
    if _is_json(path[-1]):
        # Keys are what error messages (and so logs) quote: often one that would
        # break a log, with a value some filters refuse.
        if rng.random() < 0.5:
            text = rng.choice(values.LOG_BREAKERS)
        target = _sub_message(message, path, rng)
        item = values.plausible_json(rng) if rng.random() < 0.5 else 1.0
        set_json(target, values.with_key(rng, get_json(target), text, item))
        return f"{describe(path)} holds key {text[:40]!r} ({len(text)} chars)"
    _set_scalar(message, path, text, rng)
    shown = f"{text[:40]!r}{'...' if len(text) > 40 else ''}"
    return f"{describe(path)}={shown} ({len(text)} chars)"


def _unknown_enum(message: Message, path: Path, given: MutationInput) -> str:
    """An enum number the proto does not define."""
    enum = path[-1].enum_type
    assert enum is not None
    highest = max(value.number for value in enum.values)
    number = given.rng.choice((highest + 1, 99, -1, 2**31 - 1, -(2**31)))
    _set_scalar(message, path, number, given.rng)
    return f"{describe(path)}={number}"


def _non_finite(message: Message, path: Path, given: MutationInput) -> str:
    """NaN or an infinity in a double, or in a number inside JSON."""
    rng = given.rng
    if path[-1].type in FLOAT_TYPES:
        value = rng.choice(values.NON_FINITE)
        _set_scalar(message, path, value, rng)
        return f"{describe(path)}={value}"
    target = _sub_message(message, path, rng)
    set_json(target, values.with_non_finite(rng, get_json(target)))
    return f"{describe(path)} holds a non-finite number"


def _time(message: Message, path: Path, given: MutationInput) -> str:
    """A Timestamp or Duration at or beyond the range protobuf allows, odd nanos."""
    rng = given.rng
    target = _sub_message(message, path, rng)
    timestamp = _message_type(path[-1]) == "google.protobuf.Timestamp"
    seconds = rng.choice(values.TIMESTAMP_SECONDS if timestamp else values.DURATION_SECONDS)
    nanos = rng.choice(values.NANOS) if rng.random() < 0.5 else 0
    target.seconds = seconds  # type: ignore[attr-defined]
    target.nanos = nanos  # type: ignore[attr-defined]
    return f"{describe(path)}=({seconds}s, {nanos}ns)"


def _json_change(
    make: Callable[[Random], values.JSON], label: Callable[[values.JSON], str]
) -> Callable[[Message, Path, MutationInput], str]:
    def change(message: Message, path: Path, given: MutationInput) -> str:
        rng = given.rng
        target = _sub_message(message, path, rng)
        made = make(rng)
        if rng.random() < 0.35:
            made = values.with_nested(rng, get_json(target), made)
        if target.DESCRIPTOR.full_name == "google.protobuf.Struct" and not isinstance(made, dict):
            made = {values.json_key(rng): made}
        set_json(target, made)
        return f"{describe(path)} holds {label(made)}"

    return change


def _deep(rng: Random) -> values.JSON:
    # Most around the limits: the service's (20) and where a standard client's
    # recursion limit of 100 stops decoding a message holding the value (~30).
    depth = rng.choice((15, 19, 20, 21, 25, 30, 31, 32, 33, 33, 34, 34, 40, 64, 200))
    return values.deep_json(rng, depth)


def _wide_label(made: values.JSON) -> str:
    if not isinstance(made, dict):
        return "wide JSON"
    return f"JSON with {len(made)} keys, longest {max(map(len, made), default=0)} chars"


def _forged_token(message: Message, path: Path, given: MutationInput) -> str:
    """A page token no server issued: random, deep, wrong-typed or huge position, foreign.

    A position forged inside a real token is sent with the request that earned
    that token, so the server gets as far as reading the position.
    """
    pool, picks, path_of_rpc = given.builder.pool, given.builder.picks, given.rpc.path
    page = pool.page(picks, path_of_rpc)
    token, how, from_real = values.forged_token(
        given.rng, page.token if page else None, pool.foreign_token(picks, path_of_rpc)
    )
    if from_real and page is not None and len(path) == 1:
        message.CopyFrom(page.request)
    _set_scalar(message, path, token, given.rng)
    return f"{describe(path)}: {how}"


def _oversized(message: Message, path: Path, given: MutationInput) -> str:
    """A repeated field far past any sensible count."""
    rng = given.rng
    parent, field = _parent(message, path, rng), path[-1]
    items = getattr(parent, field.name)
    count = rng.choice((101, 1001, 1002, 5000))
    if field.message_type is None:
        items.extend([given.builder.scalar(field, rng, {}, given.rpc)] * count)
    else:
        sample = items.add()
        given.builder.fill(sample, rng, {}, given.rpc, depth=4)
        for _ in range(count - 1):
            items.add().CopyFrom(sample)
    return f"{describe(path)} holds {len(items)} items"


def _is_json(field: FieldDescriptor) -> bool:
    return _message_type(field) in JSON_TYPES


def _is_string(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_STRING


STRUCTURED: dict[str, LeafMutation] = {
    "boundary-scalars": LeafMutation(lambda f: f.cpp_type in NUMERIC, _boundary),
    "hostile-strings": LeafMutation(lambda f: _is_string(f) or _is_json(f), _hostile),
    "unknown-enums": LeafMutation(lambda f: f.type == FieldDescriptor.TYPE_ENUM, _unknown_enum),
    "non-finite": LeafMutation(lambda f: f.type in FLOAT_TYPES or _is_json(f), _non_finite),
    "time-range": LeafMutation(lambda f: _message_type(f) in TIME_TYPES, _time),
    "deep-json": LeafMutation(
        _is_json, _json_change(_deep, lambda made: f"JSON {values.json_depth(made)} deep")
    ),
    "wide-json": LeafMutation(_is_json, _json_change(values.wide_json, _wide_label)),
    "forged-token": LeafMutation(
        lambda f: _is_string(f) and f.name.endswith("token"), _forged_token
    ),
    "oversized-repeated": LeafMutation(is_repeated, _oversized),
}


# -- raw mutations: bytes that no protobuf library writes -------------------------------

RawMutation = Callable[[Message, MutationInput], "tuple[bytes, str] | None"]


def raw_random(request: Message, given: MutationInput) -> tuple[bytes, str] | None:
    """Random bytes, alone or after a valid encoding, and malformed records."""
    rng = given.rng
    valid = request.SerializeToString()
    roll = rng.randrange(5)
    if roll == 0:
        data = rng.randbytes(rng.randint(1, 300))
        return data, f"{len(data)} random bytes"
    if roll == 1:
        data = valid + rng.randbytes(rng.randint(1, 64))
        return data, "valid encoding + random tail"
    if roll == 2:
        return valid + b"\x0a\xff\xff\xff\xff\x0f", "length far past the end"
    if roll == 3:
        return valid + b"\x08" + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes"
    return b"\x00" + valid, "field number 0"


def raw_truncated(request: Message, given: MutationInput) -> tuple[bytes, str] | None:
    """A valid encoding cut short."""
    valid = request.SerializeToString()
    if len(valid) < 2:
        return None
    cut = given.rng.randint(1, len(valid) - 1)
    return valid[:cut], f"first {cut} of {len(valid)} bytes"


def raw_bad_utf8(request: Message, given: MutationInput) -> tuple[bytes, str] | None:
    """Invalid UTF-8 in a string field (or a Struct key, a Value string), at any depth."""
    rng = given.rng
    candidates = _leaves(
        descriptor_of(request),
        lambda f: (
            _is_string(f) or _message_type(f) in ("google.protobuf.Struct", "google.protobuf.Value")
        ),
    )
    if not candidates:
        return None
    path = rng.choice(candidates)
    bad = rng.choice(wire.INVALID_UTF8)
    last = path[-1]
    if _is_string(last):
        inner = wire.nest(path[:-1], wire.record(last.number, wire.LEN, bad))
    elif _message_type(last) == "google.protobuf.Struct":
        null_value = wire.record(1, wire.VARINT, wire.varint(0))
        entry = wire.record(1, wire.LEN, bad) + wire.record(2, wire.LEN, null_value)
        inner = wire.nest(path, wire.record(1, wire.LEN, entry))
    else:
        inner = wire.nest(path, wire.record(3, wire.LEN, bad))
    return request.SerializeToString() + inner, f"{describe(path)} holds bytes {bad!r}"


def raw_wire_type(request: Message, given: MutationInput) -> tuple[bytes, str] | None:
    """A field written with a wire type other than its own (or an invalid one)."""
    rng = given.rng
    candidates = paths(descriptor_of(request))
    if not candidates:
        return None
    path = rng.choice(candidates)
    expected = wire.expected_wire_type(path[-1])
    wrong = rng.choice([t for t in (0, 1, 2, 3, 4, 5, 6, 7) if t != expected])
    inner = wire.nest(path[:-1], wire.random_record(path[-1].number, wrong, rng))
    valid = request.SerializeToString()
    data = inner + valid if rng.random() < 0.5 else valid + inner
    return data, f"{describe(path)} as wire type {wrong}"


def _has_utf8_target(descriptor: Descriptor) -> bool:
    return bool(
        _leaves(
            descriptor,
            lambda f: (
                _is_string(f)
                or _message_type(f) in ("google.protobuf.Struct", "google.protobuf.Value")
            ),
        )
    )


def applicable_kinds(rpc: Rpc) -> list[str]:
    """The kinds of mutation that can change a request of `rpc`."""
    descriptor = descriptor_of(rpc.request)
    kinds = [VALID, METADATA, "raw-random", "raw-truncated", "raw-wire-type"]
    kinds += [kind for kind, mutation in STRUCTURED.items() if mutation.applies_to(descriptor)]
    if _has_utf8_target(descriptor):
        kinds.append("raw-bad-utf8")
    return kinds


RAW: dict[str, RawMutation] = {
    "raw-random": raw_random,
    "raw-truncated": raw_truncated,
    "raw-bad-utf8": raw_bad_utf8,
    "raw-wire-type": raw_wire_type,
}


# -- the namespace header ----------------------------------------------------------------

INVALID_NAMESPACES = (
    "../x",
    "a/b",
    " leading",
    "trailing ",
    "x y",
    "-dash",
    ".dot",
    "*",
    "%2e%2e",
    "a;b",
    "a,b",
    "a" * 129,
    "A" * 1000,
    "ns\\x00",
)


@dataclass(frozen=True)
class Headers:
    """Call metadata and what the server must make of it."""

    metadata: tuple[tuple[str, str], ...]
    note: str
    must_refuse: bool
    """The header is invalid or names two namespaces: no call may succeed."""


def namespace_headers(rng: Random, owned: tuple[str, str]) -> Headers:
    """Duplicate, conflicting or invalid `x-statekeeper-namespace` headers."""
    first, second = owned
    invalid = rng.choice(INVALID_NAMESPACES)
    roll = rng.randrange(6)
    if roll == 0:
        return Headers(
            ((NAMESPACE_HEADER, first), (NAMESPACE_HEADER, second)), "two namespaces", True
        )
    if roll == 1:
        twice = ((NAMESPACE_HEADER, first), (NAMESPACE_HEADER, first))
        return Headers(twice, "the same namespace twice", False)
    if roll == 2:
        return Headers(((NAMESPACE_HEADER, invalid),), f"namespace {invalid[:30]!r}", True)
    if roll == 3:
        return Headers(
            ((NAMESPACE_HEADER, first), (NAMESPACE_HEADER, invalid)),
            f"valid then invalid namespace {invalid[:30]!r}",
            True,
        )
    if roll == 4:
        return Headers(
            ((NAMESPACE_HEADER, invalid), (NAMESPACE_HEADER, first)),
            f"invalid namespace {invalid[:30]!r} then valid",
            True,
        )
    return Headers(((NAMESPACE_HEADER, ""),), "empty namespace", False)
