"""Storage backends behind one URL: `memory:`, `file:PATH`, `postgresql://...`.

`open_store(url)` returns a `Store`: one object per family of state, all
sharing one backend, plus the backend's lifecycle and health checks.

A failure of a backend reaches callers as `Unavailable` with a reason code
and a plain message that says what happened (no SQL, driver text, file path
or class name); the details go to the server log through `FailureLog`,
which keeps a store that is down from flooding it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from statekeeper_server.config import Settings
from statekeeper_server.notifier import Notifier
from statekeeper_server.observability import store_metrics
from statekeeper_server.stores.checkpoints import CheckpointStore
from statekeeper_server.stores.events import EventStore
from statekeeper_server.stores.jobs import JobStore
from statekeeper_server.stores.relays import RelayStore
from statekeeper_server.stores.snapshots import SnapshotStore
from statekeeper_server.stores.thread_checkpoints import ThreadCheckpointStore


@dataclass
class Store:
    """Every family of state on one backend.

    `notifier` wakes waiters after commits (and, on PostgreSQL, after commits
    made by other replicas). `close` releases the backend. `ping` raises
    unless the backend answers a read; `check_writes` raises unless it
    commits a write (one tiny row, through the same path as every write), so
    a store that answers but cannot write (a full disk, a read-only file or
    database) is found out too. Both raise Unavailable for a failure of the
    backend.
    """

    snapshots: SnapshotStore
    checkpoints: CheckpointStore
    events: EventStore
    jobs: JobStore
    relays: RelayStore
    notifier: Notifier
    threads: ThreadCheckpointStore
    """Thread checkpoints (ThreadCheckpointService)."""
    close: Callable[[], Awaitable[None]]
    ping: Callable[[], Awaitable[None]]
    check_writes: Callable[[], Awaitable[None]]


class StoreURLError(ValueError):
    """The store URL names no known backend, or has an invalid option."""


class FailureLog:
    """Logs store failures with their details, without flooding the log.

    Failures are grouped by `kind` (the plain message the caller gets). The
    first failure of a kind is logged at once; later ones of that kind only
    once every `every` seconds, saying how many were held back meanwhile. So
    a store that is down costs a few lines a minute, however many calls fail.
    Safe to use from any thread.
    """

    def __init__(self, logger: logging.Logger, every: float = 30.0) -> None:
        self._logger = logger
        self._every = every
        self._lock = threading.Lock()
        self._next_line: dict[str, float] = {}
        self._held_back: dict[str, int] = {}

    def report(self, kind: str, detail: str) -> None:
        """Log one failure of `kind`, with the `detail` only the server log may see."""
        now = time.monotonic()
        with self._lock:
            if now < self._next_line.get(kind, 0.0):
                self._held_back[kind] = self._held_back.get(kind, 0) + 1
                return
            self._next_line[kind] = now + self._every
            held_back = self._held_back.pop(kind, 0)
        if held_back:
            self._logger.warning(
                "%s: %s (and %d more like it since the last line)", kind, detail, held_back
            )
        else:
            self._logger.warning("%s: %s", kind, detail)


async def open_store(url: str, settings: Settings | None = None) -> Store:
    """Open (and migrate) the store named by `url`, its jobs counted in the metrics
    until it closes.

    `settings` tunes backends that have options (the PostgreSQL pool, timeouts
    and schema) and the metrics (`metrics_namespace_label`); None means their
    defaults.
    """
    if settings is not None:
        store_metrics.use_namespace_label(settings.metrics_namespace_label)
    store = await _open_backend(url, settings)
    counted = store_metrics.watch_jobs(store.jobs.metrics_counts)
    close = store.close

    async def close_counted() -> None:
        store_metrics.unwatch_jobs(counted)
        await close()

    store.close = close_counted
    return store


async def _open_backend(url: str, settings: Settings | None) -> Store:
    """The backend named by `url`, opened and migrated."""
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
    # A password can only follow a colon: name the URL up to its first one.
    scheme = url.split(":", 1)[0]
    raise StoreURLError(
        f"unknown store URL scheme {scheme!r}: use memory:, file:PATH or postgresql://user@host/db"
    )
