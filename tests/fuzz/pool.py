"""What earlier responses revealed, so later requests hit real records.

Every successful response is harvested: ids, seqs and versions by field
name, each record's ids together (a job's id with its lease id, a
checkpoint's run with its checkpoint id), and page tokens by RPC. The
generator draws from here; each list keeps only its newest entries.
"""

from __future__ import annotations

from collections import deque
from random import Random
from typing import Any

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


def is_id_name(name: str) -> bool:
    """Whether a field of this name holds an id (see common.proto)."""
    return name.endswith(("_id", "_ids")) or name in ID_NAMES or name == "kinds"


def _remembered(name: str) -> bool:
    return is_id_name(name) or name in NUMBER_NAMES


class Pool:
    """Ids, record contexts and page tokens seen in responses."""

    def __init__(self) -> None:
        self._values: dict[str, deque[Any]] = {}
        self._contexts: deque[dict[str, Any]] = deque(maxlen=4 * KEEP)
        self._tokens: dict[str, deque[str]] = {}

    def harvest(self, rpc_path: str, message: Message) -> None:
        """Remember what `message` (a response of `rpc_path`) reveals."""
        self._walk(rpc_path, message)

    def _walk(self, rpc_path: str, message: Message) -> None:
        context: dict[str, Any] = {}
        for field, value in message.ListFields():
            if field.message_type is None:
                if field.name == "next_page_token":
                    self._tokens.setdefault(rpc_path, deque(maxlen=KEEP)).append(value)
                elif not field.is_repeated and _remembered(field.name):
                    context[field.name] = value
                continue
            if field.message_type.full_name in WELL_KNOWN:
                continue
            children = value if field.is_repeated else [value]
            if not field.is_repeated:
                for inner, inner_value in value.ListFields():
                    scalar = inner.message_type is None and not inner.is_repeated
                    if scalar and _remembered(inner.name):
                        context.setdefault(inner.name, inner_value)
            for child in children:
                if isinstance(child, Message):
                    self._walk(rpc_path, child)
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

    def token(self, rng: Random, rpc_path: str) -> str | None:
        """A page token that `rpc_path` returned, or None."""
        seen = self._tokens.get(rpc_path)
        return rng.choice(seen) if seen else None

    def foreign_token(self, rng: Random, rpc_path: str) -> str | None:
        """A page token that another RPC returned, or None."""
        others = sorted(path for path, seen in self._tokens.items() if path != rpc_path and seen)
        if not others:
            return None
        return rng.choice(self._tokens[rng.choice(others)])


def lookup(context: dict[str, Any], name: str) -> Any:
    """The value `context` holds for a request field `name`, through aliases; None if none."""
    for key in (name, *ALIASES.get(name, ())):
        if key in context:
            return context[key]
    return None
