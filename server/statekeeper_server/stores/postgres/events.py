"""The event log in PostgreSQL: the SQLite layout, with each run's row as its lock.

The tables are those of the SQLite backend: `event_runs` (a run's counters),
`events` (the serialized `EventEnvelope` of each seq, returned untouched by
reads) and `event_ids` (each client-supplied event id with its seq and
digest, for the life of the run).

An append locks its run's row (`SELECT ... FOR UPDATE`) and decides against
what it then reads, so appends through any number of replicas take turns per
run and seqs stay gapless and unique. The first append of a run has no row
to lock: it inserts the row (`ON CONFLICT DO NOTHING`) in the same statement
as its events, and if a concurrent first append got there first, nothing of
it is written and it locks the winner's row and decides again. An append is
one transaction of a few round trips: the lock, the lookup of supplied event
ids (only if any), one statement writing events, ids and counters together,
and the wake-up of the run's followers on every replica.

A read takes the run and its events in one statement, hence one snapshot.
Deleting a run deletes its row first, which waits for an append holding it,
so the events of an append committed meanwhile are deleted with the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import asyncpg

from statekeeper.v1 import events_pb2
from statekeeper_server.limits import PAGE_BUDGET_BYTES
from statekeeper_server.observability import store_metrics
from statekeeper_server.offload import off_loop_if_many
from statekeeper_server.stores.budget import fill_page
from statekeeper_server.stores.events import (
    ALL_RUNS,
    EventPage,
    NewEvents,
    PreparedInput,
    RunFilter,
    RunPage,
    RunState,
    StoredEventId,
    Truncation,
    build_envelopes,
    event_key,
    plan_append,
    prepare_append,
    query_seq,
    require_originals,
    run_info_size,
    run_not_found,
    run_page,
    start_after,
    supplied_event_ids,
    truncation_point,
)
from statekeeper_server.stores.paging import decode_page_token
from statekeeper_server.stores.postgres.engine import PostgresEngine, Transaction
from statekeeper_server.stores.postgres.migrations import fast_compression
from statekeeper_server.stores.postgres.pages import framed_octets, within_bytes
from statekeeper_server.timestamps import now_us

MIGRATIONS = [
    [
        # Every append rewrites its run's row; free space per page keeps those updates HOT.
        """CREATE TABLE event_runs (
            namespace TEXT COLLATE "C" NOT NULL,
            run_id TEXT COLLATE "C" NOT NULL,
            session_id TEXT COLLATE "C" NOT NULL,
            first_seq BIGINT NOT NULL,
            last_seq BIGINT NOT NULL,
            terminal BOOLEAN NOT NULL,
            create_us BIGINT NOT NULL,
            update_us BIGINT NOT NULL,
            PRIMARY KEY (namespace, run_id)
        ) WITH (fillfactor = 80)""",
        """CREATE TABLE events (
            namespace TEXT COLLATE "C" NOT NULL,
            run_id TEXT COLLATE "C" NOT NULL,
            seq BIGINT NOT NULL,
            envelope BYTEA NOT NULL,
            PRIMARY KEY (namespace, run_id, seq)
        )""",
        """CREATE TABLE event_ids (
            namespace TEXT COLLATE "C" NOT NULL,
            run_id TEXT COLLATE "C" NOT NULL,
            event_id TEXT COLLATE "C" NOT NULL,
            seq BIGINT NOT NULL,
            digest BYTEA NOT NULL,
            PRIMARY KEY (namespace, run_id, event_id)
        )""",
    ],
    [
        # A page of runs of one session, or of one terminal state, is one index range.
        # Appends keep their updates HOT: they rewrite neither column once it is set.
        "CREATE INDEX event_runs_by_session ON event_runs (namespace, session_id, run_id)",
        "CREATE INDEX event_runs_by_terminal ON event_runs (namespace, terminal, run_id)",
    ],
    [
        # Large records are compressed with lz4, which costs the database far less CPU.
        fast_compression("events", "envelope"),
    ],
]

_RUN_COLUMNS = "run_id, session_id, first_seq, last_seq, terminal, create_us, update_us"


def _runs_query(
    namespace: str, after: str, where: RunFilter, limit: int
) -> tuple[str, list[object]]:
    """The SELECT of a page of runs: `limit` runs passing `where` after `after`."""
    bound, inclusive = start_after(after, where)
    params: list[object] = [namespace, bound]
    conditions = ["namespace = $1", "run_id >= $2" if inclusive else "run_id > $2"]

    def mark(value: object) -> str:
        params.append(value)
        return f"${len(params)}"

    if where.prefix:
        conditions.append(f"run_id < {mark(where.prefix_end())}")
    if where.session_id:
        conditions.append(f"session_id = {mark(where.session_id)}")
    if where.terminal is not None:
        conditions.append(f"terminal = {mark(where.terminal)}")
    sql = (
        f"SELECT {_RUN_COLUMNS} FROM event_runs WHERE {' AND '.join(conditions)}"
        f" ORDER BY run_id LIMIT {mark(limit)}"
    )
    return sql, params


_LOCK_RUN = f"""
    SELECT {_RUN_COLUMNS} FROM event_runs
    WHERE namespace = $1 AND run_id = $2
    FOR UPDATE"""

_WRITE = """
    WITH created AS (
        INSERT INTO event_runs (namespace, run_id, session_id, first_seq, last_seq, terminal,
                                create_us, update_us)
        SELECT $1::text, $2::text, $5::text, 1, $6::bigint, $7::boolean, $8::bigint, $8::bigint
        WHERE $9::boolean
        ON CONFLICT (namespace, run_id) DO NOTHING
        RETURNING 1
    ), updated AS (
        UPDATE event_runs
        SET session_id = $5::text, last_seq = $6::bigint, terminal = $7::boolean,
            update_us = $8::bigint
        WHERE NOT $9::boolean AND namespace = $1::text AND run_id = $2::text
        RETURNING 1
    ), written AS (
        SELECT 1 FROM created UNION ALL SELECT 1 FROM updated
    ), new_events AS (
        INSERT INTO events (namespace, run_id, seq, envelope)
        SELECT $1::text, $2::text, $3::bigint + ordinality, envelope
        FROM unnest($4::bytea[]) WITH ORDINALITY AS batch (envelope, ordinality)
        WHERE EXISTS (SELECT FROM written)
    ), new_ids AS (
        INSERT INTO event_ids (namespace, run_id, event_id, seq, digest)
        SELECT $1::text, $2::text, event_id, seq, digest
        FROM unnest($10::text[], $11::bigint[], $12::bytea[]) AS ids (event_id, seq, digest)
        WHERE EXISTS (SELECT FROM written)
    )
    SELECT EXISTS (SELECT FROM written),
           (SELECT pg_notify($13, $14) WHERE EXISTS (SELECT FROM written))"""
"""Store an append's events, ids and counters: updating the locked row of an existing
run ($9 false), or inserting the row of a new one ($9 true), and notify $13 with
$14 on commit. False (and nothing written or notified) when a concurrent first
append created the run first."""

_SAMPLE = 8
"""Envelopes whose average size tells how many envelopes a read will take."""

_EXPECTED_ROWS = (
    "1 + $5 * 5 / 4 / (SELECT greatest(avg(octet_length(envelope)), 1)::bigint"
    " FROM (SELECT envelope FROM events WHERE namespace = $1 AND run_id = $2 AND seq > $3"
    f" ORDER BY seq LIMIT {_SAMPLE}) AS sample)"
)
"""A quarter more envelopes than $5 bytes hold at the average size of the next few."""

_PAGE = within_bytes(
    "SELECT seq, envelope FROM events WHERE namespace = $1 AND run_id = $2 AND seq > $3"
    f" ORDER BY seq LIMIT least($4, {_EXPECTED_ROWS})",
    columns="seq, envelope",
    size=framed_octets("octet_length(envelope)"),
    order="seq",
    max_count="$4",
    max_bytes="$5",
)
"""Up to $4 envelopes of run $2 after seq $3, as many as fit in $5 bytes (at least one).

