"""The embedded store: one SQLite file (or an in-memory database)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from statekeeper_server.notifier import Notifier
from statekeeper_server.stores import Store
from statekeeper_server.stores.sqlite import (
    checkpoints,
    events,
    jobs,
    relays,
    snapshots,
    thread_checkpoints,
)
from statekeeper_server.stores.sqlite.engine import HEALTH_MIGRATIONS, SQLiteEngine

MIGRATIONS = {
    "snapshots": snapshots.MIGRATIONS,
    "checkpoints": checkpoints.MIGRATIONS,
    "events": events.MIGRATIONS,
    "jobs": jobs.MIGRATIONS,
    "relays": relays.MIGRATIONS,
    "thread_checkpoints": thread_checkpoints.MIGRATIONS,
    "health": HEALTH_MIGRATIONS,
}


async def open_sqlite_store(path: Path | None) -> Store:
    """A Store on the SQLite file at `path`, or in memory when None."""
    engine = SQLiteEngine(path, MIGRATIONS)
    await engine.open()
    await engine.write(relays.forget_leases)
    notifier = Notifier()

    async def ping() -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT 1").fetchone()

        await engine.read(work)

    return Store(
        snapshots=snapshots.SQLiteSnapshotStore(engine),
        checkpoints=checkpoints.SQLiteCheckpointStore(engine),
        events=events.SQLiteEventStore(engine, notifier),
        jobs=jobs.SQLiteJobStore(engine, notifier),
        relays=relays.SQLiteRelayStore(engine),
        threads=thread_checkpoints.SQLiteThreadCheckpointStore(engine),
        notifier=notifier,
        close=engine.close,
        ping=ping,
        check_writes=engine.check_writes,
    )
