"""The job queue in SQLite: one `jobs` table and a `job_changes` log.

Order: `seq` (INTEGER PRIMARY KEY AUTOINCREMENT) is the monotonic enqueue
sequence; leasing scans the partial index of AVAILABLE jobs ordered by
(namespace, queue, priority DESC, seq), so claiming is an index scan inside
the single writer's transaction and therefore atomic. A waiting job is
stored SCHEDULED (state 1) while its run_after is in the future; it is
promoted to AVAILABLE (state 2) by the next lease of its queue or by the
sweeper, and reported AVAILABLE by reads as soon as run_after has passed.

The transitions themselves (what a lease, a failure or a retry makes of a
row) are decided in stores.jobs; this module reads and writes the rows.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from typing import TypeVar

from google.protobuf import struct_pb2

from statekeeper.v1 import jobs_pb2
from statekeeper_server.limits import PAGE_BUDGET_BYTES
from statekeeper_server.notifier import Notifier
from statekeeper_server.observability.store_metrics import JobCounts
from statekeeper_server.stores.budget import fill_page
from statekeeper_server.stores.jobs import (
    AVAILABLE,
    BUILTIN_QUEUE,
    CANCELLED,
    CHANGE_COLUMNS,
    JOB_COLUMNS,
    LEASE_EXPIRED_ERROR,
    QUEUE_NAMES_SQL,
    RUNNING,
    SCHEDULED,
    STORED_STATES,
    SUCCEEDED,
    ChangeFilter,
    ChangePage,
    ChangeRow,
    Effects,
    Enqueued,
    HeartbeatResult,
    JobFilter,
    JobPage,
    JobRow,
    LeasedJob,
    LeaseResult,
    NewJob,
    StatsPage,
    SweepResult,
    after_failure,
    cancel_allowed,
    cancelled_row,
    capped_counts,
    change_of,
    change_page,
    changes_trimmed,
    check_enqueue_response,
    check_lease,
    check_retry_allowed,
    completed_row,
    completion_repeated,
    enqueued_job,
    expired_row,
    extended_row,
    failed_row,
    idempotency_key_in_use,
    job_from_row,
    job_not_found,
    job_page,
    lease_batch,
    lease_lapsed,
    list_filters,
    message_size,
    new_row,
    promoted_row,
    queue_stats,
    reported_state,
    revived_row,
    row_lease,
    runnable_since,
    sized_change,
    sized_job,
    stats_filters,
    stats_page,
)
from statekeeper_server.stores.paging import decode_page_token
from statekeeper_server.stores.sqlite.engine import SQLiteEngine
from statekeeper_server.timestamps import now_us

T = TypeVar("T")

MIGRATIONS = [
    [
        """CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            namespace TEXT NOT NULL,
            job_id TEXT NOT NULL,
            queue TEXT NOT NULL,
            kind TEXT NOT NULL,
            payload BLOB NOT NULL,
            priority INTEGER NOT NULL,
            state INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            max_retries INTEGER NOT NULL,
            run_after INTEGER NOT NULL,
            create_time INTEGER NOT NULL,
            update_time INTEGER NOT NULL,
            finish_time INTEGER,
            errors TEXT NOT NULL,
            result BLOB,
            lease_id TEXT,
            worker_id TEXT,
            lease_expire INTEGER,
            idempotency_key TEXT,
            backoff_base INTEGER NOT NULL,
            backoff_cap INTEGER NOT NULL
        )""",
        "CREATE UNIQUE INDEX jobs_by_id ON jobs (namespace, job_id)",
        "CREATE INDEX jobs_by_namespace ON jobs (namespace)",
        "CREATE INDEX jobs_by_queue ON jobs (namespace, queue, state, priority)",
        "CREATE INDEX jobs_available ON jobs (namespace, queue, priority DESC, seq)"
        " WHERE state = 2",
        f"CREATE INDEX jobs_builtin_available ON jobs (priority DESC, seq)"
        f" WHERE state = 2 AND queue = '{BUILTIN_QUEUE}'",
        "CREATE INDEX jobs_scheduled ON jobs (namespace, queue, run_after) WHERE state = 1",
        "CREATE INDEX jobs_scheduled_due ON jobs (run_after) WHERE state = 1",
        "CREATE INDEX jobs_running ON jobs (lease_expire) WHERE state = 3",
        "CREATE UNIQUE INDEX jobs_idempotency ON jobs (namespace, idempotency_key)"
        " WHERE idempotency_key IS NOT NULL AND state IN (1, 2, 3)",
        "CREATE INDEX jobs_finished ON jobs (finish_time) WHERE state IN (4, 5, 6)",
        """CREATE TABLE job_changes (
            change_id INTEGER PRIMARY KEY AUTOINCREMENT,
            namespace TEXT NOT NULL,
            job_id TEXT NOT NULL,
            queue TEXT NOT NULL,
            kind TEXT NOT NULL,
            previous_state INTEGER NOT NULL,
            state INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            change_time INTEGER NOT NULL,
            run_after INTEGER,
            worker_id TEXT,
            error TEXT,
            result BLOB
        )""",
        "CREATE INDEX job_changes_by_namespace ON job_changes (namespace)",
        "CREATE INDEX job_changes_by_time ON job_changes (change_time)",
        """CREATE TABLE job_changes_trimmed (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            through INTEGER NOT NULL
        )""",
    ],
    [
        # The oldest runnable job of a queue, for the metrics, in one index lookup.
        "CREATE INDEX jobs_available_since ON jobs (namespace, queue, run_after) WHERE state = 2",
    ],
]

SETTLE_BATCH = 1000
PURGE_JOBS_BATCH = 1000
PURGE_CHANGES_BATCH = 5000


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


_SELECT_JOB = f"SELECT {JOB_COLUMNS} FROM jobs WHERE namespace = ? AND job_id = ?"
_SELECT_KEY_HOLDER = (
    f"SELECT {JOB_COLUMNS} FROM jobs WHERE namespace = ? AND idempotency_key = ?"
    " AND state IN (1, 2, 3)"
)
_INSERT_JOB = (
    f"INSERT INTO jobs ({', '.join(JobRow._fields[1:])}) VALUES ({_marks(JobRow._fields[1:])})"
)
_INSERT_CHANGE = (
    f"INSERT INTO job_changes (namespace, {', '.join(ChangeRow._fields[1:])})"
    f" VALUES (?, {_marks(ChangeRow._fields[1:])})"
)
# Expired leases are few and settled soon, so reading them by expiry beats
# reading every leased job of the namespace or queue, which SQLite would pick.
_EXPIRED_LEASES = "INDEXED BY jobs_running WHERE state = 3 AND lease_expire <= ?"
_LEASE_JOB = (
    "UPDATE jobs SET state = 3, attempt = ?, lease_id = ?, worker_id = ?,"
    " lease_expire = ?, update_time = ? WHERE seq = ?"
)
_COMPLETE_JOB = (
    "UPDATE jobs SET state = ?, result = ?, finish_time = ?, update_time = ? WHERE seq = ?"
)

Write = Callable[[sqlite3.Connection, Effects], T]


class SQLiteJobStore:
    """JobStore on a SQLiteEngine (see stores.jobs for guarantees)."""

    def __init__(self, engine: SQLiteEngine, notifier: Notifier) -> None:
        self._engine = engine
        self._notifier = notifier

    # -- writes ----------------------------------------------------------------

    async def enqueue(self, namespace: str, jobs: Sequence[NewJob]) -> list[Enqueued]:
        """Insert `jobs` in one transaction, returning existing ones for held keys."""

        def work(conn: sqlite3.Connection, effects: Effects) -> list[Enqueued]:
            now = now_us()
            created: list[JobRow] = []
            enqueued = [_enqueue_one(conn, namespace, new, now, created) for new in jobs]
            check_enqueue_response(enqueued)
            _record_all(conn, effects, created, jobs_pb2.JOB_STATE_UNSPECIFIED, now)
            return enqueued

        return await self._write(work)

    async def lease(
        self,
        namespace: str,
        queue: str,
        kinds: Sequence[str],
        worker_id: str,
        count: int,
        lease_us: int,
    ) -> LeaseResult:
        """Settle the queue's due jobs, then claim the first `count` runnable ones."""
        return await self._write(
            lambda conn, effects: _lease(
                conn, effects, _Scope(namespace, queue, tuple(kinds)), worker_id, count, lease_us
            )
        )

    async def lease_builtin(self, worker_id: str, count: int, lease_us: int) -> LeaseResult:
        """Claim runnable built-in jobs of every namespace."""
        return await self._write(
            lambda conn, effects: _lease(
                conn, effects, _Scope(None, BUILTIN_QUEUE, ()), worker_id, count, lease_us
            )
        )

    async def heartbeat(
        self, namespace: str, job_id: str, lease_id: str, lease_us: int
    ) -> HeartbeatResult:
        """Extend a live lease; report a cancellation made under it."""

        def work(conn: sqlite3.Connection, effects: Effects) -> HeartbeatResult:
            now = now_us()
            row = _require(conn, namespace, job_id)
            extended = extended_row(row, lease_id, lease_us, now)
            if extended is None:
                return HeartbeatResult(row_lease(row), cancelled=True)
            row = extended
            conn.execute(
                "UPDATE jobs SET lease_expire = ? WHERE seq = ?", (row.lease_expire, row.seq)
            )
            return HeartbeatResult(row_lease(row), cancelled=False)

        return await self._write(work)

    async def complete(
        self, namespace: str, job_id: str, lease_id: str, result: struct_pb2.Struct
    ) -> jobs_pb2.Job:
        """SUCCEEDED with `result` under a live lease."""

        def work(conn: sqlite3.Connection, effects: Effects) -> jobs_pb2.Job:
            now = now_us()
            row = _require(conn, namespace, job_id)
            if completion_repeated(row, lease_id):
                return job_from_row(row, now)
            check_lease(row, lease_id, now)
            data = result.SerializeToString()
            row = completed_row(row, data, now)
            conn.execute(_COMPLETE_JOB, (SUCCEEDED, data, now, now, row.seq))
            _record(conn, effects, row, RUNNING, now, result=data)
            return job_from_row(row, now)

        return await self._write(work)

    async def fail(
        self,
        namespace: str,
        job_id: str,
        lease_id: str,
        error: str,
        retryable: bool,
        retry_delay_us: int | None,
    ) -> jobs_pb2.Job:
        """Record the failed attempt and reschedule or bury the job."""

        def work(conn: sqlite3.Connection, effects: Effects) -> jobs_pb2.Job:
            now = now_us()
            row = _require(conn, namespace, job_id)
            check_lease(row, lease_id, now)
            outcome = after_failure(
                row, now, retryable=retryable, retry_delay_us=retry_delay_us, rand=random.random()
            )
            return job_from_row(
                _store_failure(conn, effects, failed_row(row, outcome, error, now), error), now
            )

        return await self._write(work)

    async def cancel(self, namespace: str, job_id: str) -> jobs_pb2.Job:
        """CANCELLED; a running job keeps its lease id so its heartbeat learns why."""

        def work(conn: sqlite3.Connection, effects: Effects) -> jobs_pb2.Job:
            now = now_us()
            row = _require(conn, namespace, job_id)
            if not cancel_allowed(row):
                return job_from_row(row, now)
            previous = reported_state(row.state, row.run_after, now)
            row = cancelled_row(row, now)
            conn.execute(
                "UPDATE jobs SET state = ?, finish_time = ?, update_time = ? WHERE seq = ?",
                (CANCELLED, now, now, row.seq),
            )
            _record(conn, effects, row, previous, now)
            return job_from_row(row, now)

        return await self._write(work)

    async def retry(self, namespace: str, job_id: str, delay_us: int) -> jobs_pb2.Job:
        """A DEAD or CANCELLED job back to its queue with attempt 0."""

        def work(conn: sqlite3.Connection, effects: Effects) -> jobs_pb2.Job:
            now = now_us()
            row = _require(conn, namespace, job_id)
            check_retry_allowed(row, now)
            if row.idempotency_key is not None:
                holder = _key_holder(conn, namespace, row.idempotency_key)
                if holder is not None:
                    raise idempotency_key_in_use(row, holder.job_id)
            previous = row.state
            row = revived_row(row, delay_us, now)
            conn.execute(
                "UPDATE jobs SET state = ?, attempt = 0, run_after = ?, update_time = ?,"
                " finish_time = NULL, result = NULL, lease_id = NULL, worker_id = NULL,"
                " lease_expire = NULL WHERE seq = ?",
                (row.state, row.run_after, now, row.seq),
            )
            _record(conn, effects, row, previous, now)
            return job_from_row(row, now)

        return await self._write(work)

    async def metrics_counts(self) -> JobCounts:
        """Jobs by namespace, queue and stored state, and since when each queue's
        longest-runnable job could run; a stream read (see JobStore)."""

        def work(conn: sqlite3.Connection) -> JobCounts:
            now = now_us()
            counts = [
                (str(namespace), str(queue), int(state), int(count))
                for namespace, queue, state, count in conn.execute(
                    "SELECT namespace, queue, state, COUNT(*) FROM jobs INDEXED BY jobs_by_queue"
                    " GROUP BY namespace, queue, state"
                )
            ]
            oldest: list[tuple[str, str, int]] = []
            waiting = sorted({(ns, queue) for ns, queue, state, _ in counts if state in (1, 2)})
            for namespace, queue in waiting:
                available, scheduled = (
                    conn.execute(
                        "SELECT MIN(run_after) FROM jobs WHERE state = ? AND namespace = ?"
                        " AND queue = ?",
                        (state, namespace, queue),
                    ).fetchone()[0]
                    for state in (AVAILABLE, SCHEDULED)
                )
                since = runnable_since(available, scheduled, now)
                if since is not None:
                    oldest.append((namespace, queue, since))
            return JobCounts(counts, oldest)

        return await self._engine.read(work, stream=True)

    async def sweep(self) -> SweepResult:
        """Promote due jobs and settle expired leases of every queue."""

        def work(conn: sqlite3.Connection, effects: Effects) -> SweepResult:
            now = now_us()
            scope = _Scope(None, None, ())
            if _settle(conn, effects, now, scope):
                return SweepResult(more=True, next_due_us=None)
            return SweepResult(more=False, next_due_us=_next_due(conn, now, scope))

        return await self._write(work)

    async def purge(self, finished_before_us: int, changes_before_us: int) -> int:
        """Delete, in bounded batches, finished jobs and changes older than the cutoffs."""

        def work(conn: sqlite3.Connection, effects: Effects) -> tuple[int, bool]:
            seqs = [
                seq
                for (seq,) in conn.execute(
                    "SELECT seq FROM jobs WHERE state IN (4, 5, 6) AND finish_time < ? LIMIT ?",
                    (finished_before_us, PURGE_JOBS_BATCH),
                )
            ]
            conn.executemany("DELETE FROM jobs WHERE seq = ?", [(seq,) for seq in seqs])
            ids = [
                change_id
                for (change_id,) in conn.execute(
                    "SELECT change_id FROM job_changes WHERE change_time < ? LIMIT ?",
                    (changes_before_us, PURGE_CHANGES_BATCH),
                )
            ]
            if ids:
                conn.executemany("DELETE FROM job_changes WHERE change_id = ?", [(i,) for i in ids])
                conn.execute(
                    "INSERT INTO job_changes_trimmed (id, through) VALUES (1, ?)"
                    " ON CONFLICT (id) DO UPDATE SET through = max(through, excluded.through)",
                    (max(ids),),
                )
            more = len(seqs) == PURGE_JOBS_BATCH or len(ids) == PURGE_CHANGES_BATCH
            return len(seqs), more

        deleted = 0
        while True:
            count, more = await self._write(work)
            deleted += count
            if not more:
                return deleted

    # -- reads -----------------------------------------------------------------

    async def get(self, namespace: str, job_id: str) -> jobs_pb2.Job:
        """The job now; an expired lease is settled first. The job is built on the
        store's thread (a large payload decodes there, in pieces)."""

        def read(conn: sqlite3.Connection) -> jobs_pb2.Job | JobRow | None:
            row = _fetch(conn, namespace, job_id)
            if row is None or lease_lapsed(row, now := now_us()):
                return row
            return job_from_row(row, now)

        def settle(conn: sqlite3.Connection, effects: Effects) -> jobs_pb2.Job:
            return job_from_row(_settle_job(conn, effects, namespace, job_id), now_us())

        found = await self._engine.read(read)
        if found is None:
            raise job_not_found(job_id)
        if isinstance(found, JobRow):
            return await self._write(settle)
        return found

    async def list(
        self, namespace: str, where: JobFilter, page_size: int, page_token: str
    ) -> JobPage:
        """A page of jobs after the token's seq, filtered by queue, kind and state; rows
        are stepped only until the page is full."""
        filters = list_filters(where)
        after = decode_page_token(page_token, filters, int) or 0

        def work(conn: sqlite3.Connection) -> JobPage:
            now = now_us()
            sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE namespace = ? AND seq > ?"
            params: list[object] = [namespace, after]
            if where.queue:
                sql += " AND queue = ?"
                params.append(where.queue)
            if where.kind:
                sql += " AND kind = ?"
                params.append(where.kind)
            if where.state:
                condition, extra = _state_condition(where.state, now)
                sql += " AND " + condition
                params.extend(extra)
            sql += " ORDER BY seq LIMIT ?"
            params.append(page_size + 1)
            with closing(conn.execute(sql, params)) as cursor:
                sized = (sized_job(JobRow._make(row), now) for row in cursor)
                page, more = fill_page(sized, message_size, max_count=page_size)
            return job_page(page, more, filters)

        return await self._read_settled(namespace, work)

    async def stats(
        self, namespace: str, queue: str, page_size: int, page_token: str, count_limit: int = 0
    ) -> StatsPage:
        """Counts per queue, reported state and priority (each stopping at `count_limit`
        when set), and oldest available age, of a page of queues after the token's queue."""
        filters = stats_filters(queue)
        after = decode_page_token(page_token, filters, str) or ""

        def work(conn: sqlite3.Connection) -> StatsPage:
            now = now_us()
            if queue:
                names = [queue] if queue > after else []
            else:
                sql = QUEUE_NAMES_SQL.format(ns="?1", after="?2", limit="?3")
                names = [name for (name,) in conn.execute(sql, (namespace, after, page_size + 1))]
            more, names = len(names) > page_size, names[:page_size]
            if not names:
                return StatsPage([], "")
            capped: dict[str, set[int]] = {}
            if count_limit:
                counts, capped = _capped_counts(conn, namespace, names, count_limit, now)
            else:
                counts = conn.execute(
                    "SELECT queue, CASE WHEN state = 1 AND run_after <= ? THEN 2 ELSE state END"
                    " AS s, priority, COUNT(*) FROM jobs"
                    " WHERE namespace = ? AND queue >= ? AND queue <= ?"
                    " GROUP BY queue, s, priority ORDER BY queue, s, priority",
                    (now, namespace, names[0], names[-1]),
                ).fetchall()
            oldest = {}
            for name in names:
                available, scheduled = (
                    conn.execute(
                        "SELECT MIN(run_after) FROM jobs WHERE state = ? AND namespace = ?"
                        " AND queue = ?",
                        (state, namespace, name),
                    ).fetchone()[0]
                    for state in (AVAILABLE, SCHEDULED)
                )
                since = runnable_since(available, scheduled, now)
                if since is not None:
                    oldest[name] = since
            stats = queue_stats(queue, counts, oldest, now, capped)
            return stats_page(stats, more, page_size, filters)

        return await self._read_settled(namespace, work)

    async def change_position(self) -> int:
        """The newest change id ever assigned."""
        return await self._engine.read(_change_position)

    async def changes(
        self,
        namespace: str,
        where: ChangeFilter,
        after: int,
        limit: int,
        max_bytes: int = PAGE_BUDGET_BYTES,
    ) -> ChangePage:
        """Matching changes after `after` (stepped only until the page is full), and how
        far the log was read; a watch's read, so it runs on the engine's stream reader."""

        def work(conn: sqlite3.Connection) -> ChangePage:
            row = conn.execute("SELECT through FROM job_changes_trimmed WHERE id = 1").fetchone()
            trimmed_through = int(row[0]) if row else 0
            if 0 < after < trimmed_through:
                raise changes_trimmed(after, trimmed_through)
            sql = f"SELECT {CHANGE_COLUMNS} FROM job_changes WHERE namespace = ? AND change_id > ?"
            params: list[object] = [namespace, after]
            if where.queue:
                sql += " AND queue = ?"
                params.append(where.queue)
            if where.kind:
                sql += " AND kind = ?"
                params.append(where.kind)
            if where.job_ids:
                sql += f" AND job_id IN ({_marks(where.job_ids)})"
                params.extend(where.job_ids)
            sql += " ORDER BY change_id LIMIT ?"
            params.append(limit + 1)
            with closing(conn.execute(sql, params)) as cursor:
                sized = (sized_change(ChangeRow._make(row)) for row in cursor)
                page, more = fill_page(sized, message_size, max_count=limit, max_bytes=max_bytes)
            return change_page(page, more, _change_position(conn), after)

        return await self._engine.read(work, stream=True)

    # -- internals ---------------------------------------------------------------

    async def _write(self, work: Write[T]) -> T:
        """Run `work` in a write transaction; on COMMIT, wake whoever it concerns."""
        effects = Effects()

        def attempt(conn: sqlite3.Connection) -> T:
            # The engine may run a write again (see SQLiteEngine): count only the last run.
            nonlocal effects
            effects = Effects()
            return work(conn, effects)

        def wake(_: T) -> None:
            for key in effects.wake_keys():
                self._notifier.notify(key)
            effects.committed()

        return await self._engine.write(attempt, on_commit=wake)

    async def _read_settled(self, namespace: str, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run the read `work`; if the namespace has expired leases, settle them and re-read."""

        def checked(conn: sqlite3.Connection) -> tuple[T, bool]:
            lapsed = conn.execute(
                f"SELECT 1 FROM jobs {_EXPIRED_LEASES} AND namespace = ? LIMIT 1",
                (now_us(), namespace),
            ).fetchone()
            return work(conn), lapsed is not None

        result, lapsed = await self._engine.read(checked)
        if not lapsed:
            return result
        scope = _Scope(namespace, None, ())
        while await self._write(lambda conn, effects: _settle(conn, effects, now_us(), scope)):
            continue
        return await self._engine.read(work)


def _capped_counts(
    conn: sqlite3.Connection, namespace: str, names: Sequence[str], limit: int, now: int
) -> tuple[list[tuple[str, int, int, int]], dict[str, set[int]]]:
    """`capped_counts` of the queues `names`: each (queue, stored state) counted over at
    most `limit` entries of an index range."""
    stored: list[tuple[str, int, int, int]] = []
    due: list[tuple[str, int, int]] = []
    for name in names:
        for state in STORED_STATES:
            stored += (
                (name, state, int(priority), int(count))
                for priority, count in conn.execute(
                    "SELECT priority, COUNT(*) FROM (SELECT priority FROM jobs"
                    " INDEXED BY jobs_by_queue WHERE namespace = ? AND queue = ? AND state = ?"
                    " LIMIT ?) GROUP BY priority",
                    (namespace, name, state, limit),
                )
            )
        due += (
            (name, int(priority), int(count))
            for priority, count in conn.execute(
                "SELECT priority, COUNT(*) FROM (SELECT priority FROM jobs"
                " INDEXED BY jobs_scheduled WHERE namespace = ? AND queue = ? AND state = 1"
                " AND run_after <= ? LIMIT ?) GROUP BY priority",
                (namespace, name, now, limit),
            )
        )
    return capped_counts(stored, due, limit)


# -- transaction steps (run on the writer thread) -----------------------------------


class _Scope:
    """Which jobs a settle or a lease looks at: None matches every value."""

    def __init__(self, namespace: str | None, queue: str | None, kinds: tuple[str, ...]) -> None:
        self.namespace = namespace
        self.queue = queue
        self.kinds = kinds

    def sql(self) -> tuple[str, list[object]]:
        """The ` AND ...` conditions of the scope and their parameters."""
        sql, params = "", list[object]()
        if self.namespace is not None:
            sql += " AND namespace = ?"
            params.append(self.namespace)
        if self.queue == BUILTIN_QUEUE and self.namespace is None:
            # A literal lets SQLite use the partial index of built-in jobs.
            sql += f" AND queue = '{BUILTIN_QUEUE}'"
        elif self.queue is not None:
            sql += " AND queue = ?"
            params.append(self.queue)
        if self.kinds:
            sql += f" AND kind IN ({_marks(self.kinds)})"
            params.extend(self.kinds)
        return sql, params


def _fetch(conn: sqlite3.Connection, namespace: str, job_id: str) -> JobRow | None:
    row = conn.execute(_SELECT_JOB, (namespace, job_id)).fetchone()
    return JobRow._make(row) if row else None


def _require(conn: sqlite3.Connection, namespace: str, job_id: str) -> JobRow:
    row = _fetch(conn, namespace, job_id)
    if row is None:
        raise job_not_found(job_id)
    return row


def _key_holder(conn: sqlite3.Connection, namespace: str, key: str) -> JobRow | None:
    row = conn.execute(_SELECT_KEY_HOLDER, (namespace, key)).fetchone()
    return JobRow._make(row) if row else None


def _change_position(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'job_changes'").fetchone()
    return int(row[0]) if row else 0


def _state_condition(state: int, now: int) -> tuple[str, list[object]]:
    """SQL selecting jobs whose reported state at `now` is `state`."""
    if state == SCHEDULED:
        return "state = 1 AND run_after > ?", [now]
    if state == AVAILABLE:
        return "(state = 2 OR (state = 1 AND run_after <= ?))", [now]
    return "state = ?", [state]


def _record(
    conn: sqlite3.Connection,
    effects: Effects,
    row: JobRow,
    previous: int,
    now: int,
    *,
    error: str | None = None,
    result: bytes | None = None,
) -> None:
    """Append the change to `row`'s current state to the log; note whom to wake."""
    change = change_of(row, previous, now, error=error, result=result)
    conn.execute(_INSERT_CHANGE, (row.namespace, *change[1:]))
    effects.note(row)


def _record_all(
    conn: sqlite3.Connection, effects: Effects, rows: Sequence[JobRow], previous: int, now: int
) -> None:
    """`_record` every row of `rows` (each changed from `previous`), in their order."""
    conn.executemany(
        _INSERT_CHANGE,
        [(row.namespace, *change_of(row, previous, now)[1:]) for row in rows],
    )
    for row in rows:
        effects.note(row)


def _enqueue_one(
    conn: sqlite3.Connection, namespace: str, new: NewJob, now: int, created: list[JobRow]
) -> Enqueued:
    """Insert `new` (appending its row to `created`) unless an unfinished job holds its key."""
    if new.idempotency_key:
        existing = _key_holder(conn, namespace, new.idempotency_key)
        if existing is not None:
            return enqueued_job(job_from_row(existing, now), created=False)
    row = new_row(namespace, new, now)
    # The row keeps seq 0: nothing downstream of an enqueue reads it.
    conn.execute(_INSERT_JOB, row[1:])
    created.append(row)
    return enqueued_job(job_from_row(row, now), created=True)


def _lease(
    conn: sqlite3.Connection,
    effects: Effects,
    scope: _Scope,
    worker_id: str,
    count: int,
    lease_us: int,
) -> LeaseResult:
    now = now_us()
    _settle(conn, effects, now, _Scope(scope.namespace, scope.queue, ()))
    where, params = scope.sql()
    with closing(
        conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 2{where}"
            " ORDER BY priority DESC, seq LIMIT ?",
            [*params, count],
        )
    ) as cursor:
        batch = lease_batch(map(JobRow._make, cursor), worker_id, lease_us, now, count)
    rows = [row for row, _ in batch]
    conn.executemany(
        _LEASE_JOB,
        [(row.attempt, row.lease_id, worker_id, row.lease_expire, now, row.seq) for row in rows],
    )
    _record_all(conn, effects, rows, AVAILABLE, now)
    leased = [LeasedJob(row.namespace, job) for row, job in batch]
    next_due = None if leased else _next_due(conn, now, scope)
    return LeaseResult(leased, next_due)


