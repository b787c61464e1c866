"""Relays in SQLite: definitions with their lease, and a cursor row per (relay, run).

The file store is served by one process at a time, so the leases found when
it opens belong to a process that is gone: `forget_leases` drops them, and
a server restarted after a crash resumes its relays at once. Leases are
kept all the same while it runs, so a relay behaves the same on every
backend.
"""

from __future__ import annotations

import builtins
import sqlite3

from statekeeper_server.errors import FailedPrecondition
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
from statekeeper_server.stores.sqlite.engine import SQLiteEngine
from statekeeper_server.timestamps import now_us

MIGRATIONS = [
    [
        """CREATE TABLE relays (
            namespace TEXT NOT NULL,
            name TEXT NOT NULL,
            sink TEXT NOT NULL,
            run_id_prefix TEXT NOT NULL,
            event_kinds TEXT NOT NULL,
            create_us INTEGER NOT NULL,
            owner TEXT NOT NULL,
            lease_until_us INTEGER NOT NULL,
            last_error TEXT NOT NULL,
            PRIMARY KEY (namespace, name)
        ) WITHOUT ROWID""",
        """CREATE TABLE relay_cursors (
            namespace TEXT NOT NULL,
            relay TEXT NOT NULL,
            run_id TEXT NOT NULL,
            run_create_us INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (namespace, relay, run_id)
        ) WITHOUT ROWID""",
    ],
]

_COLUMNS = (
    "namespace, name, sink, run_id_prefix, event_kinds, create_us, owner, lease_until_us,"
    " last_error"
)
_PENDING = """
    SELECT r.run_id, r.create_us, MAX(COALESCE(c.seq, 0), r.first_seq - 1) AS after_seq,
        r.last_seq, r.update_us
    FROM event_runs r LEFT JOIN relay_cursors c
        ON c.namespace = r.namespace AND c.relay = ? AND c.run_id = r.run_id
        AND c.run_create_us = r.create_us
    WHERE r.namespace = ? AND substr(r.run_id, 1, ?) = ?
        AND r.last_seq > MAX(COALESCE(c.seq, 0), r.first_seq - 1)
"""


def forget_leases(conn: sqlite3.Connection) -> None:
    """End every lease (see the module): run when the store opens."""
    conn.execute("UPDATE relays SET owner = '', lease_until_us = 0 WHERE owner != ''")


def _relay(row: tuple[str, str, str, str, str, int, str, int, str]) -> StoredRelay:
    namespace, name, sink, prefix, kinds, create_us, owner, lease_until_us, error = row
    return StoredRelay(
        namespace=namespace,
        spec=RelaySpec(name, sink, prefix, decode_kinds(kinds)),
        create_us=create_us,
        owner=owner if lease_until_us > now_us() else "",
        lease_until_us=lease_until_us,
        last_error=error,
    )


