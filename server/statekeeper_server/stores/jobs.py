"""The job queue interface, and the rules every backend shares.

Backends keep the SQL; this module keeps what does not depend on a
database: the records a backend returns, the state machine's decisions
(what a failure, an expired lease or a retry leads to), the backoff with
jitter, the errors, the notifier keys and the decoding of stored rows.

States as stored: a waiting job is stored SCHEDULED or AVAILABLE depending
on its `run_after` when it was written, and is *reported* AVAILABLE as soon
as `run_after` has passed, whether or not a sweep has promoted it yet. A
RUNNING job whose lease has expired is settled (put back, or DEAD) by the
next lease of its queue, the next read that meets it, or the sweeper.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message

from statekeeper.v1 import jobs_pb2
from statekeeper_server.errors import DataLoss, FailedPrecondition, NotFound, OutOfRange, TooLarge
from statekeeper_server.limits import MAX_JOB_ERROR_BYTES, PAGE_BUDGET_BYTES, RESPONSE_BUDGET_BYTES
from statekeeper_server.observability import store_metrics
from statekeeper_server.observability.store_metrics import JobCounts
from statekeeper_server.offload import off_loop_if_large
from statekeeper_server.piecewise import merge_in_pieces
from statekeeper_server.stores.budget import fill_page, framed_size
from statekeeper_server.stores.paging import encode_page_token
from statekeeper_server.timestamps import to_timestamp
from statekeeper_server.uuid7 import uuid7
from statekeeper_server.validation import clip_utf8

SCHEDULED = jobs_pb2.JOB_STATE_SCHEDULED
AVAILABLE = jobs_pb2.JOB_STATE_AVAILABLE
RUNNING = jobs_pb2.JOB_STATE_RUNNING
SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED
DEAD = jobs_pb2.JOB_STATE_DEAD
CANCELLED = jobs_pb2.JOB_STATE_CANCELLED
WAITING_STATES = (SCHEDULED, AVAILABLE)
UNFINISHED_STATES = (SCHEDULED, AVAILABLE, RUNNING)
FINISHED_STATES = (SUCCEEDED, DEAD, CANCELLED)

DEFAULT_QUEUE = "default"
RESERVED_PREFIX = "statekeeper."
BUILTIN_QUEUE = "statekeeper.builtin"
"""The queue of the kinds the server runs itself; no outside worker leases it."""

DEFAULT_MAX_RETRIES = 3
MAX_RETRIES_LIMIT = 100
DEFAULT_BACKOFF_BASE_US = 1_000_000
DEFAULT_BACKOFF_CAP_US = 300_000_000
MAX_BACKOFF_CAP_US = 86_400_000_000
MAX_KEPT_ERRORS = 100
LEASE_EXPIRED_ERROR = "lease expired"
NO_ERRORS = "[]"
"""The stored errors of a job that never failed."""


# -- records -------------------------------------------------------------------


@dataclass(frozen=True)
class NewJob:
    """A validated job to enqueue.

    `run_after_us` None means `delay_us` after the enqueue commits.
    """

    queue: str
    kind: str
    payload: struct_pb2.Struct
    priority: int
    run_after_us: int | None
    delay_us: int
    max_retries: int
    idempotency_key: str
    backoff_base_us: int
    backoff_cap_us: int

    def resolve_run_after(self, now_us: int) -> int:
        """When the job may first run, for an enqueue committed at `now_us`."""
        return self.run_after_us if self.run_after_us is not None else now_us + self.delay_us


class JobRow(NamedTuple):
    """A stored job as every backend reads it (times in microseconds).

    A named tuple, so a transition's copy is cheap and the stored columns
    are its values in order.
    """

    seq: int
    namespace: str
    job_id: str
    queue: str
    kind: str
    payload: bytes
    priority: int
    state: int
    attempt: int
    max_retries: int
    run_after: int
    create_time: int
    update_time: int
    finish_time: int | None
    errors: str
    result: bytes | None
    lease_id: str | None
    worker_id: str | None
    lease_expire: int | None
    idempotency_key: str | None
    backoff_base: int
    backoff_cap: int


@dataclass(frozen=True)
class Enqueued:
    """An enqueued job, and whether it is new (False: deduplicated by its key)."""

    job: jobs_pb2.Job
    created: bool
    encoded: bytes
    """The job's encoding, made beside the store's transaction (`enqueued_job`): the answer
    carries it, and its size decides whether the batch's answer fits."""


def enqueued_job(job: jobs_pb2.Job, created: bool) -> Enqueued:
    """The Enqueued of `job`, encoded now (on the store's thread, for the file store)."""
    return Enqueued(job, created, job.SerializeToString())


@dataclass(frozen=True)
class LeasedJob:
    """A job just leased, with the namespace it belongs to."""

    namespace: str
    job: jobs_pb2.Job


