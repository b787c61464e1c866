"""Snapshots in PostgreSQL: one row per (namespace, run) holding the encoded proto.

A save locks the run's row (`SELECT ... FOR UPDATE`) before comparing its
version, so concurrent saves through any number of replicas are applied one
after the other. Two first saves of a run race on the primary key instead:
the loser's `INSERT ... ON CONFLICT DO NOTHING` inserts nothing, and it
compares again against the row the winner committed.
"""

from __future__ import annotations

import asyncio

import asyncpg

from statekeeper.v1 import snapshots_pb2
from statekeeper_server.limits import PAGE_BUDGET_BYTES
from statekeeper_server.stores.paging import decode_page_token
from statekeeper_server.stores.postgres.engine import PostgresEngine, Transaction
from statekeeper_server.stores.postgres.migrations import fast_compression
from statekeeper_server.stores.postgres.pages import (
    Params,
    framed_octets,
    page_rows,
    within_bytes,
)
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
    [
        # Large records are compressed with lz4, which costs the database far less CPU.
        fast_compression("snapshots", "data"),
    ],
]


class PostgresSnapshotStore:
    """SnapshotStore on a PostgresEngine (see stores.snapshots for guarantees)."""

    def __init__(self, engine: PostgresEngine) -> None:
        self._engine = engine

    async def save(
        self, namespace: str, snapshot: snapshots_pb2.Snapshot, expected_version: int | None
    ) -> bytes:
        """Compare-and-set the run's snapshot to `snapshot` with the next version."""
        async with self._engine.transaction() as tx:
            while True:
                current = await tx.conn.fetchval(
                    "SELECT version FROM snapshots WHERE namespace = $1 AND run_id = $2 FOR UPDATE",
                    namespace,
                    snapshot.run_id,
                )
                check_expected_version(snapshot.run_id, current or 0, expected_version)
                # Encoding up to 2 MiB: on a thread, as the file store's writer does it.
                data = await asyncio.to_thread(stamp_snapshot, snapshot, (current or 0) + 1)
                if await _write(tx, namespace, snapshot, data, exists=current is not None):
                    return data

    async def load(self, namespace: str, run_id: str) -> bytes:
        """The encoding of the run's latest snapshot."""
        data = await self._engine.fetchval(
            "SELECT data FROM snapshots WHERE namespace = $1 AND run_id = $2", namespace, run_id
        )
        if data is None:
            raise snapshot_not_found(run_id)
        return readable_snapshot(run_id, data)

    async def list(
        self, namespace: str, where: SnapshotFilter, page_size: int, page_token: str
    ) -> SnapshotPage:
        """A page of snapshots after the token's run_id, filtered; the database
        returns only the rows of the page."""
        filters = list_filters(where)
        after = decode_page_token(page_token, filters, str) or ""
        params = Params(namespace, after)
        sql = "SELECT run_id, data FROM snapshots WHERE namespace = $1 AND run_id > $2"
        if where.session_id:
            sql += f" AND session_id = {params.add(where.session_id)}"
        if where.status:
            sql += f" AND status = {params.add(where.status)}"
        sql += f" ORDER BY run_id LIMIT {params.add(page_size + 1)}"
        records = await self._engine.fetch(
            within_bytes(
                sql,
                columns="run_id, data",
                size=framed_octets("octet_length(data)"),
                order="run_id",
                max_count=params.add(page_size),
                max_bytes=params.add(PAGE_BUDGET_BYTES),
            ),
            *params.values,
        )
        rows, more = page_rows(records, _run_and_data, stored_size, page_size)
        return snapshot_page(rows, more, filters)

    async def delete(self, namespace: str, run_id: str) -> bool:
        """Delete the run's snapshot if present."""
        deleted = await self._engine.fetchval(
            "DELETE FROM snapshots WHERE namespace = $1 AND run_id = $2 RETURNING true",
            namespace,
            run_id,
        )
        return deleted is not None


def _run_and_data(record: asyncpg.Record) -> tuple[str, bytes]:
    return record["run_id"], record["data"]


async def _write(
    tx: Transaction, namespace: str, stored: snapshots_pb2.Snapshot, data: bytes, *, exists: bool
) -> bool:
    """Write `stored` (encoded as `data`) over the locked row, or insert it; False if a
    concurrent first save inserted the row first (the caller compares again)."""
    values = (
        namespace,
        stored.run_id,
        stored.session_id,
        stored.status,
        stored.version,
        data,
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
