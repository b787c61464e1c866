"""The job queue in PostgreSQL, one queue shared by every replica over a schema.

Layout as on SQLite: `jobs` (one row per job; `seq`, an identity column, is
the enqueue sequence) and the `job_changes` log. The transitions (what a
lease, a failure, an expiry or a retry makes of a row) are decided in
stores.jobs; this module reads, locks and writes rows.

Claiming. A lease first settles its queue (promotes SCHEDULED jobs whose
run_after came, settles expired leases), then claims with
`SELECT ... WHERE state = 2 ... ORDER BY priority DESC, seq LIMIT n
FOR UPDATE SKIP LOCKED` (`claim_query`), an index scan of the partial index
`jobs_available (namespace, queue, priority DESC, seq) WHERE state = 2`. A
row another replica is claiming is skipped rather than waited for, and a row
is re-checked once locked, so no job is leased twice; FIFO inside a priority
is by `seq`, never by a clock. A job whose run_after has not come is stored
SCHEDULED, outside that index, so it never blocks a runnable one. Settling
uses SKIP LOCKED as well, so leasers and sweepers of every replica share the
work instead of queueing behind each other.

The change log in commit order. Watchers continue after the last change id
they saw, so a change must never become visible with an id below one
already visible: with ids from a sequence, a transaction that took id 10
and commits after the one that took id 11 would be skipped by a watcher
that read 11 in between. Every transaction that logs changes therefore
takes its ids last, just before COMMIT, from the single row of
`job_change_counter` (`UPDATE ... SET last_change_id = last_change_id + n`).
The row lock is held until the commit, so the next writer gets its ids only
after this one committed: ids are gapless and increase in commit order, and
the counter, read in the same snapshot as the log, is a position no later
change can fall below. The serialised section is one statement (it writes
the transaction's job rows, takes the ids and inserts the log) and the
commit itself, which PostgreSQL already serialises for transactions that
NOTIFY; every row lock is taken before it, so it adds no deadlock.

Idempotency keys. A unique partial index holds the keys of unfinished jobs
per namespace; enqueue inserts with `ON CONFLICT ... DO NOTHING`, which
waits for a racing insert of the same key on any replica and then returns
the job that won. Reviving a finished job (retry) is the other way a key
can come back; it holds the namespace's key lock exclusively while keyed
enqueues hold it shared, so it never collides with an insert in flight.
Two batches inserting the same keys in opposite orders at the same moment
can deadlock; PostgreSQL then aborts one, which fails with UNAVAILABLE
(STORE_CONFLICT) and changes nothing, so it can be retried.

Wake-ups use the notifier keys of stores.jobs through `Transaction.notify`:
delivered on this replica after the commit and on the others by
LISTEN/NOTIFY. Timers (run_after, lease expiry) are computed from the
tables, as on SQLite.

Times come from the replica's clock, as on SQLite, so replicas need
synchronised clocks: a skew between two replicas lengthens or shortens
leases and delays by that skew. Text that may hold U+0000 (idempotency keys,
failure messages), which PostgreSQL TEXT cannot store, is stored as UTF-8
BYTEA.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias, TypeVar

from google.protobuf import struct_pb2

from statekeeper.v1 import jobs_pb2
from statekeeper_server.limits import PAGE_BUDGET_BYTES
from statekeeper_server.observability.store_metrics import JobCounts
from statekeeper_server.stores.budget import fill_page
from statekeeper_server.stores.jobs import (
    AVAILABLE,
    BUILTIN_QUEUE,
    CHANGE_COLUMNS,
    JOB_COLUMNS,
    LEASE_EXPIRED_ERROR,
    QUEUE_NAMES_SQL,
    RUNNING,
    SCHEDULED,
    STORED_STATES,
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
    enqueued_off_loop,
    expired_row,
    extended_row,
    failed_row,
    idempotency_key_in_use,
    job_not_found,
    job_off_loop,
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
from statekeeper_server.stores.postgres.engine import PostgresEngine, Transaction
from statekeeper_server.stores.postgres.migrations import fast_compression
from statekeeper_server.stores.postgres.pages import (
    Params,
    framed_octets,
    page_rows,
    within_bytes,
)
from statekeeper_server.timestamps import now_us

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

T = TypeVar("T")
Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

MIGRATIONS = [
    [
        """CREATE TABLE jobs (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            namespace TEXT COLLATE "C" NOT NULL,
            job_id TEXT COLLATE "C" NOT NULL,
            queue TEXT COLLATE "C" NOT NULL,
            kind TEXT COLLATE "C" NOT NULL,
            payload BYTEA NOT NULL,
            priority INTEGER NOT NULL,
            state INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            max_retries INTEGER NOT NULL,
            run_after BIGINT NOT NULL,
            create_time BIGINT NOT NULL,
            update_time BIGINT NOT NULL,
            finish_time BIGINT,
            errors TEXT NOT NULL,
            result BYTEA,
            lease_id TEXT COLLATE "C",
            worker_id TEXT COLLATE "C",
            lease_expire BIGINT,
            idempotency_key BYTEA,
            backoff_base BIGINT NOT NULL,
            backoff_cap BIGINT NOT NULL
        )""",
        "CREATE UNIQUE INDEX jobs_by_id ON jobs (namespace, job_id)",
        "CREATE INDEX jobs_by_namespace ON jobs (namespace, seq)",
        "CREATE INDEX jobs_by_queue ON jobs (namespace, queue, state, priority)",
        "CREATE INDEX jobs_available ON jobs (namespace, queue, priority DESC, seq)"
        " WHERE state = 2",
        f"CREATE INDEX jobs_builtin_available ON jobs (priority DESC, seq)"
        f" WHERE state = 2 AND queue = '{BUILTIN_QUEUE}'",
        "CREATE INDEX jobs_scheduled ON jobs (namespace, queue, run_after) WHERE state = 1",
        "CREATE INDEX jobs_scheduled_due ON jobs (run_after) WHERE state = 1",
        "CREATE INDEX jobs_running ON jobs (namespace, queue, lease_expire) WHERE state = 3",
        "CREATE INDEX jobs_lease_expiry ON jobs (lease_expire) WHERE state = 3",
        "CREATE UNIQUE INDEX jobs_idempotency ON jobs (namespace, idempotency_key)"
        " WHERE idempotency_key IS NOT NULL AND state IN (1, 2, 3)",
        "CREATE INDEX jobs_finished ON jobs (finish_time) WHERE state IN (4, 5, 6)",
        """CREATE TABLE job_changes (
            change_id BIGINT PRIMARY KEY,
            namespace TEXT COLLATE "C" NOT NULL,
            job_id TEXT COLLATE "C" NOT NULL,
            queue TEXT COLLATE "C" NOT NULL,
            kind TEXT COLLATE "C" NOT NULL,
            previous_state INTEGER NOT NULL,
            state INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            change_time BIGINT NOT NULL,
            run_after BIGINT,
            worker_id TEXT COLLATE "C",
            error BYTEA,
            result BYTEA
        )""",
        "CREATE INDEX job_changes_by_namespace ON job_changes (namespace, change_id)",
        "CREATE INDEX job_changes_by_time ON job_changes (change_time)",
        """CREATE TABLE job_change_counter (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            last_change_id BIGINT NOT NULL
        )""",
        "INSERT INTO job_change_counter (id, last_change_id) VALUES (1, 0)",
        """CREATE TABLE job_changes_trimmed (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            through BIGINT NOT NULL
        )""",
    ],
    [
        # The oldest runnable job of a queue, for the metrics, in one index lookup.
        "CREATE INDEX jobs_available_since ON jobs (namespace, queue, run_after) WHERE state = 2",
    ],
    [
        # Large records are compressed with lz4, which costs the database far less CPU.
        fast_compression("jobs", "payload", "result"),
        fast_compression("job_changes", "result"),
    ],
]

SETTLE_BATCH = 1000
PURGE_JOBS_BATCH = 1000
PURGE_CHANGES_BATCH = 5000
MAX_BIGINT = 2**63 - 1

_JOB_TYPES = {
    "seq": "bigint",
    "namespace": "text",
    "job_id": "text",
    "queue": "text",
    "kind": "text",
    "payload": "bytea",
    "priority": "int",
    "state": "int",
    "attempt": "int",
    "max_retries": "int",
    "run_after": "bigint",
    "create_time": "bigint",
    "update_time": "bigint",
    "finish_time": "bigint",
    "errors": "text",
    "result": "bytea",
    "lease_id": "text",
    "worker_id": "text",
    "lease_expire": "bigint",
    "idempotency_key": "bytea",
    "backoff_base": "bigint",
    "backoff_cap": "bigint",
}
_CHANGE_TYPES = {
    "change_id": "bigint",
    "namespace": "text",
    "job_id": "text",
    "queue": "text",
    "kind": "text",
    "previous_state": "int",
    "state": "int",
    "attempt": "int",
    "change_time": "bigint",
    "run_after": "bigint",
    "worker_id": "text",
    "error": "bytea",
    "result": "bytea",
}
_NEW_JOB_COLUMNS = list(JobRow._fields[1:])
_KEY_INDEX = JobRow._fields.index("idempotency_key")
_ERROR_INDEX = ChangeRow._fields.index("error")
_MUTABLE_COLUMNS = [
    "state",
    "attempt",
    "run_after",
    "update_time",
    "finish_time",
    "errors",
    "result",
    "lease_id",
    "worker_id",
    "lease_expire",
]
_KEY_PREDICATE = "idempotency_key IS NOT NULL AND state IN (1, 2, 3)"


def _arrays(columns: Sequence[str], types: dict[str, str], first: int = 1) -> str:
    """`$first::type[], ...`: one array parameter per column."""
    return ", ".join(f"${first + i}::{types[column]}[]" for i, column in enumerate(columns))


_NEW_JOB_LIST = ", ".join(_NEW_JOB_COLUMNS)
_INSERT_JOBS = (
    f"INSERT INTO jobs ({_NEW_JOB_LIST}) SELECT {_NEW_JOB_LIST}"
    f" FROM unnest({_arrays(_NEW_JOB_COLUMNS, _JOB_TYPES)})"
    f" WITH ORDINALITY AS u({_NEW_JOB_LIST}, n) ORDER BY n RETURNING job_id, seq"
)
_INSERT_KEYED_JOB = (
    f"INSERT INTO jobs ({_NEW_JOB_LIST})"
    f" VALUES ({', '.join(f'${i + 1}' for i in range(len(_NEW_JOB_COLUMNS)))})"
    f" ON CONFLICT (namespace, idempotency_key) WHERE {_KEY_PREDICATE} DO NOTHING RETURNING seq"
)
_UPDATED_COLUMNS = ["seq", *_MUTABLE_COLUMNS]
_LOGGED_COLUMNS = ["namespace", *CHANGE_COLUMNS.split(", ")[1:]]
_LOGGED_LIST = ", ".join(_LOGGED_COLUMNS)


def _update_jobs(first: int) -> str:
    """An UPDATE of the mutable columns of jobs by seq, from arrays starting at `$first`."""
    return (
        f"UPDATE jobs AS j SET {', '.join(f'{c} = u.{c}' for c in _MUTABLE_COLUMNS)}"
        f" FROM unnest({_arrays(_UPDATED_COLUMNS, _JOB_TYPES, first)})"
        f" AS u({', '.join(_UPDATED_COLUMNS)}) WHERE j.seq = u.seq"
    )


def _append_changes(*, with_jobs: bool) -> str:
    """Append changes (arrays $1.., namespace first) under the next change ids, after
    writing job rows (arrays following them) when `with_jobs`."""
    stored = f"stored AS ({_update_jobs(len(_LOGGED_COLUMNS) + 1)}), " if with_jobs else ""
    return (
        f"WITH {stored}reserved AS (UPDATE job_change_counter"
        " SET last_change_id = last_change_id + cardinality($1::text[]) WHERE id = 1"
        " RETURNING last_change_id - cardinality($1::text[]) AS before)"
        f" INSERT INTO job_changes (change_id, {_LOGGED_LIST})"
        f" SELECT reserved.before + u.n, {', '.join(f'u.{c}' for c in _LOGGED_COLUMNS)}"
        f" FROM reserved, unnest({_arrays(_LOGGED_COLUMNS, _CHANGE_TYPES)})"
        f" WITH ORDINALITY AS u({_LOGGED_LIST}, n)"
    )


_UPDATE_JOBS = _update_jobs(1)
APPEND_CHANGES = _append_changes(with_jobs=False)
"""Appends changes (one array per column, namespace first) with the next change ids.

