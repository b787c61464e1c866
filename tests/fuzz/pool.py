"""What earlier responses revealed, so later requests hit real records.

Every successful response is harvested: ids, seqs and versions by field
name, each record's ids together (a job's id with its lease id, a
checkpoint's run with its checkpoint id), and page tokens by RPC with the
request that earned them (its filters are what the token is good for). The
generator draws from here; each list keeps only its newest entries.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from random import Random
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

WELL_KNOWN = (
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
)
"""Message types treated as values, never walked field by field."""

ID_NAMES = frozenset({"queue", "kind", "idempotency_key", "workflow_name", "before"})
NUMBER_NAMES = frozenset(
    {"seq", "last_seq", "first_seq", "version", "change_id", "attempt", "step", "iteration"}
)
ALIASES: dict[str, tuple[str, ...]] = {
    "before": ("checkpoint_id",),
    "expected_parent": ("checkpoint_id", "parent_checkpoint_id"),
    "after_seq": ("seq", "last_seq", "first_seq"),
    "up_to_seq": ("seq", "last_seq"),
    "last_seq": ("seq", "last_seq"),
    "expected_version": ("version",),
    "job_ids": ("job_id",),
    "kinds": ("kind",),
    "after_change_id": ("change_id",),
}
"""Request field -> names under which a response carries the values it wants."""
KEEP = 64
RESERVED = "statekeeper."
"""Queues and kinds with this prefix belong to the server (see jobs.proto)."""


@dataclass(frozen=True)
class Page:
    """A page token a list call returned, and the request it answered."""

    token: str
    request: Message


def is_id_name(name: str) -> bool:
    """Whether a field of this name holds an id (see common.proto)."""
    return name.endswith(("_id", "_ids")) or name in ID_NAMES or name == "kinds"


def _remembered(field: FieldDescriptor) -> bool:
    """Ids, positions and enum values (a status, a state) are worth reusing."""
    if field.is_repeated or field.message_type is not None:
        return False
    return is_id_name(field.name) or field.name in NUMBER_NAMES or field.enum_type is not None


class Pool:
    """Ids, record contexts and page tokens seen in responses."""

    def __init__(self) -> None:
        self._values: dict[str, deque[Any]] = {}
        self._contexts: deque[dict[str, Any]] = deque(maxlen=4 * KEEP)
        self._pages: dict[str, deque[Page]] = {}

    def harvest(self, rpc_path: str, response: Message, request: Message | None) -> None:
        """Remember what `response` (to `request` of `rpc_path`) reveals."""
        token = getattr(response, "next_page_token", "")
        if token and request is not None:
            self._pages.setdefault(rpc_path, deque(maxlen=KEEP)).append(Page(token, request))
        self._walk(response)

    def _walk(self, message: Message) -> None:
        context: dict[str, Any] = {}
        for field, value in message.ListFields():
            if field.message_type is None:
                if _remembered(field):
                    context[field.name] = value
                continue
            if field.message_type.full_name in WELL_KNOWN:
                continue
            children = value if field.is_repeated else [value]
            if not field.is_repeated:
                for inner, inner_value in value.ListFields():
                    if _remembered(inner):
                        context.setdefault(inner.name, inner_value)
            for child in children:
                if isinstance(child, Message):
                    self._walk(child)
        if any(isinstance(value, str) and value.startswith(RESERVED) for value in context.values()):
            return  # the server's own queue and kinds: callers may not use them
        for name, value in context.items():
            self._values.setdefault(name, deque(maxlen=KEEP)).append(value)
        if any(is_id_name(name) for name in context):
            self._contexts.append(context)

    def context(self, rng: Random, wanted: set[str]) -> dict[str, Any]:
        """A record's values that fill most of the `wanted` field names (maybe none)."""
        if not self._contexts:
            return {}
        candidates = [rng.choice(self._contexts) for _ in range(12)]

        def overlap(context: dict[str, Any]) -> int:
            return sum(1 for name in wanted if lookup(context, name) is not None)

        return max(candidates, key=overlap)

    def value(self, rng: Random, name: str) -> Any:
        """A value seen under `name` (or one of its aliases), or None."""
        for key in (name, *ALIASES.get(name, ())):
            seen = self._values.get(key)
            if seen:
                return rng.choice(seen)
        return None

    def page(self, rng: Random, rpc_path: str) -> Page | None:
        """A page token that `rpc_path` returned, with its request; None if none yet."""
        seen = self._pages.get(rpc_path)
        return rng.choice(seen) if seen else None

    def foreign_token(self, rng: Random, rpc_path: str) -> str | None:
        """A page token that another RPC returned, or None."""
        others = sorted(path for path, seen in self._pages.items() if path != rpc_path and seen)
        if not others:
            return None
        return rng.choice(self._pages[rng.choice(others)]).token


def lookup(context: dict[str, Any], name: str) -> Any:
    """The value `context` holds for a request field `name`, through aliases; None if none."""
    for key in (name, *ALIASES.get(name, ())):
        if key in context:
            return context[key]
    return None