@dataclass(frozen=True)
class LeaseResult:
    """Jobs leased by one call; when none, when the next one may become runnable.

    `next_due_us` is the earliest future `run_after` or lease expiry among
    the jobs the call could have leased, None when there is none.
    """

    jobs: list[LeasedJob]
    next_due_us: int | None


@dataclass(frozen=True)
class HeartbeatResult:
    """The lease after a heartbeat, and whether the job was cancelled under it."""

    lease: jobs_pb2.JobLease
    cancelled: bool


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a listing returns; empty fields match everything."""

    queue: str = ""
    kind: str = ""
    state: int = 0


@dataclass(frozen=True)
class JobPage:
    """One page of a listing and the token of the next (empty at the end)."""

    jobs: list[jobs_pb2.Job]
    next_page_token: str


@dataclass(frozen=True)
class ChangeFilter:
    """Which changes a watcher receives; empty fields match everything."""

    queue: str = ""
    kind: str = ""
    job_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChangePage:
    """Matching changes after a position, and the position read through.

    `through` is the change id the next read continues after: the last
    change returned, or the newest change id of the store when the page
    holds every matching change committed so far.
    """

    changes: list[jobs_pb2.JobChange]
    through: int
    more: bool = False
    """Whether matching changes committed so far were left for the next read (the
    page was full by count or by bytes)."""


@dataclass(frozen=True)
class StatsPage:
    """One page of queue statistics and the token of the next (empty at the end)."""

    queues: list[jobs_pb2.QueueStats]
    next_page_token: str


@dataclass(frozen=True)
class SweepResult:
    """What a sweep left: whether more is due now, and when the next timer fires."""

    more: bool
    next_due_us: int | None


@dataclass
class Effects:
    """What a write changed, so the backend can wake waiters after it commits."""

    ready_queues: set[tuple[str, str]] = field(default_factory=set)
    changed_namespaces: set[str] = field(default_factory=set)
    new_timers: bool = False
    dead: list[str] = field(default_factory=list)
    """The namespace of each job the write made DEAD."""
    leases_expired: list[str] = field(default_factory=list)
    """The namespace of each expired lease the write took back."""

    def note(self, row: JobRow) -> None:
        """Remember whom the change of `row` to its current state concerns."""
        self.changed_namespaces.add(row.namespace)
        if row.state == DEAD:
            self.dead.append(row.namespace)
        if row.state == AVAILABLE:
            self.ready_queues.add((row.namespace, row.queue))
        elif row.state == SCHEDULED:
            self.new_timers = True

    def note_expired(self, row: JobRow) -> None:
        """Remember that the write took back the expired lease of `row`."""
        self.leases_expired.append(row.namespace)

    def committed(self) -> None:
        """Count what the write did in the metrics; call once it committed."""
        if self.dead:
            store_metrics.jobs_dead(self.dead)
        if self.leases_expired:
            store_metrics.job_leases_expired(self.leases_expired)

    def wake_keys(self) -> list[Hashable]:
        """The notifier keys to wake once the write committed, in a stable order.

        A ready queue wakes the key its leasers watch: the built-in queue is
        leased across namespaces (`ANY_NAMESPACE`), every other queue per
        namespace.
        """
        keys: list[Hashable] = [
            queue_key(ANY_NAMESPACE if queue == BUILTIN_QUEUE else namespace, queue)
            for namespace, queue in sorted(self.ready_queues)
        ]
        keys += [changes_key(namespace) for namespace in sorted(self.changed_namespaces)]
        if self.new_timers:
            keys.append(TIMERS_KEY)
        return list(dict.fromkeys(keys))


class JobStore(Protocol):
    """Keeps the jobs of every (namespace, queue), and their change log.

    Every backend guarantees: an acknowledged call is durable; a job is
    leased to one worker at a time (claiming is atomic); leasing hands out,
    among jobs whose run_after has passed, the highest priority first and
    then the lowest enqueue sequence; every state change appends one record
    to the change log in commit order; only after a commit are waiters woken
    (`queue_key` when jobs may have become runnable, `changes_key` for the
    change log, `TIMERS_KEY` when a new future run_after was written); a
    call that raises changes nothing.
    """

    async def enqueue(self, namespace: str, jobs: Sequence[NewJob]) -> list[Enqueued]:
        """Store `jobs` atomically, deduplicating by idempotency key, in order."""

    async def lease(
        self,
        namespace: str,
        queue: str,
        kinds: Sequence[str],
        worker_id: str,
        count: int,
        lease_us: int,
    ) -> LeaseResult:
        """Lease runnable jobs of the queue (any kind when `kinds` is empty): up to
        `count`, and only those that fit in PAGE_BUDGET_BYTES as the response returns
        them (`lease_batch`); the others stay AVAILABLE, untouched."""

    async def lease_builtin(self, worker_id: str, count: int, lease_us: int) -> LeaseResult:
        """Lease runnable jobs of BUILTIN_QUEUE across every namespace, as `lease` does."""

    async def heartbeat(
        self, namespace: str, job_id: str, lease_id: str, lease_us: int
    ) -> HeartbeatResult:
        """Extend the lease to now + lease_us; FailedPrecondition LEASE_STALE if not held."""

    async def complete(
        self, namespace: str, job_id: str, lease_id: str, result: struct_pb2.Struct
    ) -> jobs_pb2.Job:
        """Mark the leased job SUCCEEDED (again returning it for the lease that did)."""

    async def fail(
        self,
        namespace: str,
        job_id: str,
        lease_id: str,
        error: str,
        retryable: bool,
        retry_delay_us: int | None,
    ) -> jobs_pb2.Job:
        """Record a failed attempt; the job waits for a retry or is DEAD (`after_failure`)."""

    async def cancel(self, namespace: str, job_id: str) -> jobs_pb2.Job:
        """Cancel an unfinished job; a CANCELLED one is returned as is."""

    async def retry(self, namespace: str, job_id: str, delay_us: int) -> jobs_pb2.Job:
        """Put a DEAD or CANCELLED job back with attempt 0, runnable after `delay_us`."""

    async def get(self, namespace: str, job_id: str) -> jobs_pb2.Job:
        """The job as it stands now; NotFound (JOB_NOT_FOUND) if absent."""

    async def list(
        self, namespace: str, where: JobFilter, page_size: int, page_token: str
    ) -> JobPage:
        """A page of jobs in enqueue order, at most `page_size` and PAGE_BUDGET_BYTES of
        them (at least one when any is left)."""

    async def stats(
        self, namespace: str, queue: str, page_size: int, page_token: str, count_limit: int = 0
    ) -> StatsPage:
        """Counts per queue, state and priority, a page of queues in queue order (at
        most `page_size` and PAGE_BUDGET_BYTES of them); only `queue` when it is set.

        Finding the page's queues costs an index seek per queue, whatever their
        jobs. With `count_limit` (> 0) counting stops at that many jobs per queue
        and stored state, each an index range (see `capped_counts`), so the call
        costs the same at a million jobs as at a thousand; 0 counts every job.
        """

    async def change_position(self) -> int:
        """The newest change id committed so far (0 when none)."""

    async def changes(
        self,
        namespace: str,
        where: ChangeFilter,
        after: int,
        limit: int,
        max_bytes: int = PAGE_BUDGET_BYTES,
    ) -> ChangePage:
        """Matching changes with id > `after`, at most `limit` and `max_bytes` of them
        (at least one when any is left); OutOfRange if trimmed."""

    async def sweep(self) -> SweepResult:
        """Promote due jobs and settle expired leases, a bounded batch at a time."""

    async def metrics_counts(self) -> JobCounts:
        """The jobs of every namespace by queue and stored state, and the earliest
        run_after of the runnable jobs of each queue (`runnable_since`).

        For the metrics: one grouped count over the index on (namespace,
        queue, state), plus two index lookups per queue holding waiting jobs;
        read beside the reads of streams, never ahead of point reads.
        """

    async def purge(self, finished_before_us: int, changes_before_us: int) -> int:
        """Delete jobs finished before, and changes committed before, the given times.

        Returns how many jobs were deleted.
        """


# -- notifier keys ---------------------------------------------------------------

TIMERS_KEY = ("job_timers",)
"""Woken when a write stores a future run_after (the sweeper's timer may move)."""

ANY_NAMESPACE = "*"
"""Stands for every namespace in a queue key (never a valid namespace)."""


def runnable_since(
    earliest_available: int | None, earliest_scheduled: int | None, now_us: int
) -> int | None:
    """Since when the longest-runnable job of a queue could run: the earliest run_after of
    its AVAILABLE jobs and of its SCHEDULED jobs already due; None when none can run."""
    due = (
        earliest_scheduled
        if earliest_scheduled is not None and earliest_scheduled <= now_us
        else None
    )
    found = [value for value in (earliest_available, due) if value is not None]
    return min(found) if found else None


def queue_key(namespace: str, queue: str) -> tuple[str, str, str]:
    """The key woken when jobs of a queue may have become runnable."""
    return ("jobs", namespace, queue)


def changes_key(namespace: str) -> tuple[str, str]:
    """The key woken after changes of the namespace's jobs were committed."""
    return ("job_changes", namespace)


# -- decisions ---------------------------------------------------------------------


def waiting_state(run_after_us: int, now_us: int) -> int:
    """SCHEDULED while `run_after_us` is in the future, else AVAILABLE."""
    return SCHEDULED if run_after_us > now_us else AVAILABLE


def reported_state(stored_state: int, run_after_us: int, now_us: int) -> int:
    """The state a job is in at `now_us` (a due SCHEDULED job is AVAILABLE)."""
    if stored_state == SCHEDULED:
        return waiting_state(run_after_us, now_us)
    return stored_state


def backoff_us(attempt: int, base_us: int, cap_us: int, rand: float) -> int:
    """The delay after failed attempt `attempt` (1-based), with equal jitter.

    The exponential step is min(cap, base * 2^(attempt-1)); the delay is half
    of it plus a random share (`rand` in [0, 1)) of the other half ("equal
    jitter"). Delays therefore never shrink from one attempt to the next
    while the step is below the cap, and stay within [cap/2, cap] there.
    """
    step = min(cap_us, base_us << min(max(attempt - 1, 0), 62))
    half = step // 2
    return half + int((step - half) * rand)


@dataclass(frozen=True)
class Outcome:
    """Where a job goes after a failed attempt: its stored state and run_after."""

    state: int
    run_after_us: int


def after_failure(
    row: JobRow, now_us: int, *, retryable: bool, retry_delay_us: int | None, rand: float
) -> Outcome:
    """Decide a failed attempt of `row`: retried while attempts remain, else DEAD.

    Attempt n is retried when `retryable` and n <= max_retries, after
    `retry_delay_us` when given, else after the job's backoff.
    """
    if not retryable or row.attempt > row.max_retries:
        return Outcome(DEAD, row.run_after)
    if retry_delay_us is None:
        retry_delay_us = backoff_us(row.attempt, row.backoff_base, row.backoff_cap, rand)
    run_after = now_us + retry_delay_us
    return Outcome(waiting_state(run_after, now_us), run_after)


def lease_is_held(row: JobRow, lease_id: str, now_us: int) -> bool:
    """Whether `lease_id` is the job's live lease at `now_us`."""
    return (
        row.state == RUNNING
        and row.lease_id == lease_id
        and row.lease_expire is not None
        and row.lease_expire > now_us
    )


def check_lease(row: JobRow, lease_id: str, now_us: int) -> None:
    """Raise LEASE_STALE unless `lease_id` is the job's live lease."""
    if not lease_is_held(row, lease_id, now_us):
        raise lease_stale(row, lease_id, now_us)


def cancel_allowed(row: JobRow) -> bool:
    """Whether cancelling changes the job: False for CANCELLED; FailedPrecondition if finished."""
    if row.state == CANCELLED:
        return False
    if row.state in (SUCCEEDED, DEAD):
        raise FailedPrecondition(
            "JOB_FINISHED",
            f"job {row.job_id} is {state_name(row.state)} and cannot be cancelled",
            job_id=row.job_id,
            state=state_name(row.state),
        )
    return True


def check_retry_allowed(row: JobRow, now_us: int) -> None:
    """Raise JOB_NOT_RETRYABLE unless the job is DEAD or CANCELLED."""
    if row.state not in (DEAD, CANCELLED):
        state = reported_state(row.state, row.run_after, now_us)
        raise FailedPrecondition(
            "JOB_NOT_RETRYABLE",
            f"job {row.job_id} is {state_name(state)}; only DEAD or CANCELLED jobs can be retried",
            job_id=row.job_id,
            state=state_name(state),
        )


def error_text(message: str) -> str:
    """A failed attempt's error as it is kept: cut to MAX_JOB_ERROR_BYTES of UTF-8."""
    return clip_utf8(message, MAX_JOB_ERROR_BYTES)


def check_enqueue_response(enqueued: Sequence[Enqueued]) -> None:
    """Raise TooLarge (BATCH_TOO_LARGE) if the jobs an enqueue returns would not fit
    in one response.

    New jobs were sized at the door; a job found by its idempotency key may be
    larger (a result, errors), so a batch returning several is checked in its
    transaction, before anything commits.
    """
    total = sum(framed_size(len(item.encoded)) for item in enqueued)
    if total > RESPONSE_BUDGET_BYTES:
        raise TooLarge(
            "BATCH_TOO_LARGE", "jobs", total, RESPONSE_BUDGET_BYTES, "the response to this batch"
        )


def record_error(row: JobRow, message: str, now_us: int) -> str:
    """The row's stored errors with the current attempt's failure appended."""
    errors = _load_errors(row)
    errors.append(
        {
            "attempt": row.attempt,
            "message": error_text(message),
            "fail_time": now_us,
            "worker_id": row.worker_id or "",
        }
    )
    return json.dumps(errors[-MAX_KEPT_ERRORS:], separators=(",", ":"))


# -- transitions ---------------------------------------------------------------------
# Each returns the row as it is stored after the transition; the backend writes it
# and appends `change_of(new_row, previous_state, now)` to the change log.


def new_row(namespace: str, new: NewJob, now_us: int) -> JobRow:
    """The row of a job enqueued at `now_us` (seq 0 until the store assigns one)."""
    run_after = new.resolve_run_after(now_us)
    return JobRow(
        seq=0,
        namespace=namespace,
        job_id=str(uuid7()),
        queue=new.queue,
        kind=new.kind,
        payload=new.payload.SerializeToString(),
        priority=new.priority,
        state=waiting_state(run_after, now_us),
        attempt=0,
        max_retries=new.max_retries,
        run_after=run_after,
        create_time=now_us,
        update_time=now_us,
        finish_time=None,
        errors=NO_ERRORS,
        result=None,
        lease_id=None,
        worker_id=None,
        lease_expire=None,
        idempotency_key=new.idempotency_key or None,
        backoff_base=new.backoff_base_us,
        backoff_cap=new.backoff_cap_us,
    )


def leased_row(row: JobRow, worker_id: str, lease_us: int, now_us: int) -> JobRow:
    """`row` leased to `worker_id` for its next attempt, under a new lease id."""
    return row._replace(
        state=RUNNING,
        attempt=row.attempt + 1,
        lease_id=str(uuid7()),
        worker_id=worker_id,
        lease_expire=now_us + lease_us,
        update_time=now_us,
    )


def promoted_row(row: JobRow, now_us: int) -> JobRow:
    """A SCHEDULED `row` whose run_after came, stored AVAILABLE."""
    return row._replace(state=AVAILABLE, update_time=now_us)


def lease_lapsed(row: JobRow, now_us: int) -> bool:
    """Whether `row` is RUNNING under a lease that expired by `now_us`."""
    return row.state == RUNNING and row.lease_expire is not None and row.lease_expire <= now_us


def failed_row(row: JobRow, outcome: Outcome, error: str, now_us: int) -> JobRow:
    """`row` after a failed attempt decided as `outcome`, its error recorded."""
    return row._replace(
        state=outcome.state,
        run_after=outcome.run_after_us,
        errors=record_error(row, error, now_us),
        update_time=now_us,
        finish_time=now_us if outcome.state == DEAD else None,
        lease_id=None,
        worker_id=None,
        lease_expire=None,
    )


def expired_row(row: JobRow, now_us: int) -> JobRow:
    """`row` whose lease expired: the attempt failed, the job is runnable at once or DEAD."""
    outcome = after_failure(row, now_us, retryable=True, retry_delay_us=0, rand=0.0)
    return failed_row(row, outcome, LEASE_EXPIRED_ERROR, now_us)


def completed_row(row: JobRow, result: bytes, now_us: int) -> JobRow:
    """`row` SUCCEEDED with the encoded `result` (its lease kept, so a repeat is recognised)."""
    return row._replace(state=SUCCEEDED, result=result, finish_time=now_us, update_time=now_us)


def extended_row(row: JobRow, lease_id: str, lease_us: int, now_us: int) -> JobRow | None:
    """`row` with its live lease `lease_id` extended to `now_us + lease_us`.

    None when the job was cancelled under that lease (the heartbeat reports
    it and nothing is written); FailedPrecondition LEASE_STALE when the lease
    is not held.
    """
    if row.state == CANCELLED and row.lease_id == lease_id:
        return None
    check_lease(row, lease_id, now_us)
    return row._replace(lease_expire=now_us + lease_us)


def completion_repeated(row: JobRow, lease_id: str) -> bool:
    """Whether `row` was already completed under `lease_id` (the call is a retry)."""
    return row.state == SUCCEEDED and row.lease_id == lease_id


def cancelled_row(row: JobRow, now_us: int) -> JobRow:
    """`row` CANCELLED (a running job keeps its lease id so its heartbeat learns why)."""
    return row._replace(state=CANCELLED, finish_time=now_us, update_time=now_us)


def revived_row(row: JobRow, delay_us: int, now_us: int) -> JobRow:
    """A DEAD or CANCELLED `row` back in its queue with attempt 0, after `delay_us`."""
    run_after = now_us + delay_us
    return row._replace(
        state=waiting_state(run_after, now_us),
        attempt=0,
        run_after=run_after,
        update_time=now_us,
        finish_time=None,
        result=None,
        lease_id=None,
        worker_id=None,
        lease_expire=None,
    )


def change_of(
    row: JobRow,
    previous: int,
    now_us: int,
    *,
    error: str | None = None,
    result: bytes | None = None,
) -> ChangeRow:
    """The change-log record of `row` reaching its current state from `previous`.

    change_id is 0 until the store assigns it.
    """
    return ChangeRow(
        change_id=0,
        job_id=row.job_id,
        queue=row.queue,
        kind=row.kind,
        previous_state=previous,
        state=row.state,
        attempt=row.attempt,
        change_time=now_us,
        run_after=row.run_after if row.state == SCHEDULED else None,
        worker_id=row.worker_id if row.state == RUNNING else None,
        error=None if error is None else error_text(error),
        result=result,
    )


# -- errors --------------------------------------------------------------------------


def state_name(state: int) -> str:
    """`RUNNING` for JOB_STATE_RUNNING, and so on."""
    return jobs_pb2.JobState.Name(state).removeprefix("JOB_STATE_")  # type: ignore[arg-type]


def job_not_found(job_id: str) -> NotFound:
    """The error of every backend for an unknown job."""
    return NotFound("JOB_NOT_FOUND", f"job {job_id} does not exist", job_id=job_id)


def lease_stale(row: JobRow, lease_id: str, now_us: int) -> FailedPrecondition:
    """The error for a call made under a lease the job no longer honours."""
    state = reported_state(row.state, row.run_after, now_us)
    if row.lease_id != lease_id:
        why = "it is not the job's current lease"
    elif row.state == RUNNING:
        why = "it expired"
    else:
        why = f"the job is {state_name(state)}"
    return FailedPrecondition(
        "LEASE_STALE",
        f"lease {lease_id} of job {row.job_id} is no longer held: {why}",
        job_id=row.job_id,
        lease_id=lease_id,
        state=state_name(state),
    )


def idempotency_key_in_use(row: JobRow, holder: str) -> FailedPrecondition:
    """The error for reviving a job whose idempotency key another job now holds."""
    return FailedPrecondition(
        "IDEMPOTENCY_KEY_IN_USE",
        f"job {holder} now holds idempotency key {row.idempotency_key!r} of job {row.job_id}",
        job_id=row.job_id,
        holder_job_id=holder,
    )


def changes_trimmed(after: int, trimmed_through: int) -> OutOfRange:
    """The error for resuming a watch at a position whose changes were deleted."""
    return OutOfRange(
        "CHANGES_TRIMMED",
        f"changes up to {trimmed_through} were deleted by retention; cannot resume after {after}",
        trimmed_through=trimmed_through,
    )


# -- decoding --------------------------------------------------------------------------


def decode_struct(job_id: str, data: bytes) -> struct_pb2.Struct:
    """Parse a stored payload or result; DataLoss (CORRUPT_JOB) if it is unreadable."""
    try:
        return struct_pb2.Struct.FromString(data)
    except DecodeError as exc:
        raise _corrupt(job_id) from exc


def _corrupt(job_id: str) -> DataLoss:
    store_metrics.store_error("corrupt")
    return DataLoss("CORRUPT_JOB", f"the stored job {job_id} is corrupt", job_id=job_id)


def _load_errors(row: JobRow) -> list[dict[str, object]]:
    try:
        errors = json.loads(row.errors)
    except ValueError as exc:
        raise _corrupt(row.job_id) from exc
    if not isinstance(errors, list):
        raise _corrupt(row.job_id)
    return errors


def _attempt_error(job_id: str, item: object) -> jobs_pb2.JobAttemptError:
    if not isinstance(item, dict):
        raise _corrupt(job_id)
    try:
        return jobs_pb2.JobAttemptError(
            attempt=int(item["attempt"]),
            message=str(item["message"]),
            fail_time=to_timestamp(int(item["fail_time"])),
            worker_id=str(item["worker_id"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise _corrupt(job_id) from exc


def job_from_row(row: JobRow, now_us: int) -> jobs_pb2.Job:
    """The API's view of a stored job at `now_us`; DataLoss (CORRUPT_JOB) if unreadable."""
    # Filled in place: building sub-messages and copying them in costs more.
    job = jobs_pb2.Job(
        job_id=row.job_id,
        queue=row.queue,
        kind=row.kind,
        priority=row.priority,  # type: ignore[arg-type]
        state=reported_state(row.state, row.run_after, now_us),  # type: ignore[arg-type]
        attempt=row.attempt,
        max_retries=row.max_retries,
        idempotency_key=row.idempotency_key or "",
    )
    _merge_struct(job.payload, row.job_id, row.payload)
    _set_time(job.run_after, row.run_after)
    _set_time(job.create_time, row.create_time)
    _set_time(job.update_time, row.update_time)
    if row.errors != NO_ERRORS:
        job.errors.extend(_attempt_error(row.job_id, item) for item in _load_errors(row))
    job.retry_backoff_base.FromMicroseconds(row.backoff_base)
    job.retry_backoff_cap.FromMicroseconds(row.backoff_cap)
    if row.finish_time is not None:
        _set_time(job.finish_time, row.finish_time)
    if row.result is not None:
        _merge_struct(job.result, row.job_id, row.result)
    if row.state == RUNNING:
        _fill_lease(job.lease, row)
    return job


async def job_off_loop(row: JobRow, now_us: int) -> jobs_pb2.Job:
    """`job_from_row`, on a worker thread when the row's payload and result are large (a
    store whose reads end on the event loop builds a large job there)."""
    return await off_loop_if_large(_row_bytes(row), job_from_row, row, now_us)


async def enqueued_off_loop(row: JobRow, now_us: int, created: bool) -> Enqueued:
    """`enqueued_job` of the row's job, built and encoded on a worker thread when its
    payload and result are large."""
    return await off_loop_if_large(
        _row_bytes(row), lambda: enqueued_job(job_from_row(row, now_us), created)
    )


def _row_bytes(row: JobRow) -> int:
    return len(row.payload) + len(row.result or b"")


def row_lease(row: JobRow) -> jobs_pb2.JobLease:
    """The lease recorded on `row` (empty fields when it has none)."""
    lease = jobs_pb2.JobLease()
    _fill_lease(lease, row)
    return lease


def _fill_lease(lease: jobs_pb2.JobLease, row: JobRow) -> None:
    lease.lease_id = row.lease_id or ""
    lease.worker_id = row.worker_id or ""
    if row.lease_expire is not None:
        _set_time(lease.expire_time, row.lease_expire)


def _merge_struct(target: struct_pb2.Struct, job_id: str, data: bytes) -> None:
    """`decode_struct` straight into `target` (an empty field of a message), in pieces: on
    a store's thread, the event loop gets the GIL between them."""
    try:
        merge_in_pieces(target, data)
    except DecodeError as exc:
        raise _corrupt(job_id) from exc


def _set_time(target: timestamp_pb2.Timestamp, micros: int) -> None:
    """`to_timestamp(micros)` written into `target` (a field of a message)."""
    target.seconds, rest = divmod(micros, 1_000_000)
    target.nanos = rest * 1000


class ChangeRow(NamedTuple):
    """A stored change-log record as every backend reads it (a named tuple, as JobRow)."""

    change_id: int
    job_id: str
    queue: str
    kind: str
    previous_state: int
    state: int
    attempt: int
    change_time: int
    run_after: int | None
    worker_id: str | None
    error: str | None
    result: bytes | None


JOB_COLUMNS = ", ".join(JobRow._fields)
"""The stored columns of a job, as every backend names them, in JobRow's order."""
CHANGE_COLUMNS = ", ".join(ChangeRow._fields)
"""The stored columns of a change, as every backend names them, in ChangeRow's order."""


def change_from_row(row: ChangeRow) -> jobs_pb2.JobChange:
    """The API's view of a stored change."""
    change = jobs_pb2.JobChange(
        change_id=row.change_id,
        job_id=row.job_id,
        queue=row.queue,
        kind=row.kind,
        previous_state=row.previous_state,  # type: ignore[arg-type]
        state=row.state,  # type: ignore[arg-type]
        attempt=row.attempt,
        change_time=to_timestamp(row.change_time),
        worker_id=row.worker_id or "",
        error=row.error or "",
    )
    if row.run_after is not None:
        change.run_after.CopyFrom(to_timestamp(row.run_after))
    if row.result is not None:
        change.result.CopyFrom(decode_struct(row.job_id, row.result))
    return change


def list_filters(where: JobFilter) -> dict[str, object]:
    """The filters a page token of a job listing is bound to."""
    return {"list": "jobs", "queue": where.queue, "kind": where.kind, "state": where.state}


def stats_filters(queue: str) -> dict[str, object]:
    """The filters a page token of queue statistics is bound to."""
    return {"list": "queue_stats", "queue": queue}


def message_size(item: tuple[object, Message]) -> int:
    """The encoded size of the message of a (key, message) pair."""
    return item[1].ByteSize()


def sized_job(row: JobRow, now_us: int) -> tuple[int, jobs_pb2.Job]:
    """A listed row as (seq, the job as a listing returns it at `now_us`)."""
    return row.seq, job_from_row(row, now_us)


def job_page(
    page: Sequence[tuple[int, jobs_pb2.Job]], more: bool, filters: dict[str, object]
) -> JobPage:
    """The listing page of (seq, job) `page` in seq order; `more`: jobs follow them."""
    token = encode_page_token(page[-1][0], filters) if more and page else ""
    return JobPage([job for _, job in page], token)


def lease_batch(
    candidates: Iterable[JobRow], worker_id: str, lease_us: int, now_us: int, count: int
) -> list[tuple[JobRow, jobs_pb2.Job]]:
    """What a lease takes of `candidates` (AVAILABLE rows in lease order): each row
    leased (`leased_row`) with its job as the response returns it, up to `count` and as
    many as fit in PAGE_BUDGET_BYTES (at least one). Candidates are read only that far;
    the rest are left as they are."""
    leased = (leased_row(row, worker_id, lease_us, now_us) for row in candidates)
    batch, _ = fill_page(
        ((row, job_from_row(row, now_us)) for row in leased), message_size, max_count=count
    )
    return batch


def sized_change(row: ChangeRow) -> tuple[int, jobs_pb2.JobChange]:
    """A change-log row as (change_id, the change as a watch sends it)."""
    return row.change_id, change_from_row(row)


def change_page(
    page: Sequence[tuple[int, jobs_pb2.JobChange]], more: bool, position: int, after: int
) -> ChangePage:
    """The watch page of (change_id, change) `page` in id order; `more`: matching changes
    follow them. It is read through its last change when more follow, else through
    `position` (the newest change id when it was read)."""
    through = page[-1][0] if more and page else position
    return ChangePage([change for _, change in page], max(through, after), more)


def stats_page(
    stats: Sequence[jobs_pb2.QueueStats], more: bool, page_size: int, filters: dict[str, object]
) -> StatsPage:
    """The page of queue `stats` (in queue order) that fits `page_size` and
    PAGE_BUDGET_BYTES; `more`: queues follow them."""
    page, cut = fill_page(stats, jobs_pb2.QueueStats.ByteSize, max_count=page_size)
    token = encode_page_token(page[-1].queue, filters) if (more or cut) and page else ""
    return StatsPage(page, token)


def queue_stats(
    queue: str,
    counts: Iterable[tuple[str, int, int, int]],
    oldest_run_after: Mapping[str, int],
    now_us: int,
    capped: Mapping[str, Iterable[int]] | None = None,
) -> list[jobs_pb2.QueueStats]:
    """Per-queue stats, sorted by queue, from (queue, reported state, priority, count)
    rows, each queue's earliest run_after among its runnable jobs and the reported
    states whose counts stopped at a count limit (`capped`, by queue).

    `queue` (when set) is listed even with no jobs.
    """
    by_queue: dict[str, jobs_pb2.QueueStats] = {}
    if queue:
        by_queue[queue] = jobs_pb2.QueueStats(queue=queue)
    for name, state, priority, count in counts:
        stats = by_queue.setdefault(name, jobs_pb2.QueueStats(queue=name))
        stats.counts.add(state=state, priority=priority, count=count)
    for name, run_after in oldest_run_after.items():
        by_queue[name].oldest_available_age.FromMicroseconds(max(0, now_us - run_after))
    for name, states in (capped or {}).items():
        by_queue[name].capped_states.extend(sorted(states))  # type: ignore[arg-type]
    return [by_queue[name] for name in sorted(by_queue)]


STORED_STATES = (SCHEDULED, AVAILABLE, RUNNING, SUCCEEDED, DEAD, CANCELLED)

QUEUE_NAMES_SQL = """
    WITH RECURSIVE names (queue, n) AS (
        SELECT (SELECT MIN(queue) FROM jobs WHERE namespace = {ns} AND queue > {after}), 1
        UNION ALL
        SELECT (SELECT MIN(queue) FROM jobs WHERE namespace = {ns} AND queue > names.queue),
               n + 1
        FROM names WHERE names.queue IS NOT NULL AND n < {limit}
    )
    SELECT queue FROM names WHERE queue IS NOT NULL"""
"""The namespace's first queues after a queue, one index seek each however many jobs
they hold (a DISTINCT would step through every job); `{ns}`, `{after}` and `{limit}`
are the backend's parameter marks."""


def capped_counts(
    stored: Iterable[tuple[str, int, int, int]],
    due: Iterable[tuple[str, int, int]],
    count_limit: int,
) -> tuple[list[tuple[str, int, int, int]], dict[str, set[int]]]:
    """(queue, reported state, priority, count) rows and the capped reported states by
    queue, from counts that stopped at `count_limit` jobs per queue and stored state.

    `stored` holds (queue, stored state, priority, count) rows, each (queue, state)
    counted to at most `count_limit` jobs; `due` holds (queue, priority, count) of
    the SCHEDULED jobs already due (reported as AVAILABLE), counted the same way.
    A reported state is capped when a count it is made of reached the limit.
    """
    totals: dict[tuple[str, int], int] = {}
    by_key: dict[tuple[str, int, int], int] = {}
    for queue, state, priority, count in stored:
        by_key[(queue, state, priority)] = by_key.get((queue, state, priority), 0) + count
        totals[(queue, state)] = totals.get((queue, state), 0) + count
    capped: dict[str, set[int]] = {}
    for (queue, state), total in totals.items():
        if total >= count_limit:
            capped.setdefault(queue, set()).add(state)
    due_totals: dict[str, int] = {}
    for queue, priority, count in due:
        moved = min(count, by_key.get((queue, SCHEDULED, priority), 0))
        by_key[(queue, SCHEDULED, priority)] = by_key.get((queue, SCHEDULED, priority), 0) - moved
        by_key[(queue, AVAILABLE, priority)] = by_key.get((queue, AVAILABLE, priority), 0) + moved
        due_totals[queue] = due_totals.get(queue, 0) + count
    for queue, total in due_totals.items():
        if total >= count_limit:
            capped.setdefault(queue, set()).add(AVAILABLE)
    rows = [
        (queue, state, priority, count)
        for (queue, state, priority), count in sorted(by_key.items())
        if count > 0
    ]
    return rows, capped
