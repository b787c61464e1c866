"""JobService: validation of requests in front of the job store, and long-polling.

Enqueues and completions answer with wire bytes (see `wire`): each job is
encoded once, never copied into a response message first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Coroutine, Sequence
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from statekeeper.v1 import events_pb2, jobs_pb2, jobs_pb2_grpc
from statekeeper_server.config import Settings
from statekeeper_server.errors import InvalidArgument, Unavailable
from statekeeper_server.limits import WATCH_BATCH_BYTES
from statekeeper_server.notifier import Notifier
from statekeeper_server.offload import off_loop_if_large
from statekeeper_server.publish.sinks import Sinks
from statekeeper_server.services.context import request_namespace
from statekeeper_server.services.job_runner import (
    BUILTIN_KINDS,
    REREAD_INTERVAL,
    BuiltinJobRunner,
    SweepSettings,
    parse_append_event,
    seconds_until,
    sweep_jobs,
    wait_for_wake,
)
from statekeeper_server.services.publish_job import PUBLISH_EVENT_KIND, parse_publish_event
from statekeeper_server.stores.events import EventStore
from statekeeper_server.stores.jobs import (
    BUILTIN_QUEUE,
    DEFAULT_BACKOFF_BASE_US,
    DEFAULT_BACKOFF_CAP_US,
    DEFAULT_MAX_RETRIES,
    DEFAULT_QUEUE,
    MAX_BACKOFF_CAP_US,
    MAX_RETRIES_LIMIT,
    RESERVED_PREFIX,
    ChangeFilter,
    JobFilter,
    JobStore,
    NewJob,
    changes_key,
    queue_key,
)
from statekeeper_server.stream_buffers import StreamBuffers
from statekeeper_server.stream_turns import StreamTurns
from statekeeper_server.timestamps import duration_us, from_timestamp, now_us, to_timestamp
from statekeeper_server.validation import enum_value, optional_id, page_size, require_id
from statekeeper_server.wire import (
    message_field,
    packed_bool_field,
    repeated_message_field,
    uint_field,
)

Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_BATCH_JOBS = 1000
MAX_LEASE_JOBS = 100
MAX_FILTER_IDS = 100
MAX_IDEMPOTENCY_KEY_LENGTH = 256
MIN_LEASE_US = 1_000
MAX_LEASE_US = 86_400_000_000
MAX_DELAY_US = 365 * 86_400_000_000
MAX_WAIT_SECONDS = 300.0
DEADLINE_MARGIN_SECONDS = 1.0
"""A long poll answers this long (or a tenth of the deadline) before the deadline."""
WATCH_BATCH = 500
"""Most changes per batch of a watch (its stream buffer grant, at most WATCH_BATCH_BYTES,
bounds its bytes)."""
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
JOB_PRIORITIES = frozenset(jobs_pb2.JobPriority.values())
JOB_STATES = frozenset(jobs_pb2.JobState.values())


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    """Serves JobService from a JobStore, and runs the queue's background work."""

    service_name = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name

    def __init__(
        self,
        jobs: JobStore,
        events: EventStore,
        notifier: Notifier,
        settings: Settings,
        stopping: asyncio.Event,
        buffers: StreamBuffers,
        turns: StreamTurns,
        sinks: Sinks,
    ) -> None:
        """`buffers` is the server's stream buffer budget and `turns` the turns its streams
        take to read and send, both shared with every stream of the server; `sinks` are
        those `statekeeper.publish_event` jobs may name."""
        self._sinks = sinks
        self._buffers = buffers
        self._turns = turns
        self._jobs = jobs
        self._events = events
        self._notifier = notifier
        self._stopping = stopping
        self._settings = settings
        self._default_lease_us = int(settings.job_lease_duration * 1_000_000)

    def add_to(self, server: grpc.aio.Server) -> None:
        """Register this servicer on `server`."""
        jobs_pb2_grpc.add_JobServiceServicer_to_server(self, server)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """The sweeper and the built-in job runner."""
        sweep = SweepSettings(
            interval=self._settings.job_sweep_interval,
            job_retention=self._settings.job_retention,
            change_retention=self._settings.job_change_retention,
        )
        runner = BuiltinJobRunner(
            self._jobs,
            self._events,
            self._notifier,
            self._stopping,
            self._default_lease_us,
            self._sinks,
        )
        return [sweep_jobs(self._jobs, self._notifier, self._stopping, sweep), runner.run()]

    async def EnqueueJob(  # type: ignore[override]  # answers with wire bytes
        self, request: jobs_pb2.EnqueueJobRequest, context: Context
    ) -> bytes:
        """Validate and store one job; the EnqueueJobResponse's wire bytes."""
        namespace = request_namespace(context)
        if not request.HasField("job"):
            raise InvalidArgument("job", "is required")
        specs = await new_jobs([request.job], ["job"], self._sinks.specs)
        [enqueued] = await self._jobs.enqueue(namespace, specs)
        response = jobs_pb2.EnqueueJobResponse
        return message_field(response.JOB_FIELD_NUMBER, enqueued.encoded) + uint_field(
            response.CREATED_FIELD_NUMBER, enqueued.created
        )

    async def EnqueueJobs(  # type: ignore[override]  # answers with wire bytes
        self, request: jobs_pb2.EnqueueJobsRequest, context: Context
    ) -> bytes:
        """Validate every job, then store them all in one transaction; the
        EnqueueJobsResponse's wire bytes."""
        namespace = request_namespace(context)
        if not 1 <= len(request.jobs) <= MAX_BATCH_JOBS:
            raise InvalidArgument("jobs", f"must hold 1 to {MAX_BATCH_JOBS} jobs")
        specs = await new_jobs(
            request.jobs, [f"jobs[{i}]" for i in range(len(request.jobs))], self._sinks.specs
        )
        enqueued = await self._jobs.enqueue(namespace, specs)
        response = jobs_pb2.EnqueueJobsResponse
        return repeated_message_field(
            response.JOBS_FIELD_NUMBER, [item.encoded for item in enqueued]
        ) + packed_bool_field(response.CREATED_FIELD_NUMBER, [item.created for item in enqueued])

    async def LeaseJobs(
        self, request: jobs_pb2.LeaseJobsRequest, context: Context
    ) -> jobs_pb2.LeaseJobsResponse:
        """Lease runnable jobs; with `wait`, sleep until one may be runnable, then retry."""
        namespace = request_namespace(context)
        queue = worker_queue(request.queue, "queue")
        if len(request.kinds) > MAX_FILTER_IDS:
            raise InvalidArgument("kinds", f"must hold at most {MAX_FILTER_IDS} kinds")
        kinds = [require_id(kind, f"kinds[{i}]") for i, kind in enumerate(request.kinds)]
        worker_id = require_id(request.worker_id, "worker_id")
        count = page_size(request.max_jobs, "max_jobs", default=1, maximum=MAX_LEASE_JOBS)
        lease_us = self._lease_us(request, "lease_duration")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_seconds(request, context)
        key = queue_key(namespace, queue)
        while True:
            wake = self._notifier.watch(key)
            leased = await self._jobs.lease(namespace, queue, kinds, worker_id, count, lease_us)
            remaining = deadline - loop.time()
            if leased.jobs or remaining <= 0 or self._stopping.is_set():
                return jobs_pb2.LeaseJobsResponse(jobs=[item.job for item in leased.jobs])
            limit = min(remaining, REREAD_INTERVAL)
            await wait_for_wake(wake, self._stopping, seconds_until(leased.next_due_us, limit))

    async def HeartbeatJob(
        self, request: jobs_pb2.HeartbeatJobRequest, context: Context
    ) -> jobs_pb2.HeartbeatJobResponse:
        """Extend the lease, or say the job was cancelled."""
        namespace = request_namespace(context)
        job_id = require_id(request.job_id, "job_id")
        lease_id = require_id(request.lease_id, "lease_id")
        lease_us = self._lease_us(request, "lease_duration")
        beat = await self._jobs.heartbeat(namespace, job_id, lease_id, lease_us)
        return jobs_pb2.HeartbeatJobResponse(lease=beat.lease, cancelled=beat.cancelled)

    async def CompleteJob(  # type: ignore[override]  # answers with wire bytes
        self, request: jobs_pb2.CompleteJobRequest, context: Context
    ) -> bytes:
        """Mark the leased job SUCCEEDED; the CompleteJobResponse's wire bytes."""
        namespace = request_namespace(context)
        job_id = require_id(request.job_id, "job_id")
        lease_id = require_id(request.lease_id, "lease_id")
        job = await self._jobs.complete(namespace, job_id, lease_id, request.result)
        return message_field(jobs_pb2.CompleteJobResponse.JOB_FIELD_NUMBER, job.SerializeToString())

    async def FailJob(
        self, request: jobs_pb2.FailJobRequest, context: Context
    ) -> jobs_pb2.FailJobResponse:
        """Record a failed attempt of the leased job."""
        namespace = request_namespace(context)
        job_id = require_id(request.job_id, "job_id")
        lease_id = require_id(request.lease_id, "lease_id")
        retry_delay = None
        if request.HasField("retry_delay"):
            retry_delay = bounded_duration(request.retry_delay, "retry_delay", MAX_DELAY_US)
        job = await self._jobs.fail(
            namespace,
            job_id,
            lease_id,
            request.error,
            request.retryable,
            retry_delay,
        )
        return jobs_pb2.FailJobResponse(job=job)

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: Context
    ) -> jobs_pb2.CancelJobResponse:
        """Cancel the job."""
        namespace = request_namespace(context)
        job = await self._jobs.cancel(namespace, require_id(request.job_id, "job_id"))
        return jobs_pb2.CancelJobResponse(job=job)

    async def RetryJob(
        self, request: jobs_pb2.RetryJobRequest, context: Context
    ) -> jobs_pb2.RetryJobResponse:
        """Put a DEAD or CANCELLED job back in its queue."""
        namespace = request_namespace(context)
        job_id = require_id(request.job_id, "job_id")
        delay = bounded_duration(request.delay, "delay", MAX_DELAY_US)
        return jobs_pb2.RetryJobResponse(job=await self._jobs.retry(namespace, job_id, delay))

    async def GetJob(  # type: ignore[override]  # answers with wire bytes
        self, request: jobs_pb2.GetJobRequest, context: Context
    ) -> bytes:
        """The job as it stands now; the GetJobResponse's wire bytes (no copy of the job
        into a response to encode)."""
        namespace = request_namespace(context)
        job = await self._jobs.get(namespace, require_id(request.job_id, "job_id"))
        return message_field(jobs_pb2.GetJobResponse.JOB_FIELD_NUMBER, job.SerializeToString())

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: Context
    ) -> jobs_pb2.ListJobsResponse:
        """A page of jobs in enqueue order."""
        namespace = request_namespace(context)
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        where = JobFilter(
            queue=optional_id(request.queue, "queue"),
            kind=optional_id(request.kind, "kind"),
            state=enum_value(request.state, "state", JOB_STATES, required=False),
        )
        page = await self._jobs.list(namespace, where, size, request.page_token)
        return jobs_pb2.ListJobsResponse(jobs=page.jobs, next_page_token=page.next_page_token)

    async def GetQueueStats(
        self, request: jobs_pb2.GetQueueStatsRequest, context: Context
    ) -> jobs_pb2.GetQueueStatsResponse:
        """Counts per queue, state and priority, a page of queues at a time (each count
        stopping at `count_limit` when set)."""
        namespace = request_namespace(context)
        queue = optional_id(request.queue, "queue")
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        page = await self._jobs.stats(
            namespace, queue, size, request.page_token, request.count_limit
        )
        return jobs_pb2.GetQueueStatsResponse(
            queues=page.queues, next_page_token=page.next_page_token
        )

    async def WatchJobs(
        self, request: jobs_pb2.WatchJobsRequest, context: Context
    ) -> AsyncIterator[jobs_pb2.WatchJobsResponse]:
        """`started`, then matching changes as they commit, heartbeats when idle.

        Each batch is read and sent in a turn (`StreamTurns`) and holds as
        many bytes of changes as the stream's buffer grants (its share, plus
        what the stream buffer budget has free, up to WATCH_BATCH_BYTES),
        given back once the batch was sent: a watcher that stops reading
        holds its share and what it borrowed for one batch.
        """
        namespace = request_namespace(context)
        if len(request.job_ids) > MAX_FILTER_IDS:
            raise InvalidArgument("job_ids", f"must hold at most {MAX_FILTER_IDS} ids")
        where = ChangeFilter(
            queue=optional_id(request.queue, "queue"),
            kind=optional_id(request.kind, "kind"),
            job_ids=tuple(
                require_id(job_id, f"job_ids[{i}]") for i, job_id in enumerate(request.job_ids)
            ),
        )
        if request.HasField("after_change_id"):
            position = request.after_change_id
        else:
            position = await self._jobs.change_position()
        started = False
        key = changes_key(namespace)
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        buffer = self._buffers.open()
        try:
            while True:
                wake = self._notifier.watch(key)
                turn = await self._turns.take()
                try:
                    grant = buffer.grant(WATCH_BATCH_BYTES)
                    assert grant is not None  # nothing else is held: the share at least
                    page = await self._jobs.changes(
                        namespace, where, position, WATCH_BATCH, grant.size
                    )
                    if not started:
                        started = True
                        yield jobs_pb2.WatchJobsResponse(
                            started=jobs_pb2.JobWatchStarted(change_id=position)
                        )
                    position, more = page.through, page.more
                    if page.changes:
                        batch = jobs_pb2.WatchJobsResponse(
                            changes=jobs_pb2.JobChangeBatch(changes=page.changes)
                        )
                        del page
                        buffer.settle(grant, batch.ByteSize())
                        yield batch
                        del batch
                        last_sent = loop.time()
                    buffer.release(grant)
                finally:
                    self._turns.end(turn)
                if more:
                    continue
                idle_for = self._settings.heartbeat_interval - (loop.time() - last_sent)
                if idle_for <= 0:
                    yield jobs_pb2.WatchJobsResponse(
                        heartbeat=events_pb2.Heartbeat(sent_at=to_timestamp(now_us()))
                    )
                    last_sent, idle_for = loop.time(), self._settings.heartbeat_interval
                await wait_for_wake(wake, self._stopping, min(idle_for, REREAD_INTERVAL))
                if self._stopping.is_set():
                    raise Unavailable(
                        "SERVER_STOPPING",
                        f"the server is shutting down; resume with after_change_id={position}",
                        after_change_id=position,
                    )
        finally:
            buffer.close()

    # -- helpers ---------------------------------------------------------------

    def _lease_us(
        self, request: jobs_pb2.LeaseJobsRequest | jobs_pb2.HeartbeatJobRequest, field: str
    ) -> int:
        if not request.HasField("lease_duration"):
            return self._default_lease_us
        lease_us = bounded_duration(request.lease_duration, field, MAX_LEASE_US)
        if lease_us < MIN_LEASE_US:
            raise InvalidArgument(field, "must be at least 1 ms")
        return lease_us

    @staticmethod
    def _wait_seconds(request: jobs_pb2.LeaseJobsRequest, context: Context) -> float:
        """How long a long poll may wait: `wait`, lowered to fit the call's deadline."""
        wait = bounded_duration(request.wait, "wait", None) / 1_000_000
        wait = min(wait, MAX_WAIT_SECONDS)
        remaining = context.time_remaining()
        if remaining is not None:
            margin = min(DEADLINE_MARGIN_SECONDS, remaining / 10)
            wait = min(wait, remaining - margin)
        return max(wait, 0.0)


