"""Snapshots in PostgreSQL: one row per (namespace, run) holding the encoded proto.

A save locks the run's row (`SELECT ... FOR UPDATE`) before comparing its
version, so concurrent saves through any number of replicas are applied one
after the other. Two first saves of a run race on the primary key instead:
the loser's `INSERT ... ON CONFLICT DO NOTHING` inserts nothing, and it
compares again against the row the winner committed.
"""

from __future__ import annotations

from statekeeper.v1 import snapshots_pb2
from statekeeper_server.stores.paging import decode_page_token, encode_page_token
from statekeeper_server.stores.postgres.engine import PostgresEngine, Transaction
from statekeeper_server.stores.snapshots import (
    SnapshotFilter,
    SnapshotPage,
    check_expected_version,
    decode_snapshot,
    list_filters,
    next_version,
    snapshot_not_found,
)

MIGRATIONS = [
    [
        """CREATE TABLE snapshots (
            namespace TEXT COLLATE "C" NOT NULL,
            run_id TEXT COLLATE "C" NOT NULL,
            session_id TEXT COLLATE "C" NOT NULL,
            status INTEGER NOT NULL,
            version BIGINT NOT NULL,
            data BYTEA NOT NULL,
            PRIMARY KEY (namespace, run_id)
        )""",
        "CREATE INDEX snapshots_by_session ON snapshots (namespace, session_id, run_id)",
    ],
]


class PostgresSnapshotStore:
    """SnapshotStore on a PostgresEngine (see stores.snapshots for guarantees)."""

    def __init__(self, engine: PostgresEngine) -> None:
        self._engine = engine

    async def save(
        self, namespace: str, snapshot: snapshots_pb2.Snapshot, expected_version: int | None
    ) -> snapshots_pb2.Snapshot:
        """Compare-and-set the run's snapshot to `snapshot` with the next version."""
        async with self._engine.transaction() as tx:
            while True:
                current = await tx.conn.fetchval(
                    "SELECT version FROM snapshots WHERE namespace = $1 AND run_id = $2 FOR UPDATE",
                    namespace,
                    snapshot.run_id,
                )
                check_expected_version(snapshot.run_id, current or 0, expected_version)
                stored = next_version(snapshot, (current or 0) + 1)
                if await _write(tx, namespace, stored, exists=current is not None):
                    return stored

    async def load(self, namespace: str, run_id: str) -> snapshots_pb2.Snapshot:
        """The run's latest snapshot."""
        data = await self._engine.fetchval(
            "SELECT data FROM snapshots WHERE namespace = $1 AND run_id = $2", namespace, run_id
        )
        if data is None:
            raise snapshot_not_found(run_id)
        return decode_snapshot(run_id, data)

    async def list(
        self, namespace: str, where: SnapshotFilter, page_size: int, page_token: str
    ) -> SnapshotPage:
        """A page of snapshots after the token's run_id, filtered."""
        filters = list_filters(where)
        after = decode_page_token(page_token, filters) or ""
        sql = "SELECT run_id, data FROM snapshots WHERE namespace = $1 AND run_id > $2"
        params: list[object] = [namespace, str(after)]
        if where.session_id:
            params.append(where.session_id)
            sql += f" AND session_id = ${len(params)}"
        if where.status:
            params.append(where.status)
            sql += f" AND status = ${len(params)}"
        params.append(page_size + 1)
        sql += f" ORDER BY run_id LIMIT ${len(params)}"
        rows = await self._engine.fetch(sql, *params)
        snapshots = [decode_snapshot(row["run_id"], row["data"]) for row in rows[:page_size]]
        token = ""
        if len(rows) > page_size:
            token = encode_page_token(snapshots[-1].run_id, filters)
        return SnapshotPage(snapshots, token)

    async def delete(self, namespace: str, run_id: str) -> bool:
        """Delete the run's snapshot if present."""
        deleted = await self._engine.fetchval(
            "DELETE FROM snapshots WHERE namespace = $1 AND run_id = $2 RETURNING true",
            namespace,
            run_id,
        )
        return deleted is not None


async def _write(
    tx: Transaction, namespace: str, stored: snapshots_pb2.Snapshot, *, exists: bool
) -> bool:
    """Write `stored` over the locked row, or insert it; False if a concurrent
    first save inserted the row first (the caller compares again)."""
    values = (
        namespace,
        stored.run_id,
        stored.session_id,
        stored.status,
        stored.version,
        stored.SerializeToString(),
    )
    if exists:
        await tx.conn.execute(
            "UPDATE snapshots SET session_id = $3, status = $4, version = $5, data = $6"
            " WHERE namespace = $1 AND run_id = $2",
            *values,
        )
        return True
    inserted = await tx.conn.fetchval(
        "INSERT INTO snapshots (namespace, run_id, session_id, status, version, data)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (namespace, run_id) DO NOTHING"
        " RETURNING true",
        *values,
    )
    return inserted is not None
