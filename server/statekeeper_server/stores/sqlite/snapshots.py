"""Snapshots in SQLite: one row per (namespace, run) holding the encoded proto."""

from __future__ import annotations

import sqlite3

from statekeeper.v1 import snapshots_pb2
from statekeeper_server.stores.paging import decode_page_token
from statekeeper_server.stores.snapshots import (
    SnapshotFilter,
    SnapshotPage,
    check_expected_version,
    list_filters,
    readable_snapshot,
    snapshot_not_found,
    snapshot_page,
    stamp_snapshot,
    stored_size,
)
from statekeeper_server.stores.sqlite.engine import SQLiteEngine
from statekeeper_server.stores.sqlite.pages import read_page

MIGRATIONS = [
    [
        """CREATE TABLE snapshots (
            namespace TEXT NOT NULL,
            run_id TEXT NOT NULL,
            session_id TEXT NOT NULL,
            status INTEGER NOT NULL,
            version INTEGER NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (namespace, run_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX snapshots_by_session ON snapshots (namespace, session_id, run_id)",
    ],
]


class SQLiteSnapshotStore:
    """SnapshotStore on a SQLiteEngine (see stores.snapshots for guarantees)."""

    def __init__(self, engine: SQLiteEngine) -> None:
        self._engine = engine

    async def save(
        self, namespace: str, snapshot: snapshots_pb2.Snapshot, expected_version: int | None
    ) -> bytes:
        """Compare-and-set the run's snapshot to `snapshot` with the next version."""

        def work(conn: sqlite3.Connection) -> bytes:
            row = conn.execute(
                "SELECT version FROM snapshots WHERE namespace = ? AND run_id = ?",
                (namespace, snapshot.run_id),
            ).fetchone()
            current = row[0] if row else 0
            check_expected_version(snapshot.run_id, current, expected_version)
            data = stamp_snapshot(snapshot, current + 1)
            conn.execute(
                "INSERT INTO snapshots (namespace, run_id, session_id, status, version, data)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (namespace, run_id) DO UPDATE SET session_id = excluded.session_id,"
                " status = excluded.status, version = excluded.version, data = excluded.data",
                (
                    namespace,
                    snapshot.run_id,
                    snapshot.session_id,
                    snapshot.status,
                    snapshot.version,
                    data,
                ),
            )
            return data

        return await self._engine.write(work)

    async def load(self, namespace: str, run_id: str) -> bytes:
        """The encoding of the run's latest snapshot."""

        def work(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT data FROM snapshots WHERE namespace = ? AND run_id = ?",
                (namespace, run_id),
            ).fetchone()
            return readable_snapshot(run_id, row[0]) if row else None

        data = await self._engine.read(work)
        if data is None:
            raise snapshot_not_found(run_id)
        return data

    async def list(
        self, namespace: str, where: SnapshotFilter, page_size: int, page_token: str
    ) -> SnapshotPage:
        """A page of snapshots after the token's run_id, filtered; rows are read only
        until the page is full."""
        filters = list_filters(where)
        after = decode_page_token(page_token, filters, str) or ""
        sql = "SELECT run_id, data FROM snapshots WHERE namespace = ? AND run_id > ?"
        params: list[object] = [namespace, after]
        if where.session_id:
            sql += " AND session_id = ?"
            params.append(where.session_id)
        if where.status:
            sql += " AND status = ?"
            params.append(where.status)
        sql += " ORDER BY run_id LIMIT ?"
        params.append(page_size + 1)

        def work(conn: sqlite3.Connection) -> SnapshotPage:
            rows, more = read_page(conn, sql, params, stored_size, max_count=page_size)
            return snapshot_page(rows, more, filters)

        return await self._engine.read(work)

    async def delete(self, namespace: str, run_id: str) -> bool:
        """Delete the run's snapshot if present."""

        def work(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM snapshots WHERE namespace = ? AND run_id = ?", (namespace, run_id)
            )
            return cursor.rowcount > 0

        return await self._engine.write(work)
