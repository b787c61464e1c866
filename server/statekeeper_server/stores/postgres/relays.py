"""Relays in PostgreSQL: definitions with their lease, and a cursor row per (relay, run).

Several replicas share the relays: each runs a relay only while it holds
the relay's lease, a row update that succeeds for one replica at a time
and lapses when that replica stops renewing it. Lease times come from the
database's clock, so replicas whose clocks differ still agree on who holds
a lease. Cursor updates are fenced by the lease in the same statement.
"""

from __future__ import annotations

import builtins

import asyncpg

from statekeeper_server.errors import FailedPrecondition
from statekeeper_server.stores.postgres.engine import PostgresEngine
from statekeeper_server.stores.relays import (
    LAG_SAMPLE_RUNS,
    MAX_RELAYS_PER_NAMESPACE,
    Lag,
    PendingRun,
    RelaySpec,
    StoredRelay,
    decode_kinds,
    encode_kinds,
    oldest_emitted,
    relay_exists,
)

MIGRATIONS = [
    [
        """CREATE TABLE relays (
            namespace TEXT COLLATE "C" NOT NULL,
            name TEXT COLLATE "C" NOT NULL,
            sink TEXT NOT NULL,
            run_id_prefix TEXT COLLATE "C" NOT NULL,
            event_kinds TEXT NOT NULL,
            create_us BIGINT NOT NULL,
            owner TEXT NOT NULL,
            lease_until_us BIGINT NOT NULL,
            last_error TEXT NOT NULL,
            PRIMARY KEY (namespace, name)
        )""",
        """CREATE TABLE relay_cursors (
            namespace TEXT COLLATE "C" NOT NULL,
            relay TEXT COLLATE "C" NOT NULL,
            run_id TEXT COLLATE "C" NOT NULL,
            run_create_us BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            PRIMARY KEY (namespace, relay, run_id)
        )""",
    ],
]

_NOW = "(extract(epoch from clock_timestamp()) * 1000000)::bigint"
_COLUMNS = (
    "namespace, name, sink, run_id_prefix, event_kinds, create_us,"
    f" CASE WHEN lease_until_us > {_NOW} THEN owner ELSE '' END AS owner,"
    " lease_until_us, last_error"
)
_PENDING = """
    SELECT r.run_id, r.create_us, GREATEST(COALESCE(c.seq, 0), r.first_seq - 1) AS after_seq,
        r.last_seq, r.update_us
    FROM event_runs r LEFT JOIN relay_cursors c
        ON c.namespace = r.namespace AND c.relay = $1 AND c.run_id = r.run_id
        AND c.run_create_us = r.create_us
    WHERE r.namespace = $2 AND left(r.run_id, $3) = $4
        AND r.last_seq > GREATEST(COALESCE(c.seq, 0), r.first_seq - 1)
"""


def _relay(row: asyncpg.Record) -> StoredRelay:
    return StoredRelay(
        namespace=row["namespace"],
        spec=RelaySpec(
            row["name"], row["sink"], row["run_id_prefix"], decode_kinds(row["event_kinds"])
        ),
        create_us=row["create_us"],
        owner=row["owner"],
        lease_until_us=row["lease_until_us"],
        last_error=row["last_error"],
    )