def worker_queue(queue: str, field: str) -> str:
    """The queue a worker names: `default` when empty; reserved queues are refused."""
    if not queue:
        return DEFAULT_QUEUE
    require_id(queue, field)
    if queue.startswith(RESERVED_PREFIX):
        raise InvalidArgument(
            field, f"queues starting with {RESERVED_PREFIX} are reserved for the server"
        )
    return queue


def bounded_duration(value: duration_pb2.Duration, field: str, maximum: int | None) -> int:
    """Microseconds of a non-negative Duration, at most `maximum` (None: any)."""
    if value.seconds < 0 or value.nanos < 0:
        raise InvalidArgument(field, "must not be negative")
    micros = duration_us(value)
    if maximum is not None and micros > maximum:
        raise InvalidArgument(field, f"must be at most {maximum // 1_000_000} s")
    return micros


def valid_timestamp(value: timestamp_pb2.Timestamp, field: str) -> int:
    """Microseconds of a Timestamp inside the range protobuf allows."""
    if not MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS or not (
        0 <= value.nanos < 1_000_000_000
    ):
        raise InvalidArgument(field, "must be between 0001-01-01 and 9999-12-31")
    return from_timestamp(value)


async def new_jobs(
    specs: Sequence[jobs_pb2.JobSpec], fields: Sequence[str], sinks: Collection[str]
) -> list[NewJob]:
    """`new_job` of every spec (named by `fields` in errors), off the event loop when
    built-in payloads, which are parsed as JSON, are large."""
    parsed = sum(spec.payload.ByteSize() for spec in specs if spec.kind in BUILTIN_KINDS)
    return await off_loop_if_large(
        parsed,
        lambda: [new_job(spec, field, sinks) for spec, field in zip(specs, fields, strict=True)],
    )