The window that sums their sizes reads only `_EXPECTED_ROWS`, so a read
scans few rows past its page; when sizes vary a page may hold less than its
budget, and the next read continues."""

_READ = f"""
    SELECT r.run_id, r.session_id, r.first_seq, r.last_seq, r.terminal, r.create_us,
           r.update_us, page.through_seq, page.envelopes
    FROM event_runs AS r
    LEFT JOIN LATERAL (
        SELECT max(e.seq) AS through_seq, array_agg(e.envelope ORDER BY e.seq) AS envelopes
        FROM ({_PAGE}) AS e
    ) AS page ON true
    WHERE r.namespace = $1 AND r.run_id = $2"""
"""The run and a page of its envelopes as one row: one array decodes far faster
than a row per envelope, and the database sends only the envelopes of the page."""


def _run_state(row: asyncpg.Record) -> RunState:
    return RunState(
        run_id=row["run_id"],
        session_id=row["session_id"],
        first_seq=row["first_seq"],
        last_seq=row["last_seq"],
        terminal=row["terminal"],
        create_us=row["create_us"],
        update_us=row["update_us"],
    )


async def _lock_run(tx: Transaction, namespace: str, run_id: str) -> RunState | None:
    """The run's state, its row locked until the transaction ends (None: no run yet)."""
    row = await tx.conn.fetchrow(_LOCK_RUN, namespace, run_id)
    return _run_state(row) if row is not None else None