Updating the counter row locks it until COMMIT, so no other transaction
takes ids until this one is visible: ids increase in commit order.
"""
_UPDATE_JOBS_AND_APPEND_CHANGES = _append_changes(with_jobs=True)


def key_lock(namespace: str) -> int:
    """The advisory lock guarding the idempotency keys of `namespace` (a signed 64-bit key)."""
    digest = hashlib.blake2b(f"statekeeper job keys {namespace}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class Scope:
    """Which jobs a lease or a settle looks at: None matches every value."""

    namespace: str | None
    queue: str | None
    kinds: tuple[str, ...] = ()

    def conditions(self, params: list[object]) -> str:
        """The ` AND ...` conditions selecting the scope, its parameters appended to `params`."""
        sql = ""
        if self.namespace is not None:
            params.append(self.namespace)
            sql += f" AND namespace = ${len(params)}"
        if self.queue == BUILTIN_QUEUE:
            # A literal lets the planner use the partial index of built-in jobs.
            sql += f" AND queue = '{BUILTIN_QUEUE}'"
        elif self.queue is not None:
            params.append(self.queue)
            sql += f" AND queue = ${len(params)}"
        if self.kinds:
            params.append(list(self.kinds))
            sql += f" AND kind = ANY(${len(params)}::text[])"
        return sql


JOB_BYTES = framed_octets(
    "octet_length(payload) + octet_length(errors) + coalesce(octet_length(result), 0)"
)
"""Close to the framed size of a stored job as the API returns it (its payload, result and
errors; `lease_batch` and listings then count exactly), read without fetching the values."""
CHANGE_BYTES = framed_octets(
    "16 + octet_length(job_id) + octet_length(queue) + octet_length(kind)"
    " + coalesce(octet_length(worker_id), 0) + coalesce(octet_length(result), 0)"
    " + coalesce(octet_length(error), 0)"
)
"""Close to (never above) the framed size of a stored change as a watch sends it: its text
and bytes, and the least its numbers and tags take."""


def claim_query(scope: Scope, count: int) -> tuple[str, list[object]]:
    """The statement locking the next `count` AVAILABLE jobs of `scope` for a lease.

    Highest priority first, then lowest seq; rows other transactions hold
    are skipped, so concurrent claims on any replica never take one job twice.
    Only the jobs that may fit in a lease batch (PAGE_BUDGET_BYTES, by their
    stored sizes) are returned; the others stay locked until the lease commits.
    """
    params: list[object] = []
    where = scope.conditions(params)
    params += [count, PAGE_BUDGET_BYTES]
    claim = (
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 2{where}"
        f" ORDER BY priority DESC, seq LIMIT ${len(params) - 1} FOR UPDATE SKIP LOCKED"
    )
    sql = within_bytes(
        claim,
        columns=JOB_COLUMNS,
        size=JOB_BYTES,
        order="priority DESC, seq",
        max_count=f"${len(params) - 1}",
        max_bytes=f"${len(params)}",
    )
    return sql, params


class PostgresJobStore:
    """JobStore on a PostgresEngine (see stores.jobs for guarantees, this module for how)."""

    def __init__(self, engine: PostgresEngine) -> None:
        self._engine = engine

    # -- writes ----------------------------------------------------------------

    async def enqueue(self, namespace: str, jobs: Sequence[NewJob]) -> list[Enqueued]:
        """Insert `jobs` in one transaction, returning existing ones for held keys."""

        async def work(write: _Write) -> list[Enqueued]:
            now = now_us()
            if any(new.idempotency_key for new in jobs):
                await write.conn.execute(
                    "SELECT pg_advisory_xact_lock_shared($1)", key_lock(namespace)
                )
            enqueued: list[Enqueued] = []
            for keyed, group in itertools.groupby(jobs, lambda new: bool(new.idempotency_key)):
                if keyed:
                    for new in group:
                        enqueued.append(await _enqueue_keyed(write, namespace, new, now))
                else:
                    rows = await _new_rows(namespace, list(group), now)
                    enqueued += await _insert(write, rows, now)
            check_enqueue_response(enqueued)
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
        scope = Scope(namespace, queue, tuple(kinds))
        return await self._write(lambda write: _lease(write, scope, worker_id, count, lease_us))

    async def lease_builtin(self, worker_id: str, count: int, lease_us: int) -> LeaseResult:
        """Claim runnable built-in jobs of every namespace."""
        scope = Scope(None, BUILTIN_QUEUE)
        return await self._write(lambda write: _lease(write, scope, worker_id, count, lease_us))

    async def heartbeat(
        self, namespace: str, job_id: str, lease_id: str, lease_us: int
    ) -> HeartbeatResult:
        """Extend a live lease; report a cancellation made under it."""

        async def work(write: _Write) -> HeartbeatResult:
            row = await _require(write.conn, namespace, job_id)
            extended = extended_row(row, lease_id, lease_us, now_us())
            if extended is None:
                return HeartbeatResult(row_lease(row), cancelled=True)
            write.store([extended])
            return HeartbeatResult(row_lease(extended), cancelled=False)

        return await self._write(work)

    async def complete(
        self, namespace: str, job_id: str, lease_id: str, result: struct_pb2.Struct
    ) -> jobs_pb2.Job:
        """SUCCEEDED with `result` under a live lease."""

        async def work(write: _Write) -> jobs_pb2.Job:
            now = now_us()
            row = await _require(write.conn, namespace, job_id)
            if completion_repeated(row, lease_id):
                return await job_off_loop(row, now)
            check_lease(row, lease_id, now)
            data = await asyncio.to_thread(result.SerializeToString)
            row = completed_row(row, data, now)
            write.store([row])
            write.record(row, RUNNING, now, result=data)
            return await job_off_loop(row, now)

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

        async def work(write: _Write) -> jobs_pb2.Job:
            now = now_us()
            row = await _require(write.conn, namespace, job_id)
            check_lease(row, lease_id, now)
            outcome = after_failure(
                row, now, retryable=retryable, retry_delay_us=retry_delay_us, rand=random.random()
            )
            row = failed_row(row, outcome, error, now)
            write.store([row])
            write.record(row, RUNNING, now, error=error)
            return await job_off_loop(row, now)

        return await self._write(work)

    async def cancel(self, namespace: str, job_id: str) -> jobs_pb2.Job:
        """CANCELLED; a running job keeps its lease id so its heartbeat learns why."""

        async def work(write: _Write) -> jobs_pb2.Job:
            now = now_us()
            row = await _require(write.conn, namespace, job_id)
            if not cancel_allowed(row):
                return await job_off_loop(row, now)
            previous = reported_state(row.state, row.run_after, now)
            row = cancelled_row(row, now)
            write.store([row])
            write.record(row, previous, now)
            return await job_off_loop(row, now)

        return await self._write(work)

    async def retry(self, namespace: str, job_id: str, delay_us: int) -> jobs_pb2.Job:
        """A DEAD or CANCELLED job back to its queue with attempt 0."""

        async def work(write: _Write) -> jobs_pb2.Job:
            now = now_us()
            row = await _require(write.conn, namespace, job_id)
            check_retry_allowed(row, now)
            if row.idempotency_key is not None:
                # No keyed enqueue is in flight while this is held (see the module doc).
                await write.conn.execute("SELECT pg_advisory_xact_lock($1)", key_lock(namespace))
                holder = await _key_holder(write.conn, namespace, row.idempotency_key)
                if holder is not None:
                    raise idempotency_key_in_use(row, holder.job_id)
            previous = row.state
            row = revived_row(row, delay_us, now)
            write.store([row])
            write.record(row, previous, now)
            return await job_off_loop(row, now)

        return await self._write(work)

    async def metrics_counts(self) -> JobCounts:
        """Jobs by namespace, queue and stored state, and since when each queue's
        longest-runnable job could run; stream reads (see JobStore)."""
        now = now_us()
        counts = [
            (str(r[0]), str(r[1]), int(r[2]), int(r[3]))
            for r in await self._engine.fetch(
                "SELECT namespace, queue, state, count(*) FROM jobs"
                " GROUP BY namespace, queue, state",
                stream=True,
            )
        ]
        waiting = sorted({(ns, queue) for ns, queue, state, _ in counts if state in (1, 2)})
        if not waiting:
            return JobCounts(counts, [])
        rows = await self._engine.fetch(
            "SELECT q.namespace, q.queue,"
            " (SELECT min(run_after) FROM jobs j WHERE j.state = 2"
            "   AND j.namespace = q.namespace AND j.queue = q.queue),"
            " (SELECT min(run_after) FROM jobs j WHERE j.state = 1"
            "   AND j.namespace = q.namespace AND j.queue = q.queue)"
            " FROM unnest($1::text[], $2::text[]) AS q(namespace, queue)",
            [ns for ns, _ in waiting],
            [queue for _, queue in waiting],
            stream=True,
        )
        oldest: list[tuple[str, str, int]] = []
        for row in rows:
            since = runnable_since(row[2], row[3], now)
            if since is not None:
                oldest.append((str(row[0]), str(row[1]), since))
        return JobCounts(counts, oldest)

    async def sweep(self) -> SweepResult:
        """Promote due jobs and settle expired leases of every queue."""

        async def work(write: _Write) -> SweepResult:
            now = now_us()
            scope = Scope(None, None)
            if await _settle(write, now, scope):
                return SweepResult(more=True, next_due_us=None)
            return SweepResult(more=False, next_due_us=await _next_due(write.conn, now, scope))

        return await self._write(work)

    async def purge(self, finished_before_us: int, changes_before_us: int) -> int:
        """Delete, in bounded batches, finished jobs and changes older than the cutoffs."""
        deleted = 0
        while True:
            count, more = await self._purge_batch(finished_before_us, changes_before_us)
            deleted += count
            if not more:
                return deleted

    # -- reads -----------------------------------------------------------------

    async def get(self, namespace: str, job_id: str) -> jobs_pb2.Job:
        """The job now; an expired lease is settled first."""
        record = await self._engine.fetchrow(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE namespace = $1 AND job_id = $2",
            namespace,
            job_id,
        )
        if record is None:
            raise job_not_found(job_id)
        row = _job(record)
        if lease_lapsed(row, now_us()):
            row = await self._write(lambda write: _settle_job(write, namespace, job_id))
        return await job_off_loop(row, now_us())

    async def list(
        self, namespace: str, where: JobFilter, page_size: int, page_token: str
    ) -> JobPage:
        """A page of jobs after the token's seq, filtered by queue, kind and state; the
        database returns only the rows of the page (by their stored sizes)."""
        filters = list_filters(where)
        after = decode_page_token(page_token, filters, int) or 0
        await self._settle_lapsed(namespace)
        now = now_us()
        params: list[object] = [namespace, after]
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE namespace = $1 AND seq > $2"
        if where.queue:
            params.append(where.queue)
            sql += f" AND queue = ${len(params)}"
        if where.kind:
            params.append(where.kind)
            sql += f" AND kind = ${len(params)}"
        if where.state:
            sql += " AND " + _state_condition(where.state, now, params)
        query = Params(*params)
        sql += f" ORDER BY seq LIMIT {query.add(page_size + 1)}"
        records = await self._engine.fetch(
            within_bytes(
                sql,
                columns=JOB_COLUMNS,
                size=JOB_BYTES,
                order="seq",
                max_count=query.add(page_size),
                max_bytes=query.add(PAGE_BUDGET_BYTES),
            ),
            *query.values,
        )
        page, more = page_rows(
            records, lambda record: sized_job(_job(record), now), message_size, page_size
        )
        return job_page(page, more, filters)

    async def stats(
        self, namespace: str, queue: str, page_size: int, page_token: str, count_limit: int = 0
    ) -> StatsPage:
        """Counts per queue, reported state and priority (each stopping at `count_limit`
        when set), and oldest available age, of a page of queues after the token's queue."""
        filters = stats_filters(queue)
        after = decode_page_token(page_token, filters, str) or ""
        await self._settle_lapsed(namespace)
        now = now_us()
        capped: dict[str, set[int]] = {}
        async with self._engine.transaction(isolation="repeatable_read", readonly=True) as tx:
            if queue:
                names = [queue] if queue > after else []
            else:
                sql = QUEUE_NAMES_SQL.format(ns="$1", after="$2", limit="$3")
                names = [r[0] for r in await tx.conn.fetch(sql, namespace, after, page_size + 1)]
            more, names = len(names) > page_size, names[:page_size]
            if not names:
                return StatsPage([], "")
            if count_limit:
                stored = await tx.conn.fetch(
                    "SELECT q.queue, s.state, c.priority, count(*)"
                    " FROM unnest($2::text[]) AS q (queue)"
                    " CROSS JOIN unnest($3::int[]) AS s (state)"
                    " CROSS JOIN LATERAL (SELECT priority FROM jobs WHERE namespace = $1"
                    " AND queue = q.queue AND state = s.state LIMIT $4) AS c"
                    " GROUP BY 1, 2, 3",
                    namespace,
                    names,
                    list(STORED_STATES),
                    count_limit,
                )
                due = await tx.conn.fetch(
                    "SELECT q.queue, c.priority, count(*) FROM unnest($2::text[]) AS q (queue)"
                    " CROSS JOIN LATERAL (SELECT priority FROM jobs WHERE namespace = $1"
                    " AND queue = q.queue AND state = 1 AND run_after <= $4 LIMIT $3) AS c"
                    " GROUP BY 1, 2",
                    namespace,
                    names,
                    count_limit,
                    now,
                )
                counts, capped = capped_counts(
                    [(r[0], r[1], r[2], r[3]) for r in stored],
                    [(r[0], r[1], r[2]) for r in due],
                    count_limit,
                )
            else:
                rows = await tx.conn.fetch(
                    "SELECT queue, CASE WHEN state = 1 AND run_after <= $1 THEN 2 ELSE state END"
                    " AS s, priority, count(*) FROM jobs"
                    " WHERE namespace = $2 AND queue >= $3 AND queue <= $4"
                    " GROUP BY queue, s, priority ORDER BY queue, s, priority",
                    now,
                    namespace,
                    names[0],
                    names[-1],
                )
                counts = [(r[0], r[1], r[2], r[3]) for r in rows]
            earliest = await tx.conn.fetch(
                "SELECT q.queue,"
                " (SELECT min(run_after) FROM jobs WHERE namespace = $1 AND queue = q.queue"
                " AND state = 2),"
                " (SELECT min(run_after) FROM jobs WHERE namespace = $1 AND queue = q.queue"
                " AND state = 1)"
                " FROM unnest($2::text[]) AS q (queue)",
                namespace,
                names,
            )
        oldest = {
            r[0]: since for r in earliest if (since := runnable_since(r[1], r[2], now)) is not None
        }
        return stats_page(queue_stats(queue, counts, oldest, now, capped), more, page_size, filters)

    async def change_position(self) -> int:
        """The newest change id committed so far."""
        return int(
            await self._engine.fetchval(
                "SELECT last_change_id FROM job_change_counter WHERE id = 1"
            )
        )

    async def changes(
        self,
        namespace: str,
        where: ChangeFilter,
        after: int,
        limit: int,
        max_bytes: int = PAGE_BUDGET_BYTES,
    ) -> ChangePage:
        """Matching changes after `after` up to the committed counter (the database
        returns only those of the page), and how far read.

        The counter and the log are read in one snapshot; every id up to the
        counter is committed (see the module doc), so `through` never passes
        a change that could still appear. A watch's read: it takes one of the
        engine's stream slots.
        """
        async with self._engine.transaction(
            isolation="repeatable_read", readonly=True, stream=True
        ) as tx:
            head = await tx.conn.fetchrow(
                "SELECT c.last_change_id, coalesce(t.through, 0) FROM job_change_counter c"
                " LEFT JOIN job_changes_trimmed t ON t.id = 1 WHERE c.id = 1"
            )
            assert head is not None
            position, trimmed_through = int(head[0]), int(head[1])
            if 0 < after < trimmed_through:
                raise changes_trimmed(after, trimmed_through)
            params: list[object] = [namespace, min(after, MAX_BIGINT), position]
            sql = (
                f"SELECT {CHANGE_COLUMNS} FROM job_changes"
                " WHERE namespace = $1 AND change_id > $2 AND change_id <= $3"
            )
            if where.queue:
                params.append(where.queue)
                sql += f" AND queue = ${len(params)}"
            if where.kind:
                params.append(where.kind)
                sql += f" AND kind = ${len(params)}"
            if where.job_ids:
                params.append(list(where.job_ids))
                sql += f" AND job_id = ANY(${len(params)}::text[])"
            query = Params(*params)
            sql += f" ORDER BY change_id LIMIT {query.add(limit + 1)}"
            records = await tx.conn.fetch(
                within_bytes(
                    sql,
                    columns=CHANGE_COLUMNS,
                    size=CHANGE_BYTES,
                    order="change_id",
                    max_count=query.add(limit),
                    max_bytes=query.add(max_bytes),
                ),
                *query.values,
            )
        # The statement cuts by an estimate; the page is cut exactly here.
        page, cut = fill_page(
            (sized_change(_change(record)) for record in records),
            message_size,
            max_count=limit,
            max_bytes=max_bytes,
        )
        more = cut or (bool(records) and bool(records[-1]["followed"]))
        return change_page(page, more, position, after)

    # -- internals ---------------------------------------------------------------

    async def _write(self, work: Callable[[_Write], Awaitable[T]]) -> T:
        """Run `work` in a transaction; log its changes last; wake waiters after COMMIT."""
        async with self._engine.transaction() as tx:
            write = _Write(tx)
            result = await work(write)
            await write.finish()
        write.effects.committed()
        return result

    async def _purge_batch(
        self, finished_before_us: int, changes_before_us: int
    ) -> tuple[int, bool]:
        """One bounded purge; how many jobs it deleted and whether more may be due."""
        async with self._engine.transaction() as tx:
            jobs = int(
                await tx.conn.fetchval(
                    "WITH gone AS (DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs"
                    " WHERE state IN (4, 5, 6) AND finish_time < $1 LIMIT $2"
                    " FOR UPDATE SKIP LOCKED) RETURNING 1) SELECT count(*) FROM gone",
                    finished_before_us,
                    PURGE_JOBS_BATCH,
                )
            )
            gone = await tx.conn.fetchrow(
                "WITH gone AS (DELETE FROM job_changes WHERE change_id IN (SELECT change_id"
                " FROM job_changes WHERE change_time < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
                " RETURNING change_id) SELECT count(*), max(change_id) FROM gone",
                changes_before_us,
                PURGE_CHANGES_BATCH,
            )
            assert gone is not None
            changes, through = int(gone[0]), gone[1]
            if changes:
                await tx.conn.execute(
                    "INSERT INTO job_changes_trimmed (id, through) VALUES (1, $1)"
                    " ON CONFLICT (id) DO UPDATE"
                    " SET through = GREATEST(job_changes_trimmed.through, excluded.through)",
                    through,
                )
        return jobs, jobs == PURGE_JOBS_BATCH or changes == PURGE_CHANGES_BATCH

    async def _settle_lapsed(self, namespace: str) -> None:
        """Settle the namespace's expired leases (and due jobs) before a listing reads it."""
        lapsed = await self._engine.fetchval(
            "SELECT true FROM jobs WHERE state = 3 AND lease_expire <= $1 AND namespace = $2"
            " LIMIT 1",
            now_us(),
            namespace,
        )
        if not lapsed:
            return
        scope = Scope(namespace, None)
        while await self._write(lambda write: _settle(write, now_us(), scope)):
            continue


