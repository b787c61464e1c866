"""`client.jobs`: a durable priority queue of background jobs, and a worker loop.

Producers `enqueue` jobs; workers run them with `work`, which leases jobs
(long-polling), keeps their leases alive in the background and completes or
fails each one from the body of the loop:

    async for job in client.jobs.work("emails", ["email.send"]):
        async with job:                  # success completes, an exception fails (retryably)
            await send(job.payload)
            job.result = {"sent": True}

An `async for` body cannot hand its exception back to the iterator, so the
`async with job:` block is what turns an exception into a failed attempt
(logged; the loop goes on). A body without it completes the job when the
loop asks for the next one, unless the body settled the job itself with
`await job.complete(...)` or `await job.fail(...)`. The blocking client's
loop is the same with `for` and `with job:`; its heartbeats run on a thread
of their own while the loop runs.

`JobCalls` says what each method sends and returns; `JobsClient` (asyncio)
and `BlockingJobsClient` make the calls.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeAlias

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2

from statekeeper import _aio_calls as aio
from statekeeper import _sync_calls as sync
from statekeeper._calls import Collected, Pages, Stream, Unary, whole
from statekeeper.errors import StatekeeperError
from statekeeper.v1 import events_pb2, jobs_pb2, jobs_pb2_grpc

APPEND_EVENT_KIND = "statekeeper.append_event"
PUBLISH_EVENT_KIND = "statekeeper.publish_event"
PRIORITIES: Mapping[str, jobs_pb2.JobPriority.ValueType] = {
    "low": jobs_pb2.JOB_PRIORITY_LOW,
    "normal": jobs_pb2.JOB_PRIORITY_NORMAL,
    "high": jobs_pb2.JOB_PRIORITY_HIGH,
    "critical": jobs_pb2.JOB_PRIORITY_CRITICAL,
}
Priority: TypeAlias = "jobs_pb2.JobPriority.ValueType | str"
Seconds: TypeAlias = "float | timedelta"
RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
LOST_CODES = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND})
FIRST_PAUSE = 0.1
MAX_PAUSE = 5.0
"""Pauses (seconds) of a worker loop between failed leases, doubling from the first."""

log = logging.getLogger("statekeeper.jobs")


def job_spec(
    kind: str,
    payload: Mapping[str, Any] | None = None,
    *,
    queue: str = "default",
    priority: Priority = "normal",
    run_after: datetime | None = None,
    delay: Seconds | None = None,
    max_retries: int | None = None,
    idempotency_key: str = "",
    retry_backoff_base: Seconds | None = None,
    retry_backoff_cap: Seconds | None = None,
) -> jobs_pb2.JobSpec:
    """A job to enqueue (see `JobsClient.enqueue` for the arguments)."""
    spec = jobs_pb2.JobSpec(
        queue=queue,
        kind=kind,
        payload=to_struct(payload),
        priority=PRIORITIES[priority] if isinstance(priority, str) else priority,
        idempotency_key=idempotency_key,
    )
    if run_after is not None:
        spec.run_after.FromDatetime(run_after)
    if delay is not None:
        spec.delay.CopyFrom(to_duration(delay))
    if max_retries is not None:
        spec.max_retries = max_retries
    if retry_backoff_base is not None:
        spec.retry_backoff_base.CopyFrom(to_duration(retry_backoff_base))
    if retry_backoff_cap is not None:
        spec.retry_backoff_cap.CopyFrom(to_duration(retry_backoff_cap))
    return spec


def append_event_spec(
    run_id: str,
    event: events_pb2.AgentEvent,
    *,
    event_id: str = "",
    expectation: events_pb2.SeqExpectation | None = None,
    **options: Any,
) -> jobs_pb2.JobSpec:
    """A built-in job that appends `event` to run `run_id` when it becomes runnable.

    `options` are those of `job_spec` (such as `delay=30`), except `queue`.
    """
    payload: dict[str, Any] = {"run_id": run_id, "event": json_format.MessageToDict(event)}
    if event_id:
        payload["event_id"] = event_id
    if expectation is not None:
        payload["expectation"] = json_format.MessageToDict(expectation)
    return job_spec(APPEND_EVENT_KIND, payload, queue="", **options)


def publish_event_spec(
    sink: str,
    run_id: str,
    *,
    event: events_pb2.AgentEvent | None = None,
    seq: int | None = None,
    event_id: str = "",
    **options: Any,
) -> jobs_pb2.JobSpec:
    """A built-in job that publishes to the server's sink `sink` when it becomes runnable:
    either `event` (as an envelope of run `run_id`, id `event_id` or the job's id) or
    the stored envelope `seq` of run `run_id`.

    `options` are those of `job_spec` (such as `max_retries=20`), except `queue`.
    """
    payload: dict[str, Any] = {"sink": sink, "run_id": run_id}
    if event is not None:
        payload["event"] = json_format.MessageToDict(event)
    if seq is not None:
        payload["seq"] = seq
    if event_id:
        payload["event_id"] = event_id
    return job_spec(PUBLISH_EVENT_KIND, payload, queue="", **options)


def to_struct(data: Mapping[str, Any] | None) -> struct_pb2.Struct:
    """A Struct holding the JSON-like mapping `data` (empty for None)."""
    struct = struct_pb2.Struct()
    if data:
        struct.update(data)
    return struct


def to_duration(value: Seconds) -> duration_pb2.Duration:
    """A Duration of `value` seconds (or of the timedelta)."""
    duration = duration_pb2.Duration()
    if isinstance(value, timedelta):
        duration.FromTimedelta(value)
    else:
        duration.FromNanoseconds(round(value * 1e9))
    return duration


def default_worker_id() -> str:
    """`<host>-<pid>-<random>`: unique per worker loop, readable in job leases."""
    host = "".join(c if c.isalnum() or c in ".-" else "-" for c in socket.gethostname())
    host = host.strip(".-")[:64] or "worker"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class JobCalls:
    """The operations of the jobs family, shared by both clients. A repeated
    completion with the same lease returns the job again, so it is retried;
    enqueues, leases, failures and retries are not repeated behind the
    caller's back."""

    # -- producers ---------------------------------------------------------------

    @staticmethod
    def enqueue(
        kind: str,
        payload: Mapping[str, Any] | None = None,
        *,
        queue: str = "default",
        priority: Priority = "normal",
        run_after: datetime | None = None,
        delay: Seconds | None = None,
        max_retries: int | None = None,
        idempotency_key: str = "",
        retry_backoff_base: Seconds | None = None,
        retry_backoff_cap: Seconds | None = None,
    ) -> Unary[jobs_pb2.Job]:
        """Enqueue one job and return it.

        `priority` is a JobPriority or one of low, normal, high, critical;
        `run_after` (a datetime; naive means UTC) or `delay` (seconds) holds
        the job back; `max_retries` defaults to 3 (so at most 4 attempts);
        the backoff between attempts grows from `retry_backoff_base` (1 s)
        up to `retry_backoff_cap` (5 min). With an `idempotency_key` held by
        an unfinished job, that job is returned instead of a new one.
        """
        spec = job_spec(
            kind,
            payload,
            queue=queue,
            priority=priority,
            run_after=run_after,
            delay=delay,
            max_retries=max_retries,
            idempotency_key=idempotency_key,
            retry_backoff_base=retry_backoff_base,
            retry_backoff_cap=retry_backoff_cap,
        )
        return Unary("EnqueueJob", jobs_pb2.EnqueueJobRequest(job=spec), _job)

    @staticmethod
    def enqueue_many(specs: Iterable[jobs_pb2.JobSpec]) -> Unary[builtins.list[jobs_pb2.Job]]:
        """Enqueue several jobs (built with `job_spec`) atomically; all or none."""
        return Unary(
            "EnqueueJobs",
            jobs_pb2.EnqueueJobsRequest(jobs=specs),
            lambda response: builtins.list(response.jobs),
        )

    @staticmethod
    def append_event_later(
        run_id: str, event: events_pb2.AgentEvent, **options: Any
    ) -> Unary[jobs_pb2.Job]:
        """Have the server append `event` to `run_id` later (`delay=`, `run_after=`).

        Arguments as for `append_event_spec`. The job's result will hold the
        appended envelope.
        """
        return Unary(
            "EnqueueJob",
            jobs_pb2.EnqueueJobRequest(job=append_event_spec(run_id, event, **options)),
            _job,
        )

    @staticmethod
    def publish_event(sink: str, run_id: str, **options: Any) -> Unary[jobs_pb2.Job]:
        """Have the server publish an event to its sink `sink`, with the queue's retries:
        `event=` (an AgentEvent, as an envelope of `run_id`) or `seq=` (the stored
        envelope of `run_id`).

        Arguments as for `publish_event_spec`. The job's result names the sink,
        run, seq and event id published.
        """
        return Unary(
            "EnqueueJob",
            jobs_pb2.EnqueueJobRequest(job=publish_event_spec(sink, run_id, **options)),
            _job,
        )

    # -- inspection and control -------------------------------------------------

    @staticmethod
    def get(job_id: str) -> Unary[jobs_pb2.Job]:
        """The job as it stands now; raises NOT_FOUND for an unknown job."""
        return Unary("GetJob", jobs_pb2.GetJobRequest(job_id=job_id), _job, idempotent=True)

    @staticmethod
    def list(
        *,
        queue: str = "",
        kind: str = "",
        state: jobs_pb2.JobState.ValueType = jobs_pb2.JOB_STATE_UNSPECIFIED,
        page_size: int = 0,
    ) -> Pages[jobs_pb2.Job]:
        """Every job matching the filters, in enqueue order, page by page."""
        return Pages(
            "ListJobs",
            lambda token: jobs_pb2.ListJobsRequest(
                page_size=page_size, page_token=token, queue=queue, kind=kind, state=state
            ),
            lambda response: response.jobs,
        )

    @staticmethod
    def cancel(job_id: str) -> Unary[jobs_pb2.Job]:
        """Cancel a job that has not finished; a running job's worker learns it at heartbeat."""
        return Unary("CancelJob", jobs_pb2.CancelJobRequest(job_id=job_id), _job, idempotent=True)

    @staticmethod
    def retry(job_id: str, *, delay: Seconds | None = None) -> Unary[jobs_pb2.Job]:
        """Put a DEAD or CANCELLED job back in its queue with a fresh budget of attempts."""
        request = jobs_pb2.RetryJobRequest(job_id=job_id)
        if delay is not None:
            request.delay.CopyFrom(to_duration(delay))
        return Unary("RetryJob", request, _job)

    @staticmethod
    def stats(queue: str = "", *, count_limit: int = 0) -> Collected[jobs_pb2.QueueStats]:
        """Counts per state and priority of one queue, or of every queue (fetched page
        by page), in queue order. With `count_limit` each queue's count of a state
        stops at that many jobs (the state is then listed in `capped_states`)."""
        return Collected(
            "GetQueueStats",
            lambda token: jobs_pb2.GetQueueStatsRequest(
                queue=queue, page_token=token, count_limit=count_limit
            ),
            lambda response: response.queues,
        )

    @staticmethod
    def watch(
        *,
        queue: str = "",
        kind: str = "",
        job_ids: Sequence[str] = (),
        after_change_id: int | None = None,
    ) -> Stream[jobs_pb2.JobChange]:
        """State changes of matching jobs as they commit, until the caller stops.

        Without `after_change_id`, changes from when the stream started; with
        it, every change after that id still kept (0: the oldest kept).
        """
        request = jobs_pb2.WatchJobsRequest(queue=queue, kind=kind, job_ids=job_ids)
        if after_change_id is not None:
            request.after_change_id = after_change_id
        return Stream("WatchJobs", request, lambda response: response.changes.changes)

    # -- workers -------------------------------------------------------------------

    @staticmethod
    def lease(
        queue: str = "default",
        kinds: Sequence[str] = (),
        *,
        worker_id: str,
        max_jobs: int = 1,
        lease_duration: Seconds | None = None,
        wait: Seconds | None = None,
    ) -> Unary[builtins.list[jobs_pb2.Job]]:
        """Lease up to `max_jobs` runnable jobs; with `wait`, long-poll for them.

        The call's deadline is the client's timeout plus `wait`.
        """
        request = jobs_pb2.LeaseJobsRequest(
            queue=queue, kinds=kinds, worker_id=worker_id, max_jobs=max_jobs
        )
        if lease_duration is not None:
            request.lease_duration.CopyFrom(to_duration(lease_duration))
        extra = 0.0
        if wait is not None:
            request.wait.CopyFrom(to_duration(wait))
            extra = request.wait.ToTimedelta().total_seconds()
        return Unary(
            "LeaseJobs", request, lambda response: builtins.list(response.jobs), extra_timeout=extra
        )

    @staticmethod
    def heartbeat(
        job_id: str, lease_id: str, *, lease_duration: Seconds | None = None
    ) -> Unary[jobs_pb2.HeartbeatJobResponse]:
        """Extend a lease; the response says whether the job was cancelled."""
        request = jobs_pb2.HeartbeatJobRequest(job_id=job_id, lease_id=lease_id)
        if lease_duration is not None:
            request.lease_duration.CopyFrom(to_duration(lease_duration))
        return Unary("HeartbeatJob", request, whole, idempotent=True)

    @staticmethod
    def complete(
        job_id: str, lease_id: str, result: Mapping[str, Any] | None = None
    ) -> Unary[jobs_pb2.Job]:
        """Mark a leased job SUCCEEDED; raises FAILED_PRECONDITION if the lease is stale."""
        return Unary(
            "CompleteJob",
            jobs_pb2.CompleteJobRequest(job_id=job_id, lease_id=lease_id, result=to_struct(result)),
            _job,
            idempotent=True,
        )

    @staticmethod
    def fail(
        job_id: str,
        lease_id: str,
        error: str,
        *,
        retryable: bool = True,
        retry_delay: Seconds | None = None,
    ) -> Unary[jobs_pb2.Job]:
        """Record a failed attempt: retried after a backoff while attempts remain, else DEAD."""
        request = jobs_pb2.FailJobRequest(
            job_id=job_id, lease_id=lease_id, error=error, retryable=retryable
        )
        if retry_delay is not None:
            request.retry_delay.CopyFrom(to_duration(retry_delay))
        return Unary("FailJob", request, _job)


def _job(response: Any) -> jobs_pb2.Job:
    job: jobs_pb2.Job = response.job
    return job


# -- what both worker loops share ---------------------------------------------------


class Held:
    """The leased jobs a worker loop holds and has not settled, shared with the loop's
    heartbeats (behind a lock: the blocking loop heartbeats on a thread)."""

    def __init__(self) -> None:
        self._items: dict[str, Leased] = {}
        self._lock = threading.Lock()

    def add(self, items: Iterable[Leased]) -> None:
        """Hold `items` until they are settled."""
        with self._lock:
            self._items.update((item.id, item) for item in items)

    def drop(self, job_id: str) -> None:
        """Stop holding a job (settled, lost or cancelled)."""
        with self._lock:
            self._items.pop(job_id, None)

    def unsettled(self) -> builtins.list[Leased]:
        """The held jobs whose leases still need extending."""
        with self._lock:
            return [item for item in self._items.values() if not item.done]

    def after_heartbeat(
        self,
        item: Leased,
        beat: jobs_pb2.HeartbeatJobResponse | None,
        error: StatekeeperError | None = None,
    ) -> None:
        """Mark `item` cancelled or lost (and stop holding it) as its heartbeat's answer
        or failure says; any other failure is logged and tried at the next beat."""
        if error is not None:
            if error.code() in LOST_CODES:
                log.warning("lost the lease of job %s: %s", item.id, error.details())
                item.lost = True
                self.drop(item.id)
            else:
                log.warning("heartbeat of job %s failed: %s", item.id, error.details())
        elif beat is not None and beat.cancelled:
            item.cancelled = True
            self.drop(item.id)


def lease_pause(error: StatekeeperError, queue: str, pause: float) -> float:
    """After a failed lease: re-raise an error that waiting will not cure, else log it
    and return the pause to take (`pause`, the next one doubling up to MAX_PAUSE)."""
    if error.code() not in RETRY_CODES:
        raise error
    log.warning("leasing from %s failed, retrying in %.1f s: %s", queue, pause, error)
    return pause


def next_pause(pause: float) -> float:
    """The pause after `pause` when leasing keeps failing."""
    return min(pause * 2, MAX_PAUSE)


class Leased:
    """One leased job inside a worker loop (see `WorkItem` and `BlockingWorkItem`).

    `payload` is the job's payload as a dict (JSON numbers are floats); set
    `result` to a JSON-like dict to complete the job with it. `cancelled`
    turns true when a heartbeat learns the job was cancelled (stop working
    on it: completing it will be refused), `lost` when the lease was lost.
    """

    def __init__(self, job: jobs_pb2.Job) -> None:
        self.job = job
        self.payload: dict[str, Any] = json_format.MessageToDict(job.payload)
        self.result: dict[str, Any] | None = None
        self.cancelled = False
        self.lost = False
        self.done = False

    @property
    def id(self) -> str:
        """The job's id."""
        return self.job.job_id

    @property
    def lease_id(self) -> str:
        """The id of the lease this worker holds."""
        return self.job.lease.lease_id

    @property
    def kind(self) -> str:
        """The job's kind."""
        return self.job.kind

    @property
    def attempt(self) -> int:
        """Which attempt this is (1 for the first)."""
        return self.job.attempt

    def _failure(self, exc: BaseException) -> str | None:
        """The error to fail the attempt with after the body raised `exc` (logged);
        None when it is not the body's failure (KeyboardInterrupt, ...) or the job
        is settled already."""
        if not isinstance(exc, Exception):
            return None
        log.warning("job %s (%s) failed: %r", self.id, self.kind, exc, exc_info=exc)
        return None if self.done else f"{type(exc).__name__}: {exc}"

    def _refused(self, error: StatekeeperError) -> None:
        log.warning(
            "job %s could not be settled: %s %s", self.id, error.code().name, error.details()
        )


# -- asyncio -------------------------------------------------------------------------


class JobsClient(aio.Family):
    """Enqueue, inspect, lease and settle jobs; `work` is the worker loop."""

    stub = jobs_pb2_grpc.JobServiceStub
    enqueue = aio.unary(JobCalls.enqueue)
    enqueue_many = aio.unary(JobCalls.enqueue_many)
    append_event_later = aio.unary(JobCalls.append_event_later)
    publish_event = aio.unary(JobCalls.publish_event)
    get = aio.unary(JobCalls.get)
    list = aio.pages(JobCalls.list)
    cancel = aio.unary(JobCalls.cancel)
    retry = aio.unary(JobCalls.retry)
    stats = aio.collected(JobCalls.stats)
    watch = aio.stream(JobCalls.watch)
    lease = aio.unary(JobCalls.lease)
    heartbeat = aio.unary(JobCalls.heartbeat)
    complete = aio.unary(JobCalls.complete)
    fail = aio.unary(JobCalls.fail)

    async def work(
        self,
        queue: str = "default",
        kinds: Sequence[str] = (),
        *,
        worker_id: str | None = None,
        max_jobs: int = 1,
        lease_duration: float = 30.0,
        wait: float = 20.0,
    ) -> AsyncGenerator[WorkItem, None]:
        """Lease jobs of `queue` (of `kinds`, or any) forever and hand them out one by one.

        Leases long-poll for up to `wait` seconds; every held job's lease is
        extended every `lease_duration / 3` seconds until it is settled. A
        job is settled by its `async with` block, by `complete`/`fail`, or,
        failing those, completed when the loop asks for the next job. An
        unavailable server is retried with a growing pause. Close the
        iterator (`contextlib.aclosing`) to stop heartbeats at once when
        leaving the loop early; unsettled jobs then come back to the queue
        when their leases expire.
        """
        worker = worker_id or default_worker_id()
        held = Held()
        keeper = asyncio.ensure_future(self._keep_leases(held, lease_duration))
        pause = FIRST_PAUSE
        try:
            while True:
                try:
                    jobs = await self.lease(
                        queue,
                        kinds,
                        worker_id=worker,
                        max_jobs=max_jobs,
                        lease_duration=lease_duration,
                        wait=wait,
                    )
                except StatekeeperError as error:
                    await asyncio.sleep(lease_pause(error, queue, pause))
                    pause = next_pause(pause)
                    continue
                pause = FIRST_PAUSE
                items = [WorkItem(self, job) for job in jobs]
                held.add(items)
                for item in items:
                    yield item
                    if not item.done:
                        await item._settle(item.complete())
                    held.drop(item.id)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _keep_leases(self, held: Held, lease_duration: float) -> None:
        """Extend the lease of every held, unsettled job every third of its duration."""
        while True:
            await asyncio.sleep(lease_duration / 3)
            for item in held.unsettled():
                try:
                    beat = await self.heartbeat(
                        item.id, item.lease_id, lease_duration=lease_duration
                    )
                except StatekeeperError as error:
                    held.after_heartbeat(item, None, error)
                    continue
                held.after_heartbeat(item, beat)


class WorkItem(Leased):
    """One leased job inside `JobsClient.work`; `async with item:` settles it."""

    def __init__(self, jobs: JobsClient, job: jobs_pb2.Job) -> None:
        super().__init__(job)
        self._jobs = jobs

    async def complete(self, result: Mapping[str, Any] | None = None) -> jobs_pb2.Job:
        """Mark the job SUCCEEDED with `result` (else `self.result`)."""
        self.done = True
        return await self._jobs.complete(
            self.id, self.lease_id, result if result is not None else self.result
        )

    async def fail(
        self, error: str, *, retryable: bool = True, retry_delay: Seconds | None = None
    ) -> jobs_pb2.Job:
        """Record this attempt as failed (see `JobsClient.fail`)."""
        self.done = True
        return await self._jobs.fail(
            self.id, self.lease_id, error, retryable=retryable, retry_delay=retry_delay
        )

    async def _settle(self, settling: Awaitable[object]) -> None:
        """Await a completion or failure made for the worker; log a refusal, never raise it."""
        try:
            await settling
        except StatekeeperError as error:
            self._refused(error)

    async def __aenter__(self) -> WorkItem:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        """Complete on success; on an exception fail the attempt retryably and swallow it."""
        if exc is None:
            if not self.done:
                await self._settle(self.complete())
            return False
        if not isinstance(exc, Exception):
            return False
        failure = self._failure(exc)
        if failure is not None:
            await self._settle(self.fail(failure, retryable=True))
        return True


# -- blocking ------------------------------------------------------------------------


class BlockingJobsClient(sync.Family):
    """Enqueue, inspect, lease and settle jobs; `work` is the worker loop (blocking)."""

    stub = jobs_pb2_grpc.JobServiceStub
    enqueue = sync.unary(JobCalls.enqueue)
    enqueue_many = sync.unary(JobCalls.enqueue_many)
    append_event_later = sync.unary(JobCalls.append_event_later)
    publish_event = sync.unary(JobCalls.publish_event)
    get = sync.unary(JobCalls.get)
    list = sync.pages(JobCalls.list)
    cancel = sync.unary(JobCalls.cancel)
    retry = sync.unary(JobCalls.retry)
    stats = sync.collected(JobCalls.stats)
    watch = sync.stream(JobCalls.watch)
    lease = sync.unary(JobCalls.lease)
    heartbeat = sync.unary(JobCalls.heartbeat)
    complete = sync.unary(JobCalls.complete)
    fail = sync.unary(JobCalls.fail)

    def work(
        self,
        queue: str = "default",
        kinds: Sequence[str] = (),
        *,
        worker_id: str | None = None,
        max_jobs: int = 1,
        lease_duration: float = 30.0,
        wait: float = 20.0,
    ) -> Generator[BlockingWorkItem, None, None]:
        """Lease jobs of `queue` (of `kinds`, or any) forever and hand them out one by one:
        blocking, otherwise as `JobsClient.work`, with `with item:` for `async with`.

        The heartbeats run on a thread of their own from the first lease until
        the iterator is closed (`contextlib.closing`, or the end of a `for`
        that breaks out and drops it).
        """
        worker = worker_id or default_worker_id()
        held = Held()
        stop = threading.Event()
        keeper = threading.Thread(
            target=self._keep_leases,
            args=(held, lease_duration, stop),
            name=f"statekeeper-heartbeats-{worker}",
            daemon=True,
        )
        keeper.start()
        pause = FIRST_PAUSE
        try:
            while True:
                try:
                    jobs = self.lease(
                        queue,
                        kinds,
                        worker_id=worker,
                        max_jobs=max_jobs,
                        lease_duration=lease_duration,
                        wait=wait,
                    )
                except StatekeeperError as error:
                    time.sleep(lease_pause(error, queue, pause))
                    pause = next_pause(pause)
                    continue
                pause = FIRST_PAUSE
                items = [BlockingWorkItem(self, job) for job in jobs]
                held.add(items)
                for item in items:
                    yield item
                    if not item.done:
                        item._settle(item.complete)
                    held.drop(item.id)
        finally:
            stop.set()
            keeper.join()

    def _keep_leases(self, held: Held, lease_duration: float, stop: threading.Event) -> None:
        """Extend the lease of every held, unsettled job every third of its duration,
        until `stop` is set."""
        while not stop.wait(lease_duration / 3):
            for item in held.unsettled():
                try:
                    beat = self.heartbeat(item.id, item.lease_id, lease_duration=lease_duration)
                except StatekeeperError as error:
                    held.after_heartbeat(item, None, error)
                    continue
                held.after_heartbeat(item, beat)


class BlockingWorkItem(Leased):
    """One leased job inside `BlockingJobsClient.work`; `with item:` settles it."""

    def __init__(self, jobs: BlockingJobsClient, job: jobs_pb2.Job) -> None:
        super().__init__(job)
        self._jobs = jobs

    def complete(self, result: Mapping[str, Any] | None = None) -> jobs_pb2.Job:
        """Mark the job SUCCEEDED with `result` (else `self.result`)."""
        self.done = True
        return self._jobs.complete(
            self.id, self.lease_id, result if result is not None else self.result
        )

    def fail(
        self, error: str, *, retryable: bool = True, retry_delay: Seconds | None = None
    ) -> jobs_pb2.Job:
        """Record this attempt as failed (see `JobsClient.fail`)."""
        self.done = True
        return self._jobs.fail(
            self.id, self.lease_id, error, retryable=retryable, retry_delay=retry_delay
        )

    def _settle(self, settling: Callable[[], object]) -> None:
        """Make a completion or failure for the worker; log a refusal, never raise it."""
        try:
            settling()
        except StatekeeperError as error:
            self._refused(error)

    def __enter__(self) -> BlockingWorkItem:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        """Complete on success; on an exception fail the attempt retryably and swallow it."""
        if exc is None:
            if not self.done:
                self._settle(self.complete)
            return False
        if not isinstance(exc, Exception):
            return False
        failure = self._failure(exc)
        if failure is not None:
            self._settle(lambda: self.fail(failure, retryable=True))
        return True


__all__ = [
    "APPEND_EVENT_KIND",
    "PUBLISH_EVENT_KIND",
    "BlockingJobsClient",
    "BlockingWorkItem",
    "JobsClient",
    "WorkItem",
    "append_event_spec",
    "job_spec",
    "publish_event_spec",
]