class SQLiteRelayStore:
    """RelayStore on a SQLiteEngine (see stores.relays for guarantees)."""

    def __init__(self, engine: SQLiteEngine) -> None:
        self._engine = engine

    async def create(self, namespace: str, spec: RelaySpec) -> tuple[StoredRelay, bool]:
        """Store a new relay, or return the one of the same definition."""

        def work(conn: sqlite3.Connection) -> tuple[StoredRelay, bool]:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM relays WHERE namespace = ? AND name = ?",
                (namespace, spec.name),
            ).fetchone()
            if row is not None:
                stored = _relay(row)
                if stored.spec != spec:
                    raise relay_exists(spec.name)
                return stored, False
            (count,) = conn.execute(
                "SELECT count(*) FROM relays WHERE namespace = ?", (namespace,)
            ).fetchone()
            if count >= MAX_RELAYS_PER_NAMESPACE:
                raise FailedPrecondition(
                    "TOO_MANY_RELAYS",
                    f"a namespace has at most {MAX_RELAYS_PER_NAMESPACE} relays",
                )
            created = (
                namespace,
                spec.name,
                spec.sink,
                spec.run_id_prefix,
                encode_kinds(spec.event_kinds),
                now_us(),
                "",
                0,
                "",
            )
            conn.execute(f"INSERT INTO relays ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", created)
            return _relay(created), True

        return await self._engine.write(work)

    async def get(self, namespace: str, name: str) -> StoredRelay | None:
        """The relay called `name`, or None."""

        def work(conn: sqlite3.Connection) -> StoredRelay | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM relays WHERE namespace = ? AND name = ?",
                (namespace, name),
            ).fetchone()
            return None if row is None else _relay(row)

        return await self._engine.read(work)

    async def list(self, namespace: str, after_name: str, limit: int) -> builtins.list[StoredRelay]:
        """A page of the namespace's relays by name."""

        def work(conn: sqlite3.Connection) -> builtins.list[StoredRelay]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM relays WHERE namespace = ? AND name > ?"
                " ORDER BY name LIMIT ?",
                (namespace, after_name, limit),
            ).fetchall()
            return [_relay(row) for row in rows]

        return await self._engine.read(work)

    async def list_all(self) -> builtins.list[StoredRelay]:
        """Every relay."""

        def work(conn: sqlite3.Connection) -> builtins.list[StoredRelay]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM relays ORDER BY namespace, name"
            ).fetchall()
            return [_relay(row) for row in rows]

        return await self._engine.read(work)

    async def delete(self, namespace: str, name: str) -> bool:
        """Delete the relay and its cursors."""

        def work(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "DELETE FROM relay_cursors WHERE namespace = ? AND relay = ?", (namespace, name)
            )
            cursor = conn.execute(
                "DELETE FROM relays WHERE namespace = ? AND name = ?", (namespace, name)
            )
            return cursor.rowcount > 0

        return await self._engine.write(work)

    async def claim(self, namespace: str, name: str, owner: str, lease_us: int) -> bool:
        """Take or renew the lease when it is free, expired or already `owner`'s."""

        def work(conn: sqlite3.Connection) -> bool:
            now = now_us()
            cursor = conn.execute(
                "UPDATE relays SET owner = ?, lease_until_us = ?"
                " WHERE namespace = ? AND name = ? AND (owner = ? OR lease_until_us <= ?)",
                (owner, now + lease_us, namespace, name, owner, now),
            )
            return cursor.rowcount > 0

        return await self._engine.write(work)

    async def release(self, namespace: str, name: str, owner: str) -> None:
        """End `owner`'s lease."""

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE relays SET owner = '', lease_until_us = 0"
                " WHERE namespace = ? AND name = ? AND owner = ?",
                (namespace, name, owner),
            )

        await self._engine.write(work)

    async def report(self, namespace: str, name: str, owner: str, error: str) -> None:
        """Record the last error of the lease holder."""

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE relays SET last_error = ? WHERE namespace = ? AND name = ? AND owner = ?",
                (error, namespace, name, owner),
            )

        await self._engine.write(work)

    async def backlog(
        self, namespace: str, name: str, run_id_prefix: str, limit: int
    ) -> builtins.list[PendingRun]:
        """Runs with events after the cursor, updated longest ago first."""

        def work(conn: sqlite3.Connection) -> builtins.list[PendingRun]:
            rows = conn.execute(
                _PENDING + " ORDER BY r.update_us LIMIT ?",
                (name, namespace, len(run_id_prefix), run_id_prefix, limit),
            ).fetchall()
            return [PendingRun(row[0], row[1], row[2], row[3]) for row in rows]

        return await self._engine.read(work)

    async def advance(
        self, namespace: str, name: str, owner: str, run: PendingRun, seq: int
    ) -> bool:
        """Move the cursor forward, fenced by the lease."""

        def work(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT INTO relay_cursors (namespace, relay, run_id, run_create_us, seq)"
                " SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM relays WHERE namespace = ?"
                " AND name = ? AND owner = ? AND lease_until_us > ?)"
                " ON CONFLICT (namespace, relay, run_id) DO UPDATE SET"
                " seq = CASE WHEN run_create_us = excluded.run_create_us"
                " THEN MAX(seq, excluded.seq) ELSE excluded.seq END,"
                " run_create_us = excluded.run_create_us",
                (namespace, name, run.run_id, run.create_us, seq, namespace, name, owner, now_us()),
            )
            return cursor.rowcount > 0

        return await self._engine.write(work)

    async def lag(self, namespace: str, name: str, run_id_prefix: str) -> Lag:
        """Events not forwarded, and the commit time of the oldest of them."""
        params = (name, namespace, len(run_id_prefix), run_id_prefix)

        def work(conn: sqlite3.Connection) -> tuple[int, list[bytes]]:
            (events,) = conn.execute(
                f"SELECT COALESCE(SUM(last_seq - after_seq), 0) FROM ({_PENDING})", params
            ).fetchone()
            envelopes = conn.execute(
                f"SELECT e.envelope FROM ({_PENDING} ORDER BY r.update_us LIMIT ?) p"
                " JOIN events e ON e.namespace = ? AND e.run_id = p.run_id"
                " AND e.seq = p.after_seq + 1",
                (*params, LAG_SAMPLE_RUNS, namespace),
            ).fetchall()
            return events, [row[0] for row in envelopes]

        events, envelopes = await self._engine.read(work)
        return Lag(events, oldest_emitted(envelopes))