class _Write:
    """One write transaction: its connection, the changes it logs and whom it wakes."""

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx
        self.conn: Connection = tx.conn
        self.effects = Effects()
        self._changes: list[tuple[str, ChangeRow]] = []
        self._rows: dict[int, JobRow] = {}

    def record(
        self,
        row: JobRow,
        previous: int,
        now: int,
        *,
        error: str | None = None,
        result: bytes | None = None,
    ) -> None:
        """Log the change to `row`'s current state (written by `finish`)."""
        change = change_of(row, previous, now, error=error, result=result)
        self._changes.append((row.namespace, change))
        self.effects.note(row)

    def store(self, rows: Sequence[JobRow]) -> None:
        """Have the mutable columns of `rows` (locked by this transaction) written.

        They are written with the change log by `finish`, or by `flush` when
        this transaction must read them first.
        """
        for row in rows:
            self._rows[row.seq] = row

    async def flush(self) -> None:
        """Write the rows stored so far."""
        if self._rows:
            await self.conn.execute(_UPDATE_JOBS, *self._take_rows())

    async def finish(self) -> None:
        """Ask for the wake-ups, then write the rows, take change ids and append the
        log in one statement, just before COMMIT."""
        for key in self.effects.wake_keys():
            await self.tx.notify(key)
        if not self._changes:
            await self.flush()
            return
        changes = _columns(
            [[namespace, *_change_values(change)[1:]] for namespace, change in self._changes]
        )
        if self._rows:
            await self.conn.execute(_UPDATE_JOBS_AND_APPEND_CHANGES, *changes, *self._take_rows())
        else:
            await self.conn.execute(APPEND_CHANGES, *changes)

    def _take_rows(self) -> list[list[object]]:
        """The stored rows' columns as arrays, forgetting the rows."""
        rows = [[getattr(row, c) for c in _UPDATED_COLUMNS] for row in self._rows.values()]
        self._rows.clear()
        return _columns(rows)