def _settle(conn: sqlite3.Connection, effects: Effects, now: int, scope: _Scope) -> bool:
    """Promote due SCHEDULED jobs and settle expired leases in `scope`.

    Works on at most SETTLE_BATCH jobs of each kind; returns whether more
    were due than that.
    """
    where, params = scope.sql()
    due = [
        JobRow(*row)
        for row in conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 1 AND run_after <= ?{where}"
            " ORDER BY run_after LIMIT ?",
            [now, *params, SETTLE_BATCH],
        )
    ]
    for row in due:
        row = promoted_row(row, now)
        conn.execute("UPDATE jobs SET state = 2, update_time = ? WHERE seq = ?", (now, row.seq))
        _record(conn, effects, row, SCHEDULED, now)
    expired = [
        JobRow(*row)
        for row in conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs {_EXPIRED_LEASES}{where}"
            " ORDER BY lease_expire LIMIT ?",
            [now, *params, SETTLE_BATCH],
        )
    ]
    for row in expired:
        _store_failure(conn, effects, expired_row(row, now), LEASE_EXPIRED_ERROR)
        effects.note_expired(row)
    return len(due) == SETTLE_BATCH or len(expired) == SETTLE_BATCH


def _settle_job(conn: sqlite3.Connection, effects: Effects, namespace: str, job_id: str) -> JobRow:
    """Settle one job's expired lease (if it still is) and return the job's row."""
    now = now_us()
    row = _require(conn, namespace, job_id)
    if lease_lapsed(row, now):
        row = _store_failure(conn, effects, expired_row(row, now), LEASE_EXPIRED_ERROR)
        effects.note_expired(row)
    return row


def _store_failure(conn: sqlite3.Connection, effects: Effects, row: JobRow, error: str) -> JobRow:
    """Write `row` as a failed attempt left it (see `failed_row`) and log the change."""
    conn.execute(
        "UPDATE jobs SET state = ?, run_after = ?, errors = ?, update_time = ?, finish_time = ?,"
        " lease_id = NULL, worker_id = NULL, lease_expire = NULL WHERE seq = ?",
        (row.state, row.run_after, row.errors, row.update_time, row.finish_time, row.seq),
    )
    _record(conn, effects, row, RUNNING, row.update_time, error=error)
    return row


def _next_due(conn: sqlite3.Connection, now: int, scope: _Scope) -> int | None:
    """The earliest future run_after or lease expiry in `scope`."""
    where, params = scope.sql()
    times = [
        conn.execute(
            f"SELECT {column} FROM jobs WHERE state = {state} AND {column} > ?{where}"
            f" ORDER BY {column} LIMIT 1",
            [now, *params],
        ).fetchone()
        for state, column in ((SCHEDULED, "run_after"), (RUNNING, "lease_expire"))
    ]
    found = [int(row[0]) for row in times if row is not None]
    return min(found) if found else None