class PostgresRelayStore:
    """RelayStore on a PostgresEngine (see stores.relays and the module for guarantees)."""

    def __init__(self, engine: PostgresEngine) -> None:
        self._engine = engine

    async def create(self, namespace: str, spec: RelaySpec) -> tuple[StoredRelay, bool]:
        """Store a new relay, or return the one of the same definition."""
        async with self._engine.transaction() as tx:
            # One creation at a time per namespace, so the count below stays true.
            await tx.conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", namespace)
            row = await tx.conn.fetchrow(
                f"SELECT {_COLUMNS} FROM relays WHERE namespace = $1 AND name = $2",
                namespace,
                spec.name,
            )
            if row is not None:
                stored = _relay(row)
                if stored.spec != spec:
                    raise relay_exists(spec.name)
                return stored, False
            count = await tx.conn.fetchval(
                "SELECT count(*) FROM relays WHERE namespace = $1", namespace
            )
            if count >= MAX_RELAYS_PER_NAMESPACE:
                raise FailedPrecondition(
                    "TOO_MANY_RELAYS",
                    f"a namespace has at most {MAX_RELAYS_PER_NAMESPACE} relays",
                )
            created = await tx.conn.fetchrow(
                f"INSERT INTO relays (namespace, name, sink, run_id_prefix, event_kinds,"
                f" create_us, owner, lease_until_us, last_error)"
                f" VALUES ($1, $2, $3, $4, $5, {_NOW}, '', 0, '') RETURNING {_COLUMNS}",
                namespace,
                spec.name,
                spec.sink,
                spec.run_id_prefix,
                encode_kinds(spec.event_kinds),
            )
            assert created is not None
            return _relay(created), True

    async def get(self, namespace: str, name: str) -> StoredRelay | None:
        """The relay called `name`, or None."""
        row = await self._engine.fetchrow(
            f"SELECT {_COLUMNS} FROM relays WHERE namespace = $1 AND name = $2", namespace, name
        )
        return None if row is None else _relay(row)

    async def list(self, namespace: str, after_name: str, limit: int) -> builtins.list[StoredRelay]:
        """A page of the namespace's relays by name."""
        rows = await self._engine.fetch(
            f"SELECT {_COLUMNS} FROM relays WHERE namespace = $1 AND name > $2"
            " ORDER BY name LIMIT $3",
            namespace,
            after_name,
            limit,
        )
        return [_relay(row) for row in rows]

    async def list_all(self) -> builtins.list[StoredRelay]:
        """Every relay."""
        rows = await self._engine.fetch(f"SELECT {_COLUMNS} FROM relays ORDER BY namespace, name")
        return [_relay(row) for row in rows]

    async def delete(self, namespace: str, name: str) -> bool:
        """Delete the relay and its cursors."""
        async with self._engine.transaction() as tx:
            await tx.conn.execute(
                "DELETE FROM relay_cursors WHERE namespace = $1 AND relay = $2", namespace, name
            )
            status = await tx.conn.execute(
                "DELETE FROM relays WHERE namespace = $1 AND name = $2", namespace, name
            )
        return bool(status != "DELETE 0")

    async def claim(self, namespace: str, name: str, owner: str, lease_us: int) -> bool:
        """Take or renew the lease when it is free, expired or already `owner`'s."""
        status = await self._engine.execute(
            f"UPDATE relays SET owner = $3, lease_until_us = {_NOW} + $4"
            f" WHERE namespace = $1 AND name = $2 AND (owner = $3 OR lease_until_us <= {_NOW})",
            namespace,
            name,
            owner,
            lease_us,
        )
        return bool(status == "UPDATE 1")

    async def release(self, namespace: str, name: str, owner: str) -> None:
        """End `owner`'s lease."""
        await self._engine.execute(
            "UPDATE relays SET owner = '', lease_until_us = 0"
            " WHERE namespace = $1 AND name = $2 AND owner = $3",
            namespace,
            name,
            owner,
        )

    async def report(self, namespace: str, name: str, owner: str, error: str) -> None:
        """Record the last error of the lease holder."""
        await self._engine.execute(
            "UPDATE relays SET last_error = $4 WHERE namespace = $1 AND name = $2 AND owner = $3",
            namespace,
            name,
            owner,
            error,
        )

    async def backlog(
        self, namespace: str, name: str, run_id_prefix: str, limit: int
    ) -> builtins.list[PendingRun]:
        """Runs with events after the cursor, updated longest ago first."""
        rows = await self._engine.fetch(
            _PENDING + " ORDER BY r.update_us LIMIT $5",
            name,
            namespace,
            len(run_id_prefix),
            run_id_prefix,
            limit,
        )
        return [PendingRun(row[0], row[1], row[2], row[3]) for row in rows]

    async def advance(
        self, namespace: str, name: str, owner: str, run: PendingRun, seq: int
    ) -> bool:
        """Move the cursor forward, fenced by the lease."""
        status = await self._engine.execute(
            "INSERT INTO relay_cursors AS c (namespace, relay, run_id, run_create_us, seq)"
            " SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM relays WHERE namespace = $1"
            f" AND name = $2 AND owner = $6 AND lease_until_us > {_NOW})"
            " ON CONFLICT (namespace, relay, run_id) DO UPDATE SET"
            " seq = CASE WHEN c.run_create_us = excluded.run_create_us"
            " THEN GREATEST(c.seq, excluded.seq) ELSE excluded.seq END,"
            " run_create_us = excluded.run_create_us",
            namespace,
            name,
            run.run_id,
            run.create_us,
            seq,
            owner,
        )
        return bool(status == "INSERT 0 1")

    async def lag(self, namespace: str, name: str, run_id_prefix: str) -> Lag:
        """Events not forwarded, and the commit time of the oldest of them."""
        params = (name, namespace, len(run_id_prefix), run_id_prefix)
        async with self._engine.transaction(isolation="repeatable_read", readonly=True) as tx:
            events = await tx.conn.fetchval(
                f"SELECT COALESCE(SUM(last_seq - after_seq), 0) FROM ({_PENDING}) p", *params
            )
            rows = await tx.conn.fetch(
                f"SELECT e.envelope FROM ({_PENDING} ORDER BY r.update_us LIMIT $5) p"
                " JOIN events e ON e.namespace = $2 AND e.run_id = p.run_id"
                " AND e.seq = p.after_seq + 1",
                *params,
                LAG_SAMPLE_RUNS,
            )
        return Lag(int(events), oldest_emitted([row[0] for row in rows]))