async def _load_event_ids(
    tx: Transaction, namespace: str, run_id: str, event_ids: Sequence[str]
) -> dict[str, StoredEventId]:
    rows = await tx.conn.fetch(
        "SELECT event_id, seq, digest FROM event_ids"
        " WHERE namespace = $1 AND run_id = $2 AND event_id = ANY($3::text[])",
        namespace,
        run_id,
        event_ids,
    )
    return {row["event_id"]: StoredEventId(row["seq"], row["digest"]) for row in rows}


async def _load_envelopes(
    tx: Transaction, namespace: str, run_id: str, seqs: Iterable[int]
) -> dict[int, bytes]:
    wanted = sorted(set(seqs))
    if not wanted:
        return {}
    rows = await tx.conn.fetch(
        "SELECT seq, envelope FROM events"
        " WHERE namespace = $1 AND run_id = $2 AND seq = ANY($3::bigint[])",
        namespace,
        run_id,
        wanted,
    )
    return require_originals(run_id, wanted, {row["seq"]: row["envelope"] for row in rows})


async def _write(
    tx: Transaction,
    namespace: str,
    run_id: str,
    run: RunState | None,
    fresh: Sequence[PreparedInput],
    new: NewEvents,
    now: int,
) -> bool:
    """Store `new` (built from `fresh`) after the run's last seq and wake its followers on
    commit; False if the run was new here but a concurrent first append created it
    first (then nothing is written)."""
    key = event_key(namespace, run_id)
    supplied = [
        (item.event_id, seq, item.digest)
        for seq, item in enumerate(fresh, new.first_seq)
        if item.digest is not None
    ]
    written: bool = await tx.conn.fetchval(
        _WRITE,
        namespace,
        run_id,
        run.last_seq if run is not None else 0,
        new.encoded,
        new.session_id,
        new.last_seq,
        new.terminal,
        now,
        run is None,
        [event_id for event_id, _, _ in supplied],
        [seq for _, seq, _ in supplied],
        [digest for _, _, digest in supplied],
        *tx.notification(key),
    )
    if written:
        tx.notified(key)
    return written