# -- transaction steps ------------------------------------------------------------


def _columns(rows: Sequence[Sequence[object]]) -> list[list[object]]:
    """The values of `rows` column by column (the arrays an `unnest` insert takes)."""
    return [list(column) for column in zip(*rows, strict=True)]


def _job(record: asyncpg.Record) -> JobRow:
    return _decoded(record, JobRow, "idempotency_key")


def _job_values(row: JobRow) -> list[object]:
    """The stored values of `row` in column order (the key as UTF-8)."""
    return _stored(row, _KEY_INDEX)


def _change(record: asyncpg.Record) -> ChangeRow:
    return _decoded(record, ChangeRow, "error")


def _change_values(change: ChangeRow) -> list[object]:
    """The stored values of `change` in column order (the error as UTF-8)."""
    return _stored(change, _ERROR_INDEX)


def _decoded(record: asyncpg.Record, row_type: type[T], text_field: str) -> T:
    """A row (a named tuple) from the columns of `record` named after its fields, its one
    text column stored as bytes decoded from UTF-8."""
    values = {name: record[name] for name in row_type._fields}  # type: ignore[attr-defined]
    stored = values[text_field]
    values[text_field] = None if stored is None else stored.decode()
    return row_type(**values)


def _stored(row: tuple[object, ...], text_index: int) -> list[object]:
    """The values of `row` to store, its one text column at `text_index` as UTF-8."""
    values = list(row)
    text = values[text_index]
    values[text_index] = None if text is None else str(text).encode()
    return values