def new_job(spec: jobs_pb2.JobSpec, field: str, sinks: Collection[str]) -> NewJob:
    """Validate `spec` (named `field` in errors) into the job to store.

    Built-in kinds go to BUILTIN_QUEUE and have their payload checked now,
    so a job that could never run is refused at enqueue; a publish_event job
    must name one of `sinks`.
    """
    kind = require_id(spec.kind, f"{field}.kind")
    if kind.startswith(RESERVED_PREFIX):
        if kind not in BUILTIN_KINDS:
            raise InvalidArgument(
                f"{field}.kind",
                f"kinds starting with {RESERVED_PREFIX} are reserved; built-in kinds are "
                + ", ".join(BUILTIN_KINDS),
            )
        if spec.queue not in ("", BUILTIN_QUEUE):
            raise InvalidArgument(
                f"{field}.queue", f"built-in kind {kind} runs on queue {BUILTIN_QUEUE}"
            )
        queue = BUILTIN_QUEUE
        if kind == PUBLISH_EVENT_KIND:
            parse_publish_event(spec.payload, f"{field}.payload", sinks)
        else:
            parse_append_event(spec.payload, f"{field}.payload")
    else:
        queue = worker_queue(spec.queue, f"{field}.queue")
    priority = enum_value(spec.priority, f"{field}.priority", JOB_PRIORITIES, required=False)
    if spec.HasField("run_after") and spec.HasField("delay"):
        raise InvalidArgument(f"{field}.delay", "cannot be set together with run_after")
    run_after = None
    if spec.HasField("run_after"):
        run_after = valid_timestamp(spec.run_after, f"{field}.run_after")
    max_retries = spec.max_retries if spec.HasField("max_retries") else DEFAULT_MAX_RETRIES
    if max_retries > MAX_RETRIES_LIMIT:
        raise InvalidArgument(f"{field}.max_retries", f"must be at most {MAX_RETRIES_LIMIT}")
    if len(spec.idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidArgument(
            f"{field}.idempotency_key",
            f"must be at most {MAX_IDEMPOTENCY_KEY_LENGTH} characters",
        )
    cap = DEFAULT_BACKOFF_CAP_US
    if spec.HasField("retry_backoff_cap"):
        cap = bounded_duration(
            spec.retry_backoff_cap, f"{field}.retry_backoff_cap", MAX_BACKOFF_CAP_US
        )
    base = min(DEFAULT_BACKOFF_BASE_US, cap)
    if spec.HasField("retry_backoff_base"):
        base = bounded_duration(spec.retry_backoff_base, f"{field}.retry_backoff_base", None)
        if base > cap:
            raise InvalidArgument(
                f"{field}.retry_backoff_base", "must not exceed retry_backoff_cap"
            )
    return NewJob(
        queue=queue,
        kind=kind,
        payload=spec.payload,
        priority=priority or jobs_pb2.JOB_PRIORITY_NORMAL,
        run_after_us=run_after,
        delay_us=bounded_duration(spec.delay, f"{field}.delay", MAX_DELAY_US),
        max_retries=max_retries,
        idempotency_key=spec.idempotency_key,
        backoff_base_us=base,
        backoff_cap_us=cap,
    )
