"""Valid-looking requests built from message descriptors.

`RequestBuilder.build` fills a request of any RPC field by field from its
descriptor: ids of `[A-Za-z0-9._:@-]` (often ones earlier responses
returned, so calls hit real records), known enum values, plausible Structs,
recent Timestamps, short Durations, small pages. Field names are the only
hints it takes, plus one rule per message type in `HINTS` where a request
must hold JSON of a given shape to reach deeper code (the built-in
`statekeeper.append_event` job). A new RPC or field is filled the same way
without changes here.

Randomness: every choice that shapes the request draws from the request's
own `rng`, whatever the pool holds, so the same seed builds the same request
shape; which remembered id fills a field is drawn from `picks`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from random import Random
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, OneofDescriptor
from google.protobuf.message import Message

from statekeeper.v1 import events_pb2
from tests.fuzz.catalog import Rpc, descriptor_of
from tests.fuzz.pool import ALIASES, NUMBER_NAMES, WELL_KNOWN, Pool, is_id_name, lookup
from tests.fuzz.values import (
    JSON,
    fresh_id,
    plain_text,
    plausible_json,
    plausible_value,
)

REFERENCE_SECONDS = 1_780_000_000
"""2026-05-28: Timestamps fall within a year of it (fixed, so a seed always builds the same)."""
TIME_TYPES = frozenset({"google.protobuf.Timestamp", "google.protobuf.Duration"})
PAGE_NAMES = frozenset({"page_size", "limit", "max_jobs"})
BATCH_NAMES = frozenset({"inputs", "jobs"})
"""Repeated fields that must hold at least one element to be valid."""
MAX_DEPTH = 6
"""Message nesting below which optional sub-messages are left unset."""
SHORT_DURATION_NAMES = frozenset({"wait"})
"""Durations the server waits out: kept short so valid calls stay quick."""

INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
FLOAT_TYPES = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})


def is_repeated(field: FieldDescriptor) -> bool:
    """Whether `field` is a repeated field (or a map)."""
    return bool(field.is_repeated)


def is_synthetic(oneof: OneofDescriptor) -> bool:
    """Whether `oneof` only carries the presence of a proto3 `optional` field."""
    return len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name


@cache
def field_names(descriptor: Descriptor) -> frozenset[str]:
    """Every field name reachable from `descriptor` (well-known types not entered)."""
    names: set[str] = set()
    pending, seen = [descriptor], set()
    while pending:
        current = pending.pop()
        if current.full_name in seen or current.full_name in WELL_KNOWN:
            continue
        seen.add(current.full_name)
        for field in current.fields:
            names.add(field.name)
            if field.message_type is not None:
                pending.append(field.message_type)
    return frozenset(names)


# -- JSON values in Struct / Value / ListValue ----------------------------------------


def set_json(target: Message, value: JSON) -> None:
    """Store a Python JSON value in a Struct, Value or ListValue (NaN and all)."""
    name = target.DESCRIPTOR.full_name
    if name == "google.protobuf.Struct":
        assert isinstance(target, struct_pb2.Struct)
        target.Clear()
        for key, item in (value if isinstance(value, dict) else {"value": value}).items():
            _set_value(target.fields[key], item)
    elif name == "google.protobuf.ListValue":
        assert isinstance(target, struct_pb2.ListValue)
        target.Clear()
        for item in value if isinstance(value, list) else [value]:
            _set_value(target.values.add(), item)
    else:
        assert isinstance(target, struct_pb2.Value)
        _set_value(target, value)


def _set_value(target: struct_pb2.Value, value: JSON) -> None:
    # Iterative where it matters: values nest hundreds of levels.
    stack: list[tuple[struct_pb2.Value, JSON]] = [(target, value)]
    while stack:
        slot, item = stack.pop()
        if item is None:
            slot.null_value = struct_pb2.NULL_VALUE
        elif isinstance(item, bool):
            slot.bool_value = item
        elif isinstance(item, int | float):
            slot.number_value = float(item)
        elif isinstance(item, str):
            slot.string_value = item
        elif isinstance(item, dict):
            slot.struct_value.SetInParent()
            for key, inner in item.items():
                stack.append((slot.struct_value.fields[key], inner))
        else:
            slot.list_value.SetInParent()
            stack.extend((slot.list_value.values.add(), inner) for inner in item)


def get_json(source: Message) -> JSON:
    """The Python JSON value held by a Struct, Value or ListValue."""
    name = source.DESCRIPTOR.full_name
    if name == "google.protobuf.Struct":
        assert isinstance(source, struct_pb2.Struct)
        return {key: _get_value(item) for key, item in source.fields.items()}
    if name == "google.protobuf.ListValue":
        assert isinstance(source, struct_pb2.ListValue)
        return [_get_value(item) for item in source.values]
    assert isinstance(source, struct_pb2.Value)
    return _get_value(source)


def _get_value(value: struct_pb2.Value) -> JSON:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return get_json(value.struct_value)
    if kind == "list_value":
        return get_json(value.list_value)
    if kind == "null_value" or kind is None:
        return None
    return getattr(value, kind)


def _listing_filter(rpc: Rpc, field: FieldDescriptor) -> bool:
    """Whether `field` of a request narrows a listing (any field of a List request but paging)."""
    return rpc.name.startswith("List") and field.name not in PAGE_NAMES | {"page_token"}


# -- the builder -----------------------------------------------------------------------


class RequestBuilder:
    """Builds valid-looking requests, reusing what `pool` remembers."""

    def __init__(self, pool: Pool, picks: Random) -> None:
        self.pool = pool
        self.picks = picks

    def build(self, rpc: Rpc, rng: Random) -> Message:
        """A request for `rpc` that a careful caller might send."""
        reuse = rng.random() < 0.65
        next_page = rng.random() < 0.25
        context = self.pool.context(self.picks, set(field_names(descriptor_of(rpc.request))))
        request = rpc.request()
        self.fill(request, rng, context if reuse else {}, rpc, depth=0)
        page = self.pool.page(self.picks, rpc.path) if next_page else None
        if page is not None:
            # Ask for the next page of an earlier listing, as a paging caller does.
            request.CopyFrom(page.request)
            request.page_token = page.token  # type: ignore[attr-defined]
        return request

    def fill(
        self, message: Message, rng: Random, context: dict[str, Any], rpc: Rpc, depth: int
    ) -> None:
        """Set the fields of `message` (a message of any type) to plausible values."""
        descriptor = descriptor_of(message)
        if descriptor.full_name in WELL_KNOWN:
            self._well_known(message, None, rng)
            return
        chosen: dict[str, str | None] = {}
        for oneof in descriptor.oneofs:
            members = [field.name for field in oneof.fields]
            if is_synthetic(oneof):
                continue
            chosen[oneof.name] = rng.choice(members) if rng.random() < 0.95 else None
        for field in descriptor.fields:
            group = field.containing_oneof
            if group is not None and group.name in chosen:
                if chosen[group.name] != field.name:
                    continue
                present = True
            elif is_repeated(field):
                present = True
            elif depth == 0 and _listing_filter(rpc, field):
                # Often left out, so listings return several pages (and page tokens) to
                # work with; some such fields are required, so not always.
                present = rng.random() < 0.6
            elif field.message_type is not None and field.message_type.full_name in TIME_TYPES:
                present = rng.random() < 0.3
            elif field.message_type is not None:
                present = rng.random() < (0.9 if depth <= 1 else 0.5) and depth < MAX_DEPTH
            elif field.has_presence:
                present = rng.random() < 0.4
            else:
                present = rng.random() < (0.97 if is_id_name(field.name) else 0.85)
            if not present:
                continue
            if is_repeated(field):
                self._repeated(message, field, rng, context, rpc, depth)
            elif field.message_type is not None:
                child = getattr(message, field.name)
                child.SetInParent()
                if field.message_type.full_name in WELL_KNOWN:
                    self._well_known(child, field, rng)
                else:
                    self.fill(child, rng, context, rpc, depth + 1)
            elif group is not None and field.type == FieldDescriptor.TYPE_BOOL:
                setattr(message, field.name, True)  # a flag chosen in a oneof is meant to be on
            else:
                setattr(message, field.name, self.scalar(field, rng, context, rpc))
        hint = HINTS.get(descriptor.full_name)
        if hint is not None:
            hint(self, message, rng, context, rpc)

    def _repeated(
        self,
        message: Message,
        field: FieldDescriptor,
        rng: Random,
        context: dict[str, Any],
        rpc: Rpc,
        depth: int,
    ) -> None:
        low = 1 if field.name in BATCH_NAMES else 0
        count = rng.randint(low, 3 if depth < 3 else 1)
        items = getattr(message, field.name)
        for index in range(count):
            # Only the first element reuses the record's ids: elements usually differ.
            known = context if index == 0 else {}
            if field.message_type is None:
                items.append(self.scalar(field, rng, known, rpc))
            elif field.message_type.full_name in WELL_KNOWN:
                self._well_known(items.add(), field, rng)
            else:
                self.fill(items.add(), rng, known, rpc, depth + 1)

    def scalar(self, field: FieldDescriptor, rng: Random, context: dict[str, Any], rpc: Rpc) -> Any:
        """A plausible value for a scalar or enum field."""
        name = field.name
        kind = field.type
        if kind == FieldDescriptor.TYPE_STRING:
            if name == "page_token":
                return ""  # the first page; `build` sometimes asks for a next one
            if is_id_name(name) or name in ALIASES:
                return self._remembered(name, fresh_id(rng), rng, context)
            return plain_text(rng)
        if kind == FieldDescriptor.TYPE_ENUM:
            assert field.enum_type is not None
            numbers = [value.number for value in field.enum_type.values]
            nonzero = [number for number in numbers if number != 0] or numbers
            fresh = rng.choice(nonzero) if rng.random() < 0.95 else rng.choice(numbers)
            return self._remembered(name, fresh, rng, context)
        if kind == FieldDescriptor.TYPE_BOOL:
            return rng.random() < 0.3
        if kind in FLOAT_TYPES:
            return round(rng.random() * 2, 3)
        if kind == FieldDescriptor.TYPE_BYTES:
            return rng.randbytes(rng.randint(0, 16))
        if name in PAGE_NAMES:
            return rng.choice((1, 1, 1, 2, 2, 3, 0, 50))
        if name in NUMBER_NAMES or name in ALIASES:
            return self._remembered(name, rng.randint(0, 6), rng, context)
        return rng.randint(0, 20)

    def _remembered(self, name: str, fresh: Any, rng: Random, context: dict[str, Any]) -> Any:
        """`fresh`, or (usually) a value of this name from the context or the pool: one of
        fresh's type, since services may give one name to fields of different types."""
        roll = rng.random()
        if roll < 0.6:
            known = lookup(context, name)
            if type(known) is type(fresh):
                return known
        if roll < 0.75:
            seen = self.pool.value(self.picks, name)
            if type(seen) is type(fresh):
                return seen
        return fresh

    def _well_known(self, message: Message, field: FieldDescriptor | None, rng: Random) -> None:
        name = message.DESCRIPTOR.full_name
        if name == "google.protobuf.Timestamp":
            offset = rng.randint(-365 * 86_400, 365 * 86_400)
            message.seconds = REFERENCE_SECONDS + offset  # type: ignore[attr-defined]
            message.nanos = rng.randrange(1_000_000_000)  # type: ignore[attr-defined]
        elif name == "google.protobuf.Duration":
            short = field is not None and field.name in SHORT_DURATION_NAMES
            roll = rng.random()
            if short or roll < 0.3:
                message.nanos = rng.randrange(0, 200_000_000 if short else 1_000_000_000)  # type: ignore[attr-defined]
            else:
                message.seconds = rng.randint(1, 60 if roll < 0.9 else 3600)  # type: ignore[attr-defined]
        elif name == "google.protobuf.Struct":
            set_json(message, plausible_json(rng))
        elif name == "google.protobuf.ListValue":
            set_json(message, [plausible_value(rng) for _ in range(rng.randint(0, 3))])
        else:
            set_json(message, plausible_value(rng))