async def _require(conn: Connection, namespace: str, job_id: str) -> JobRow:
    """The job's row, locked until the transaction ends; NotFound if absent."""
    record = await conn.fetchrow(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE namespace = $1 AND job_id = $2 FOR UPDATE",
        namespace,
        job_id,
    )
    if record is None:
        raise job_not_found(job_id)
    return _job(record)


async def _key_holder(conn: Connection, namespace: str, key: str) -> JobRow | None:
    record = await conn.fetchrow(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE namespace = $1 AND idempotency_key = $2"
        f" AND {_KEY_PREDICATE}",
        namespace,
        key.encode(),
    )
    return None if record is None else _job(record)


def _state_condition(state: int, now: int, params: list[object]) -> str:
    """SQL selecting jobs whose reported state at `now` is `state`."""
    if state == SCHEDULED:
        params.append(now)
        return f"state = 1 AND run_after > ${len(params)}"
    if state == AVAILABLE:
        params.append(now)
        return f"(state = 2 OR (state = 1 AND run_after <= ${len(params)}))"
    params.append(state)
    return f"state = ${len(params)}"


async def _new_rows(namespace: str, jobs: Sequence[NewJob], now: int) -> list[JobRow]:
    """`new_row` of each job, on a worker thread: each encodes its payload, up to a
    megabyte, and the thread costs little beside the statement's round trip."""
    return await asyncio.to_thread(lambda: [new_row(namespace, new, now) for new in jobs])


