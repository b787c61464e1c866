"""Storage backends behind one URL: `memory:`, `file:PATH`, `postgresql://...`.

`open_store(url)` returns a `Store`: one object per family of state, all
sharing one backend, plus the backend's lifecycle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from statekeeper_server.config import Settings
from statekeeper_server.notifier import Notifier
from statekeeper_server.stores.checkpoints import CheckpointStore
from statekeeper_server.stores.events import EventStore
from statekeeper_server.stores.jobs import JobStore
from statekeeper_server.stores.snapshots import SnapshotStore


@dataclass
class Store:
    """Every family of state on one backend.

    `notifier` wakes waiters after commits (and, on PostgreSQL, after commits
    made by other replicas). `close` releases the backend; `ping` raises if
    the backend cannot serve.
    """

    snapshots: SnapshotStore
    checkpoints: CheckpointStore
    events: EventStore
    jobs: JobStore
    notifier: Notifier
    close: Callable[[], Awaitable[None]]
    ping: Callable[[], Awaitable[None]]


class StoreURLError(ValueError):
    """The store URL names no known backend."""


async def open_store(url: str, settings: Settings | None = None) -> Store:
    """Open (and migrate) the store named by `url`.

    `settings` tunes backends that have options (the PostgreSQL pool, timeouts
    and schema); None means their defaults.
    """
    if url == "memory:" or url.startswith("memory:"):
        from statekeeper_server.stores.sqlite import open_sqlite_store

        return await open_sqlite_store(None)
    if url.startswith("file:"):
        from statekeeper_server.stores.sqlite import open_sqlite_store

        path = url.removeprefix("file:")
        if not path:
            raise StoreURLError("file: needs a path, such as file:./data/statekeeper.db")
        return await open_sqlite_store(Path(path))
    if url.startswith(("postgresql://", "postgres://")):
        from statekeeper_server.stores.postgres import open_postgres_store

        return await open_postgres_store(url, settings)
    raise StoreURLError(
        f"unknown store URL {url!r}: use memory:, file:PATH or postgresql://user@host/db"
    )
