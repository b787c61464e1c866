"""The event log in SQLite: a row per run, envelopes as stored bytes, reserved ids.

`event_runs` holds each run's counters (its seq is assigned here, on the
single writer thread, so it is gapless under any concurrency); `events` holds
the serialized `EventEnvelope` of each seq, which reads return untouched;
`event_ids` remembers every client-supplied event id of a run with the seq it
got and a digest of the event, for as long as the run exists.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterable, Sequence

from statekeeper.v1 import events_pb2
from statekeeper_server.limits import PAGE_BUDGET_BYTES
from statekeeper_server.notifier import Notifier
from statekeeper_server.observability import store_metrics
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
    run_after_append,
    run_info_size,
    run_not_found,
    run_page,
    start_after,
    supplied_event_ids,
    truncation_point,
)
from statekeeper_server.stores.paging import decode_page_token
from statekeeper_server.stores.recent_commits import RecentCommits
from statekeeper_server.stores.sqlite.engine import SQLiteEngine
from statekeeper_server.stores.sqlite.pages import read_page
from statekeeper_server.timestamps import now_us

MIGRATIONS = [
    [
        """CREATE TABLE event_runs (
            namespace TEXT NOT NULL,
            run_id TEXT NOT NULL,
            session_id TEXT NOT NULL,
            first_seq INTEGER NOT NULL,
            last_seq INTEGER NOT NULL,
            terminal INTEGER NOT NULL,
            create_us INTEGER NOT NULL,
            update_us INTEGER NOT NULL,
            PRIMARY KEY (namespace, run_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE events (
            namespace TEXT NOT NULL,
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            envelope BLOB NOT NULL,
            PRIMARY KEY (namespace, run_id, seq)
        ) WITHOUT ROWID""",
        """CREATE TABLE event_ids (
            namespace TEXT NOT NULL,
            run_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            digest BLOB NOT NULL,
            PRIMARY KEY (namespace, run_id, event_id)
        ) WITHOUT ROWID""",
    ],
    [
        # A page of runs of one session, or of one terminal state, is one index range.
        "CREATE INDEX event_runs_by_session ON event_runs (namespace, session_id, run_id)",
        "CREATE INDEX event_runs_by_terminal ON event_runs (namespace, terminal, run_id)",
    ],
]

_RUN_COLUMNS = "run_id, session_id, first_seq, last_seq, terminal, create_us, update_us"
_ID_CHUNK = 500
"""Event ids looked up per statement (well below SQLite's variable limit)."""


def _run_state(row: Sequence[object]) -> RunState:
    run_id, session_id, first_seq, last_seq, terminal, create_us, update_us = row
    return RunState(
        run_id=str(run_id),
        session_id=str(session_id),
        first_seq=int(first_seq),  # type: ignore[call-overload]
        last_seq=int(last_seq),  # type: ignore[call-overload]
        terminal=bool(terminal),
        create_us=int(create_us),  # type: ignore[call-overload]
        update_us=int(update_us),  # type: ignore[call-overload]
    )


def _load_run(conn: sqlite3.Connection, namespace: str, run_id: str) -> RunState | None:
    row = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM event_runs WHERE namespace = ? AND run_id = ?",
        (namespace, run_id),
    ).fetchone()
    return _run_state(row) if row else None


def _load_event_ids(
    conn: sqlite3.Connection, namespace: str, run_id: str, event_ids: Sequence[str]
) -> dict[str, StoredEventId]:
    found: dict[str, StoredEventId] = {}
    for start in range(0, len(event_ids), _ID_CHUNK):
        chunk = event_ids[start : start + _ID_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            "SELECT event_id, seq, digest FROM event_ids"
            f" WHERE namespace = ? AND run_id = ? AND event_id IN ({marks})",
            (namespace, run_id, *chunk),
        ).fetchall()
        for event_id, seq, digest in rows:
            found[event_id] = StoredEventId(seq, digest)
    return found


def _load_envelopes(
    conn: sqlite3.Connection, namespace: str, run_id: str, seqs: Iterable[int]
) -> dict[int, bytes]:
    wanted = set(seqs)
    found: dict[int, bytes] = {}
    for seq in wanted:
        row = conn.execute(
            "SELECT envelope FROM events WHERE namespace = ? AND run_id = ? AND seq = ?",
            (namespace, run_id, seq),
        ).fetchone()
        if row is not None:
            found[seq] = row[0]
    return require_originals(run_id, wanted, found)


def _envelope_size(row: tuple[int, bytes]) -> int:
    """The encoded size of the envelope of a (seq, envelope) row."""
    return len(row[1])


def _runs_query(
    namespace: str, after: str, where: RunFilter, limit: int
) -> tuple[str, list[object]]:
    """The SELECT of a page of runs: `limit` runs passing `where` after `after`.

    The index is named: without statistics SQLite may pick one whose range holds
    every run of a state rather than the runs of a session. The session index
    serves a session (its runs are few), else the terminal index a state, each
    with the prefix as a range of its run ids; else the primary key.
    """
    index = ""
    if where.session_id:
        index = " INDEXED BY event_runs_by_session"
    elif where.terminal is not None:
        index = " INDEXED BY event_runs_by_terminal"
    bound, inclusive = start_after(after, where)
    conditions = ["namespace = ?", "run_id >= ?" if inclusive else "run_id > ?"]
    params: list[object] = [namespace, bound]
    if where.prefix:
        conditions.append("run_id < ?")
        params.append(where.prefix_end())
    if where.session_id:
        conditions.append("session_id = ?")
        params.append(where.session_id)
    if where.terminal is not None:
        conditions.append("terminal = ?")
        params.append(int(where.terminal))
    sql = (
        f"SELECT {_RUN_COLUMNS} FROM event_runs{index} WHERE {' AND '.join(conditions)}"
        " ORDER BY run_id LIMIT ?"
    )
    return sql, [*params, limit]


MAX_REMEMBERED_RUNS = 10_000


class _WriterRuns:
    """Each run's state as the writer thread last wrote it, so appends skip a SELECT.

    Used on the writer thread only, by every write that changes a run's row.
    Forgets everything when the engine rolls back a group transaction (what
    it remembered may not have been committed); holds at most
    MAX_REMEMBERED_RUNS runs, forgetting the oldest first.
    """

    def __init__(self, engine: SQLiteEngine) -> None:
        self._engine = engine
        self._rollbacks = engine.rollbacks
        self._runs: dict[tuple[str, str], RunState | None] = {}

    def get(self, conn: sqlite3.Connection, namespace: str, run_id: str) -> RunState | None:
        """The run's state (None: no run), from memory or else from `conn`."""
        if self._rollbacks != self._engine.rollbacks:
            self._runs.clear()
            self._rollbacks = self._engine.rollbacks
        key = (namespace, run_id)
        if key in self._runs:
            return self._runs[key]
        run = _load_run(conn, namespace, run_id)
        self.put(namespace, run_id, run)
        return run

    def put(self, namespace: str, run_id: str, run: RunState | None) -> None:
        """Remember what the current write made of the run's row (None: deleted)."""
        key = (namespace, run_id)
        self._runs.pop(key, None)
        if len(self._runs) >= MAX_REMEMBERED_RUNS:
            del self._runs[next(iter(self._runs))]
        self._runs[key] = run


class SQLiteEventStore:
    """EventStore on a SQLiteEngine (see stores.events for guarantees)."""

    def __init__(self, engine: SQLiteEngine, notifier: Notifier) -> None:
        self._engine = engine
        self._notifier = notifier
        self._recent = RecentCommits()
        self._runs = _WriterRuns(engine)

    async def append(
        self,
        namespace: str,
        run_id: str,
        inputs: Sequence[events_pb2.EventInput],
        expectation: events_pb2.SeqExpectation | None,
    ) -> list[bytes]:
        """Validate, then append in one writer transaction and wake the run's followers."""
        prepared = await prepare_append(run_id, inputs, expectation)
        committed: tuple[int, RunState, list[bytes]] | None = None

        def work(conn: sqlite3.Connection) -> list[bytes]:
            nonlocal committed
            run = self._runs.get(conn, namespace, run_id)
            supplied = supplied_event_ids(prepared)
            stored = _load_event_ids(conn, namespace, run_id, supplied) if run and supplied else {}
            plan = plan_append(run_id, prepared, stored, run, expectation)
            originals = (
                _load_envelopes(conn, namespace, run_id, plan.retries.values())
                if plan.retries
                else {}
            )
            if not plan.fresh:
                return plan.results(originals, [])
            now = now_us()
            new = build_envelopes(run_id, run, plan.fresh, now)
            _insert(conn, namespace, run_id, plan.fresh, new, now)
            after = run_after_append(run_id, run, new, now)
            self._runs.put(namespace, run_id, after)
            committed = (new.first_seq - 1, after, new.encoded)
            return plan.results(originals, new.encoded) if plan.retries else new.encoded

        def wake_followers(_: list[bytes]) -> None:
            if committed is not None:
                key = event_key(namespace, run_id)
                self._recent.publish(key, *committed)
                self._notifier.notify(key)
                store_metrics.events_committed(namespace, key, committed[2], committed[1].last_seq)

        # Everything an append checks, it checks before it writes.
        return await self._engine.write(work, checks_first=True, on_commit=wake_followers)

    def recent(
        self,
        namespace: str,
        run_id: str,
        after_seq: int,
        limit: int,
        max_bytes: int = PAGE_BUDGET_BYTES,
    ) -> EventPage | None:
        """The envelopes after `after_seq` from the run's newest commits kept in memory,
        if they reach back to `after_seq` (at most `limit` and `max_bytes` of them)."""
        return self._recent.page_after(event_key(namespace, run_id), after_seq, limit, max_bytes)

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
        with the run, in one snapshot; rows are stepped only until the page is full. A
        `stream` read runs on the engine's stream reader."""

        def work(conn: sqlite3.Connection) -> EventPage:
            run = _load_run(conn, namespace, run_id)
            if run is None:
                return EventPage(None, [], after_seq)
            rows, _ = read_page(
                conn,
                "SELECT seq, envelope FROM events WHERE namespace = ? AND run_id = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (namespace, run_id, query_seq(after_seq), limit),
                _envelope_size,
                max_count=limit,
                max_bytes=max_bytes,
            )
            through = rows[-1][0] if rows else after_seq
            return EventPage(run, [row[1] for row in rows], through)

        return await self._engine.read(work, stream=stream)

    async def list_runs(
        self, namespace: str, page_size: int, page_token: str, where: RunFilter = ALL_RUNS
    ) -> RunPage:
        """A page of the runs that pass `where` after the token's run_id: one range of
        the primary key, or of the session or terminal index."""
        after = decode_page_token(page_token, where.token_filters(), str) or ""
        sql, params = _runs_query(namespace, after, where, page_size + 1)

        def work(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
            return conn.execute(sql, params).fetchall()

        rows = await self._engine.read(work)
        runs, more = fill_page(
            (_run_state(row).info() for row in rows), run_info_size, max_count=page_size
        )
        return run_page(runs, more, where)

    async def delete_run(self, namespace: str, run_id: str) -> bool:
        """Delete the run and everything of it; followers are woken to notice."""

        def work(conn: sqlite3.Connection) -> bool:
            key = (namespace, run_id)
            conn.execute("DELETE FROM events WHERE namespace = ? AND run_id = ?", key)
            conn.execute("DELETE FROM event_ids WHERE namespace = ? AND run_id = ?", key)
            cursor = conn.execute("DELETE FROM event_runs WHERE namespace = ? AND run_id = ?", key)
            self._runs.put(namespace, run_id, None)
            return cursor.rowcount > 0

        def wake_followers(deleted: bool) -> None:
            if deleted:
                self._forget_run(namespace, run_id)

        return await self._engine.write(work, on_commit=wake_followers)

    async def truncate(self, namespace: str, run_id: str, up_to_seq: int) -> Truncation:
        """Drop events up to `up_to_seq` (at most all of them); the counters stay."""

        def work(conn: sqlite3.Connection) -> Truncation:
            run = self._runs.get(conn, namespace, run_id)
            if run is None:
                raise run_not_found(run_id)
            first_seq = truncation_point(run, up_to_seq)
            if first_seq is None:
                return Truncation(run.first_seq, 0)
            cursor = conn.execute(
                "DELETE FROM events WHERE namespace = ? AND run_id = ? AND seq < ?",
                (namespace, run_id, first_seq),
            )
            conn.execute(
                "UPDATE event_runs SET first_seq = ? WHERE namespace = ? AND run_id = ?",
                (first_seq, namespace, run_id),
            )
            self._runs.put(namespace, run_id, run._replace(first_seq=first_seq))
            return Truncation(first_seq, cursor.rowcount)

        def wake_followers(truncation: Truncation) -> None:
            if truncation.dropped:
                self._forget_run(namespace, run_id)

        return await self._engine.write(work, on_commit=wake_followers)

    def _forget_run(self, namespace: str, run_id: str) -> None:
        """Drop the run's newest commits kept in memory and wake its followers."""
        key = event_key(namespace, run_id)
        self._recent.forget(key)
        self._notifier.notify(key)


MAX_ROWS_PER_INSERT = 256


def _row_chunks(count: int) -> list[int]:
    """Split `count` rows into chunks whose sizes are powers of two (largest first, at
    most MAX_ROWS_PER_INSERT), so that few distinct statements ever get prepared."""
    chunks: list[int] = []
    size = MAX_ROWS_PER_INSERT
    while count:
        while size > count:
            size //= 2
        chunks.append(size)
        count -= size
    return chunks


@functools.cache
def _insert_events_sql(rows: int) -> str:
    """One INSERT of `rows` events of a run: ?1 namespace, ?2 run_id, then seq and
    envelope per row.

    One statement for many rows, rather than `executemany`, because the
    writer thread gives up the GIL for every statement it steps and must
    win it back from a busy event loop each time.
    """
    values = ", ".join(f"(?1, ?2, ?{3 + 2 * row}, ?{4 + 2 * row})" for row in range(rows))
    return f"INSERT INTO events (namespace, run_id, seq, envelope) VALUES {values}"


def _insert(
    conn: sqlite3.Connection,
    namespace: str,
    run_id: str,
    fresh: Sequence[PreparedInput],
    new: NewEvents,
    now: int,
) -> None:
    """Store `new` (built from `fresh`) after the run's last seq and move the run's counters."""
    start = 0
    for rows in _row_chunks(len(new.encoded)):
        params: list[object] = [namespace, run_id]
        for index in range(start, start + rows):
            params += (new.first_seq + index, new.encoded[index])
        conn.execute(_insert_events_sql(rows), params)
        start += rows
    seqs = range(new.first_seq, new.last_seq + 1)
    supplied = [
        (namespace, run_id, item.event_id, seq, item.digest)
        for item, seq in zip(fresh, seqs, strict=True)
        if item.digest is not None
    ]
    if supplied:
        conn.executemany(
            "INSERT INTO event_ids (namespace, run_id, event_id, seq, digest)"
            " VALUES (?, ?, ?, ?, ?)",
            supplied,
        )
    conn.execute(
        "INSERT INTO event_runs (namespace, run_id, session_id, first_seq, last_seq, terminal,"
        " create_us, update_us) VALUES (?, ?, ?, 1, ?, ?, ?, ?)"
        " ON CONFLICT (namespace, run_id) DO UPDATE SET session_id = excluded.session_id,"
        " last_seq = excluded.last_seq, terminal = excluded.terminal,"
        " update_us = excluded.update_us",
        (namespace, run_id, new.session_id, new.last_seq, int(new.terminal), now, now),
    )