async def _insert(write: _Write, rows: Sequence[JobRow], now: int) -> list[Enqueued]:
    """Insert new jobs without keys, in order, in one statement."""
    columns = _columns([_job_values(row)[1:] for row in rows])
    seqs = {
        record["job_id"]: record["seq"] for record in await write.conn.fetch(_INSERT_JOBS, *columns)
    }
    enqueued = []
    for row in rows:
        row = row._replace(seq=seqs[row.job_id])
        write.record(row, jobs_pb2.JOB_STATE_UNSPECIFIED, now)
        enqueued.append(await enqueued_off_loop(row, now, created=True))
    return enqueued


async def _enqueue_keyed(write: _Write, namespace: str, new: NewJob, now: int) -> Enqueued:
    """Insert a job with an idempotency key, or return the unfinished job holding the key."""
    while True:
        [row] = await _new_rows(namespace, [new], now)
        seq = await write.conn.fetchval(_INSERT_KEYED_JOB, *_job_values(row)[1:])
        if seq is not None:
            row = row._replace(seq=seq)
            write.record(row, jobs_pb2.JOB_STATE_UNSPECIFIED, now)
            return await enqueued_off_loop(row, now, created=True)
        holder = await _key_holder(write.conn, namespace, new.idempotency_key)
        if holder is not None:
            return await enqueued_off_loop(holder, now, created=False)
        # The holder finished between the insert and the read: the key is free again.


