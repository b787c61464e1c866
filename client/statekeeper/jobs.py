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
`await job.complete(...)` or `await job.fail(...)`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeAlias

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2

from statekeeper._calls import CallOptions
from statekeeper.v1 import events_pb2, jobs_pb2, jobs_pb2_grpc

SERVICE = "statekeeper.v1.JobService"
IDEMPOTENT = [
    (SERVICE, "GetJob"),
    (SERVICE, "ListJobs"),
    (SERVICE, "GetQueueStats"),
    (SERVICE, "HeartbeatJob"),
    (SERVICE, "CompleteJob"),
    (SERVICE, "CancelJob"),
]
"""Calls the channel may retry on UNAVAILABLE. A repeated completion with the
same lease returns the job again; enqueues, leases, failures and retries
are not repeated behind the caller's back."""

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
MAX_PAUSE = 5.0

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


class JobsClient:
    """Enqueue, inspect, lease and settle jobs; `work` is the worker loop."""

    def __init__(self, channel: grpc.aio.Channel, options: CallOptions) -> None:
        self._stub = jobs_pb2_grpc.JobServiceStub(channel)
        self._options = options

    # -- producers ---------------------------------------------------------------

    async def enqueue(
        self,
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
    ) -> jobs_pb2.Job:
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
        response = await self._stub.EnqueueJob(
            jobs_pb2.EnqueueJobRequest(job=spec),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return response.job

    async def enqueue_many(self, specs: Iterable[jobs_pb2.JobSpec]) -> builtins.list[jobs_pb2.Job]:
        """Enqueue several jobs (built with `job_spec`) atomically; all or none."""
        response = await self._stub.EnqueueJobs(
            jobs_pb2.EnqueueJobsRequest(jobs=specs),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return list(response.jobs)

    async def append_event_later(
        self, run_id: str, event: events_pb2.AgentEvent, **options: Any
    ) -> jobs_pb2.Job:
        """Have the server append `event` to `run_id` later (`delay=`, `run_after=`).

        Arguments as for `append_event_spec`. The job's result will hold the
        appended envelope.
        """
        response = await self._stub.EnqueueJob(
            jobs_pb2.EnqueueJobRequest(job=append_event_spec(run_id, event, **options)),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return response.job

    async def publish_event(self, sink: str, run_id: str, **options: Any) -> jobs_pb2.Job:
        """Have the server publish an event to its sink `sink`, with the queue's retries:
        `event=` (an AgentEvent, as an envelope of `run_id`) or `seq=` (the stored
        envelope of `run_id`).

        Arguments as for `publish_event_spec`. The job's result names the sink,
        run, seq and event id published.
        """
        response = await self._stub.EnqueueJob(
            jobs_pb2.EnqueueJobRequest(job=publish_event_spec(sink, run_id, **options)),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return response.job

    # -- inspection and control -------------------------------------------------

    async def get(self, job_id: str) -> jobs_pb2.Job:
        """The job as it stands now; raises NOT_FOUND for an unknown job."""
        response = await self._stub.GetJob(
            jobs_pb2.GetJobRequest(job_id=job_id),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return response.job

    async def list(
        self,
        *,
        queue: str = "",
        kind: str = "",
        state: jobs_pb2.JobState.ValueType = jobs_pb2.JOB_STATE_UNSPECIFIED,
        page_size: int = 0,
    ) -> AsyncIterator[jobs_pb2.Job]:
        """Every job matching the filters, in enqueue order, page by page."""
        token = ""
        while True:
            response = await self._stub.ListJobs(
                jobs_pb2.ListJobsRequest(
                    page_size=page_size, page_token=token, queue=queue, kind=kind, state=state
                ),
                metadata=self._options.metadata,
                timeout=self._options.timeout,
            )
            for job in response.jobs:
                yield job
            token = response.next_page_token
            if not token:
                return

    async def cancel(self, job_id: str) -> jobs_pb2.Job:
        """Cancel a job that has not finished; a running job's worker learns it at heartbeat."""
        response = await self._stub.CancelJob(
            jobs_pb2.CancelJobRequest(job_id=job_id),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return response.job

    async def retry(self, job_id: str, *, delay: Seconds | None = None) -> jobs_pb2.Job:
        """Put a DEAD or CANCELLED job back in its queue with a fresh budget of attempts."""
        request = jobs_pb2.RetryJobRequest(job_id=job_id)
        if delay is not None:
            request.delay.CopyFrom(to_duration(delay))
        response = await self._stub.RetryJob(
            request, metadata=self._options.metadata, timeout=self._options.timeout
        )
        return response.job

    async def stats(self, queue: str = "") -> builtins.list[jobs_pb2.QueueStats]:
        """Counts per state and priority of one queue, or of every queue (fetched page
        by page), in queue order."""
        queues: builtins.list[jobs_pb2.QueueStats] = []
        token = ""
        while True:
            response = await self._stub.GetQueueStats(
                jobs_pb2.GetQueueStatsRequest(queue=queue, page_token=token),
                metadata=self._options.metadata,
                timeout=self._options.timeout,
            )
            queues += response.queues
            token = response.next_page_token
            if not token:
                return queues

    async def watch(
        self,
        *,
        queue: str = "",
        kind: str = "",
        job_ids: Sequence[str] = (),
        after_change_id: int | None = None,
    ) -> AsyncIterator[jobs_pb2.JobChange]:
        """State changes of matching jobs as they commit, until the caller stops.

        Without `after_change_id`, changes from when the stream started; with
        it, every change after that id still kept (0: the oldest kept).
        """
        request = jobs_pb2.WatchJobsRequest(queue=queue, kind=kind, job_ids=job_ids)
        if after_change_id is not None:
            request.after_change_id = after_change_id
        call = self._stub.WatchJobs(request, metadata=self._options.metadata)
        try:
            async for response in call:
                for change in response.changes.changes:
                    yield change
        finally:
            call.cancel()

    # -- workers -------------------------------------------------------------------

    async def lease(
        self,
        queue: str = "default",
        kinds: Sequence[str] = (),
        *,
        worker_id: str,
        max_jobs: int = 1,
        lease_duration: Seconds | None = None,
        wait: Seconds | None = None,
    ) -> builtins.list[jobs_pb2.Job]:
        """Lease up to `max_jobs` runnable jobs; with `wait`, long-poll for them.

        The call's deadline is the client's timeout plus `wait`.
        """
        request = jobs_pb2.LeaseJobsRequest(
            queue=queue, kinds=kinds, worker_id=worker_id, max_jobs=max_jobs
        )
        if lease_duration is not None:
            request.lease_duration.CopyFrom(to_duration(lease_duration))
        timeout = self._options.timeout
        if wait is not None:
            request.wait.CopyFrom(to_duration(wait))
            if timeout is not None:
                timeout += request.wait.ToTimedelta().total_seconds()
        response = await self._stub.LeaseJobs(
            request, metadata=self._options.metadata, timeout=timeout
        )
        return list(response.jobs)

    async def heartbeat(
        self, job_id: str, lease_id: str, *, lease_duration: Seconds | None = None
    ) -> jobs_pb2.HeartbeatJobResponse:
        """Extend a lease; the response says whether the job was cancelled."""
        request = jobs_pb2.HeartbeatJobRequest(job_id=job_id, lease_id=lease_id)
        if lease_duration is not None:
            request.lease_duration.CopyFrom(to_duration(lease_duration))
        return await self._stub.HeartbeatJob(
            request, metadata=self._options.metadata, timeout=self._options.timeout
        )

    async def complete(
        self, job_id: str, lease_id: str, result: Mapping[str, Any] | None = None
    ) -> jobs_pb2.Job:
        """Mark a leased job SUCCEEDED; raises FAILED_PRECONDITION if the lease is stale."""
        response = await self._stub.CompleteJob(
            jobs_pb2.CompleteJobRequest(job_id=job_id, lease_id=lease_id, result=to_struct(result)),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return response.job

    async def fail(
        self,
        job_id: str,
        lease_id: str,
        error: str,
        *,
        retryable: bool = True,
        retry_delay: Seconds | None = None,
    ) -> jobs_pb2.Job:
        """Record a failed attempt: retried after a backoff while attempts remain, else DEAD."""
        request = jobs_pb2.FailJobRequest(
            job_id=job_id, lease_id=lease_id, error=error, retryable=retryable
        )
        if retry_delay is not None:
            request.retry_delay.CopyFrom(to_duration(retry_delay))
        response = await self._stub.FailJob(
            request, metadata=self._options.metadata, timeout=self._options.timeout
        )
        return response.job

    async def work(
        self,
        queue: str = "default",
        kinds: Sequence[str] = (),
        *,
        worker_id: str | None = None,
        max_jobs: int = 1,
        lease_duration: float = 30.0,
        wait: float = 20.0,
    ) -> AsyncIterator[WorkItem]:
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
        held: dict[str, WorkItem] = {}
        keeper = asyncio.ensure_future(self._keep_leases(held, lease_duration))
        pause = 0.1
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
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in RETRY_CODES:
                        raise
                    log.warning("leasing from %s failed, retrying in %.1f s: %s", queue, pause, exc)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, MAX_PAUSE)
                    continue
                pause = 0.1
                items = [WorkItem(self, job) for job in jobs]
                held.update((item.id, item) for item in items)
                for item in items:
                    yield item
                    if not item.done:
                        await item.settle(item.complete(item.result))
                    held.pop(item.id, None)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _keep_leases(self, held: dict[str, WorkItem], lease_duration: float) -> None:
        """Extend the lease of every held, unsettled job every third of its duration."""
        while True:
            await asyncio.sleep(lease_duration / 3)
            for item in builtins.list(held.values()):
                if item.done:
                    continue
                try:
                    beat = await self.heartbeat(
                        item.id, item.lease_id, lease_duration=lease_duration
                    )
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in LOST_CODES:
                        log.warning("lost the lease of job %s: %s", item.id, exc.details())
                        item.lost = True
                        held.pop(item.id, None)
                    else:
                        log.warning("heartbeat of job %s failed: %s", item.id, exc.details())
                    continue
                if beat.cancelled:
                    item.cancelled = True
                    held.pop(item.id, None)


class WorkItem:
    """One leased job inside `JobsClient.work`.

    `payload` is the job's payload as a dict (JSON numbers are floats); set
    `result` to a JSON-like dict to complete the job with it. `cancelled`
    turns true when a heartbeat learns the job was cancelled (stop working
    on it: completing it will be refused), `lost` when the lease was lost.
    """

    def __init__(self, jobs: JobsClient, job: jobs_pb2.Job) -> None:
        self.job = job
        self.payload: dict[str, Any] = json_format.MessageToDict(job.payload)
        self.result: dict[str, Any] | None = None
        self.cancelled = False
        self.lost = False
        self.done = False
        self._jobs = jobs

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

    async def settle(self, settling: Awaitable[object]) -> None:
        """Await a completion or failure made for the worker; log a refusal, never raise it."""
        try:
            await settling
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "job %s could not be settled: %s %s", self.id, exc.code().name, exc.details()
            )

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
                await self.settle(self.complete())
            return False
        if not isinstance(exc, Exception):
            return False
        log.warning("job %s (%s) failed: %r", self.id, self.kind, exc, exc_info=exc)
        if not self.done:
            await self.settle(self.fail(f"{type(exc).__name__}: {exc}", retryable=True))
        return True


__all__ = [
    "APPEND_EVENT_KIND",
    "PUBLISH_EVENT_KIND",
    "JobsClient",
    "WorkItem",
    "append_event_spec",
    "job_spec",
    "publish_event_spec",
]
