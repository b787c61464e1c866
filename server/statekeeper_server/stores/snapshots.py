"""The snapshot store interface: the latest snapshot of each run, versioned.

A snapshot is stored as its encoding and handed back as those bytes: a save
stamps the caller's message in place and encodes it once, and loads and
listings return the stored bytes (checked readable) for the servicer to
answer with, never a message rebuilt from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import DecodeError

from statekeeper.v1 import snapshots_pb2
from statekeeper_server.errors import Aborted, DataLoss, NotFound
from statekeeper_server.observability import store_metrics
from statekeeper_server.piecewise import merge_in_pieces
from statekeeper_server.stores.paging import encode_page_token
from statekeeper_server.timestamps import now_us, to_timestamp


@dataclass(frozen=True)
class SnapshotFilter:
    """Which snapshots a listing returns; empty fields match everything."""

    session_id: str = ""
    status: int = 0


@dataclass(frozen=True)
class SnapshotPage:
    """One page of a listing and the token of the next (empty at the end)."""

    snapshots: list[bytes]
    """The encoding of each snapshot, as stored."""
    next_page_token: str


class SnapshotStore(Protocol):
    """Keeps one versioned snapshot per (namespace, run).

    Every backend guarantees: `save` assigns version = previous + 1 (1 for a
    new run) and an update time, atomically with its compare-and-set; an
    acknowledged save is durable; a stored snapshot that cannot be decoded is
    reported as DataLoss, never skipped.
    """

    async def save(
        self, namespace: str, snapshot: snapshots_pb2.Snapshot, expected_version: int | None
    ) -> bytes:
        """Store `snapshot` as the run's latest, stamped in place (`stamp_snapshot`);
        its encoding as stored. Aborted on a version mismatch."""

    async def load(self, namespace: str, run_id: str) -> bytes:
        """The encoding of the run's latest snapshot, as stored (`readable_snapshot`);
        NotFound if there is none."""

    async def list(
        self, namespace: str, where: SnapshotFilter, page_size: int, page_token: str
    ) -> SnapshotPage:
        """A page of snapshots in run_id order, at most `page_size` and
        PAGE_BUDGET_BYTES of them (at least one when any is left)."""

    async def delete(self, namespace: str, run_id: str) -> bool:
        """Delete the run's snapshot; whether one existed."""


def snapshot_not_found(run_id: str) -> NotFound:
    """The error of every backend for a run without a snapshot."""
    return NotFound("SNAPSHOT_NOT_FOUND", f"run {run_id} has no snapshot", run_id=run_id)


def check_expected_version(run_id: str, current: int, expected: int | None) -> None:
    """Raise Aborted (VERSION_MISMATCH) unless `expected` is None or `current`."""
    if expected is not None and expected != current:
        raise Aborted(
            "VERSION_MISMATCH",
            f"run {run_id} is at version {current}, not {expected}",
            run_id=run_id,
            current_version=current,
            expected_version=expected,
        )


def readable_snapshot(run_id: str, data: bytes) -> bytes:
    """`data`, the stored snapshot of `run_id`, once it parsed; DataLoss
    (CORRUPT_SNAPSHOT) if it is unreadable.

    The parse only checks: a reply carries `data` itself, so no client ever
    receives a record that does not decode. It parses in pieces, so that on a
    store's thread the event loop gets turns in between.
    """
    try:
        merge_in_pieces(snapshots_pb2.Snapshot(), data)
    except DecodeError as exc:
        store_metrics.store_error("corrupt")
        raise DataLoss(
            "CORRUPT_SNAPSHOT", f"the stored snapshot of run {run_id} is corrupt", run_id=run_id
        ) from exc
    return data


def list_filters(where: SnapshotFilter) -> dict[str, object]:
    """The filters a page token is bound to."""
    return {"list": "snapshots", "session_id": where.session_id, "status": where.status}


def stored_size(row: tuple[str, bytes]) -> int:
    """The encoded size of a stored (run_id, data) row's snapshot as a listing returns it."""
    return len(row[1])


def snapshot_page(
    rows: Sequence[tuple[str, bytes]], more: bool, filters: dict[str, object]
) -> SnapshotPage:
    """The listing page of stored (run_id, data) `rows`; `more`: snapshots follow them."""
    snapshots = [readable_snapshot(run_id, data) for run_id, data in rows]
    token = encode_page_token(rows[-1][0], filters) if more and rows else ""
    return SnapshotPage(snapshots, token)


def stamp_snapshot(snapshot: snapshots_pb2.Snapshot, version: int) -> bytes:
    """Stamp `snapshot` in place with `version` and the current update time; its
    encoding, to store.

    The caller's message itself is stamped, never copied (a copy of a large
    snapshot costs as much as parsing it). The server's fields are replaced
    whole, so nothing a caller put in them survives.
    """
    snapshot.version = version
    snapshot.update_time.CopyFrom(to_timestamp(now_us()))
    return snapshot.SerializeToString()