async def _lease(
    write: _Write, scope: Scope, worker_id: str, count: int, lease_us: int
) -> LeaseResult:
    now = now_us()
    await _settle(write, now, Scope(scope.namespace, scope.queue))
    await write.flush()
    sql, params = claim_query(scope, count)
    records = await write.conn.fetch(sql, *params)
    claimed = [_job(record) for record in records]
    batch = lease_batch(claimed, worker_id, lease_us, now, count)
    rows = [row for row, _ in batch]
    write.store(rows)
    for row in rows:
        write.record(row, AVAILABLE, now)
    if len(batch) < len(claimed) or (records and records[-1]["followed"]):
        # Jobs were locked but left AVAILABLE: wake the leasers that skipped them.
        write.effects.ready_queues.add((claimed[0].namespace, claimed[0].queue))
    leased = [LeasedJob(row.namespace, job) for row, job in batch]
    next_due = None if leased else await _next_due(write.conn, now, scope)
    return LeaseResult(leased, next_due)


async def _settle(write: _Write, now: int, scope: Scope) -> bool:
    """Promote due SCHEDULED jobs and settle expired leases in `scope`.

    Works on at most SETTLE_BATCH jobs of each kind, skipping jobs other
    transactions hold; returns whether more were due than that.
    """
    params: list[object] = [now]
    where = scope.conditions(params)
    due = await write.conn.fetch(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 1 AND run_after <= $1{where}"
        f" ORDER BY run_after LIMIT {SETTLE_BATCH} FOR UPDATE SKIP LOCKED",
        *params,
    )
    expired = await write.conn.fetch(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 3 AND lease_expire <= $1{where}"
        f" ORDER BY lease_expire LIMIT {SETTLE_BATCH} FOR UPDATE SKIP LOCKED",
        *params,
    )
    promoted = [promoted_row(_job(record), now) for record in due]
    settled = [expired_row(_job(record), now) for record in expired]
    write.store(promoted + settled)
    for row in promoted:
        write.record(row, SCHEDULED, now)
    for row in settled:
        write.record(row, RUNNING, now, error=LEASE_EXPIRED_ERROR)
        write.effects.note_expired(row)
    return len(due) == SETTLE_BATCH or len(expired) == SETTLE_BATCH


async def _settle_job(write: _Write, namespace: str, job_id: str) -> JobRow:
    """Settle one job's expired lease (if it still is) and return the job's row."""
    now = now_us()
    row = await _require(write.conn, namespace, job_id)
    if lease_lapsed(row, now):
        row = expired_row(row, now)
        write.store([row])
        write.record(row, RUNNING, now, error=LEASE_EXPIRED_ERROR)
        write.effects.note_expired(row)
    return row


async def _next_due(conn: Connection, now: int, scope: Scope) -> int | None:
    """The earliest future run_after or lease expiry in `scope`."""
    params: list[object] = [now]
    where = scope.conditions(params)
    record = await conn.fetchrow(
        f"SELECT (SELECT run_after FROM jobs WHERE state = 1 AND run_after > $1{where}"
        " ORDER BY run_after LIMIT 1),"
        f" (SELECT lease_expire FROM jobs WHERE state = 3 AND lease_expire > $1{where}"
        " ORDER BY lease_expire LIMIT 1)",
        *params,
    )
    assert record is not None
    found = [int(value) for value in record if value is not None]
    return min(found) if found else None