# -- hints: JSON shapes the protos describe in prose ---------------------------------


def _append_event_job(
    builder: RequestBuilder, spec: Message, rng: Random, context: dict[str, Any], rpc: Rpc
) -> None:
    """Sometimes make a JobSpec the built-in `statekeeper.append_event` job, well formed."""
    if rng.random() >= 0.15:
        return
    event = events_pb2.AgentEvent()
    builder.fill(event, rng, context, rpc, depth=3)
    payload: dict[str, JSON] = {
        "run_id": builder._remembered("run_id", fresh_id(rng), rng, context),
        "event": json_format.MessageToDict(event),
    }
    if rng.random() < 0.5:
        payload["event_id"] = fresh_id(rng)
    if rng.random() < 0.2:
        payload["expectation"] = {"runExists": True}
    spec.kind = "statekeeper.append_event"  # type: ignore[attr-defined]
    spec.queue = rng.choice(("", "statekeeper.builtin"))  # type: ignore[attr-defined]
    set_json(spec.payload, payload)  # type: ignore[attr-defined]


def _mostly_custom_events(
    builder: RequestBuilder, event: Message, rng: Random, context: dict[str, Any], rpc: Rpc
) -> None:
    """Keep terminal events rare, as in real runs, so batches are not cut short by them."""
    if event.WhichOneof("kind") in TERMINAL_EVENTS and rng.random() < 0.75:
        custom = events_pb2.CustomEvent()
        builder.fill(custom, rng, context, rpc, depth=4)
        event.custom.CopyFrom(custom)  # type: ignore[attr-defined]


TERMINAL_EVENTS = frozenset({"run_completed", "run_failed", "run_cancelled"})

Hint = Callable[[RequestBuilder, Message, Random, dict[str, Any], Rpc], None]
HINTS: dict[str, Hint] = {
    "statekeeper.v1.JobSpec": _append_event_job,
    "statekeeper.v1.AgentEvent": _mostly_custom_events,
}
"""Per message type: a rule applied after the generic fill."""