class PostgresEventStore:
    """EventStore on a PostgresEngine (see stores.events for guarantees)."""

    def __init__(self, engine: PostgresEngine) -> None:
        self._engine = engine

    async def append(
        self,
        namespace: str,
        run_id: str,
        inputs: Sequence[events_pb2.EventInput],
        expectation: events_pb2.SeqExpectation | None,
    ) -> list[bytes]:
        """Validate, then append in one transaction holding the run's row; wake its followers."""
        prepared = await prepare_append(run_id, inputs, expectation)
        supplied = supplied_event_ids(prepared)
        async with self._engine.transaction() as tx:
            while True:
                run = await _lock_run(tx, namespace, run_id)
                stored = (
                    await _load_event_ids(tx, namespace, run_id, supplied)
                    if run is not None and supplied
                    else {}
                )
                plan = plan_append(run_id, prepared, stored, run, expectation)
                originals = await _load_envelopes(tx, namespace, run_id, plan.retries.values())
                if not plan.fresh:
                    return plan.results(originals, [])
                now = now_us()
                # Encoding a large batch's envelopes runs on a thread, between round trips.
                new = await off_loop_if_many(
                    len(plan.fresh), build_envelopes, run_id, run, plan.fresh, now
                )
                if await _write(tx, namespace, run_id, run, plan.fresh, new, now):
                    break
        # Committed: the transaction ended without raising.
        store_metrics.events_committed(
            namespace, event_key(namespace, run_id), new.encoded, new.last_seq
        )
        return plan.results(originals, new.encoded)

    def recent(
        self,
        namespace: str,
        run_id: str,
        after_seq: int,
        limit: int,
        max_bytes: int = PAGE_BUDGET_BYTES,
    ) -> EventPage | None:
        """Always None: other replicas commit too, so only the database knows the newest."""
        return None

    async def read(
        self,
        namespace: str,
        run_id: str,
        after_seq: int,
        limit: int,
        max_bytes: int = PAGE_BUDGET_BYTES,
        *,
        stream: bool = False,
    ) -> EventPage:
        """Stored envelopes after `after_seq` (at most `limit` and `max_bytes` of them),
        with the run, in one snapshot. A `stream` read takes one of the engine's stream
        slots."""
        rows = await self._engine.fetch(
            _READ, namespace, run_id, query_seq(after_seq), limit, max_bytes, stream=stream
        )
        if not rows:
            return EventPage(None, [], after_seq)
        row = rows[0]
        if row["envelopes"] is None:
            return EventPage(_run_state(row), [], after_seq)
        return EventPage(_run_state(row), row["envelopes"], row["through_seq"])

    async def list_runs(
        self, namespace: str, page_size: int, page_token: str, where: RunFilter = ALL_RUNS
    ) -> RunPage:
        """A page of the runs that pass `where` after the token's run_id: one range of
        the primary key, or of the session or terminal index."""
        after = decode_page_token(page_token, where.token_filters(), str) or ""
        sql, params = _runs_query(namespace, after, where, page_size + 1)
        rows = await self._engine.fetch(sql, *params)
        runs, more = fill_page(
            (_run_state(row).info() for row in rows), run_info_size, max_count=page_size
        )
        return run_page(runs, more, where)

    async def delete_run(self, namespace: str, run_id: str) -> bool:
        """Delete the run (its row first, see the module) and everything of it; wake followers."""
        async with self._engine.transaction() as tx:
            deleted = await tx.conn.fetchval(
                "DELETE FROM event_runs WHERE namespace = $1 AND run_id = $2 RETURNING true",
                namespace,
                run_id,
            )
            if deleted is None:
                return False
            # A new statement: its snapshot sees the events of an append that held the row.
            await tx.conn.execute(
                "WITH gone AS (DELETE FROM events WHERE namespace = $1 AND run_id = $2)"
                " DELETE FROM event_ids WHERE namespace = $1 AND run_id = $2",
                namespace,
                run_id,
            )
            await tx.notify(event_key(namespace, run_id))
            return True

    async def truncate(self, namespace: str, run_id: str, up_to_seq: int) -> Truncation:
        """Drop events up to `up_to_seq` (at most all of them) under the run's lock."""
        async with self._engine.transaction() as tx:
            run = await _lock_run(tx, namespace, run_id)
            if run is None:
                raise run_not_found(run_id)
            first_seq = truncation_point(run, up_to_seq)
            if first_seq is None:
                return Truncation(run.first_seq, 0)
            dropped: int = await tx.conn.fetchval(
                "WITH moved AS (UPDATE event_runs SET first_seq = $3"
                " WHERE namespace = $1 AND run_id = $2),"
                " dropped AS (DELETE FROM events WHERE namespace = $1 AND run_id = $2"
                " AND seq < $3 RETURNING 1)"
                " SELECT count(*) FROM dropped",
                namespace,
                run_id,
                first_seq,
            )
            await tx.notify(event_key(namespace, run_id))
            return Truncation(first_seq, dropped)
