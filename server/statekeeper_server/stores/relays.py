"""The relay store interface: relays (a namespace's events forwarded to a sink), their
cursors and the lease that lets one replica run each.

A relay's cursor is one row per run: the last seq of the run the broker
acknowledged. It names the run's creation time too, so a run deleted and
started again under the same id is forwarded from its first event. The
cursor only moves forward, and only for the holder of the relay's lease
(`advance` is fenced by it), so a replica that lost its lease can no
longer move it.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from statekeeper.v1 import events_pb2
from statekeeper_server.errors import AlreadyExists, NotFound
from statekeeper_server.stores.events import EVENT_KINDS

MAX_RELAYS_PER_NAMESPACE = 100
LAG_SAMPLE_RUNS = 1000
"""Most runs with events not yet forwarded whose oldest one is looked at for the lag in
seconds: beyond them the lag is a lower bound."""
RELAY_KINDS = EVENT_KINDS


@dataclass(frozen=True)
class RelaySpec:
    """What a relay forwards, and where."""

    name: str
    sink: str
    run_id_prefix: str
    event_kinds: tuple[str, ...]
    """Kinds forwarded (run_started, ..., custom); empty: every kind."""

    def forwards(self, kind: str) -> bool:
        """Whether an event of `kind` is forwarded (others are passed over)."""
        return not self.event_kinds or kind in self.event_kinds


@dataclass(frozen=True)
class StoredRelay:
    """A relay as stored: its definition and what its runner last reported."""

    namespace: str
    spec: RelaySpec
    create_us: int
    owner: str
    """The replica holding its lease ("" when none holds it)."""
    lease_until_us: int
    last_error: str


class PendingRun(NamedTuple):
    """A run with events a relay has not forwarded: those after `after_seq`, to `last_seq`."""

    run_id: str
    create_us: int
    after_seq: int
    last_seq: int


@dataclass(frozen=True)
class Lag:
    """How far a relay is behind: events committed but not acknowledged by its sink, and
    when the oldest of them was committed (None when there is none)."""

    events: int
    oldest_us: int | None


def encode_kinds(kinds: Sequence[str]) -> str:
    """The kinds as stored (a comma-separated list)."""
    return ",".join(kinds)


def decode_kinds(text: str) -> tuple[str, ...]:
    """The kinds of `encode_kinds`."""
    return tuple(kind for kind in text.split(",") if kind)


def relay_exists(name: str) -> AlreadyExists:
    """The error for a second relay of a name with another definition."""
    return AlreadyExists("RELAY_EXISTS", f"relay {name} exists with another definition", relay=name)


def relay_not_found(name: str) -> NotFound:
    """The error for a relay that does not exist."""
    return NotFound("RELAY_NOT_FOUND", f"no relay {name}", relay=name)


def oldest_emitted(envelopes: Sequence[bytes]) -> int | None:
    """The earliest `emitted_at` (microseconds) of serialized envelopes; None for none."""
    times = [
        events_pb2.EventEnvelope.FromString(envelope).emitted_at.ToMicroseconds()
        for envelope in envelopes
    ]
    return min(times) if times else None


class RelayStore(Protocol):
    """Keeps relays, their per-run cursors and their leases."""

    async def create(self, namespace: str, spec: RelaySpec) -> tuple[StoredRelay, bool]:
        """Store a new relay; (the relay, whether it was created). The same definition
        again returns the stored relay; another one raises AlreadyExists
        (RELAY_EXISTS); more than MAX_RELAYS_PER_NAMESPACE raises
        FailedPrecondition."""

    async def get(self, namespace: str, name: str) -> StoredRelay | None:
        """The relay called `name`, or None."""

    async def list(self, namespace: str, after_name: str, limit: int) -> builtins.list[StoredRelay]:
        """At most `limit` relays of the namespace named after `after_name`, by name."""

    async def list_all(self) -> builtins.list[StoredRelay]:
        """Every relay of every namespace (for the runners)."""

    async def delete(self, namespace: str, name: str) -> bool:
        """Delete the relay and its cursors; whether it existed."""

    async def claim(self, namespace: str, name: str, owner: str, lease_us: int) -> bool:
        """Take or renew the relay's lease for `owner` for `lease_us` microseconds;
        whether `owner` holds it now (False while another owner's lease runs)."""

    async def release(self, namespace: str, name: str, owner: str) -> None:
        """Give up the lease, if `owner` holds it, so another replica may take it at once."""

    async def report(self, namespace: str, name: str, owner: str, error: str) -> None:
        """Record the runner's last error ("" once it forwards again), if `owner` holds
        the lease."""

    async def backlog(
        self, namespace: str, name: str, run_id_prefix: str, limit: int
    ) -> builtins.list[PendingRun]:
        """At most `limit` runs with events after the relay's cursor, those updated
        longest ago first; `after_seq` is never before the run's first kept seq."""

    async def advance(
        self, namespace: str, name: str, owner: str, run: PendingRun, seq: int
    ) -> bool:
        """Move the run's cursor forward to `seq` (never back); False (and nothing moves)
        unless `owner` holds the relay's lease."""

    async def lag(self, namespace: str, name: str, run_id_prefix: str) -> Lag:
        """How far the relay is behind (see Lag; seconds from LAG_SAMPLE_RUNS runs)."""
