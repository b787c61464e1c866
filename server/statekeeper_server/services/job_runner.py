"""The job queue's background work: the built-in job runner and the sweeper.

The runner leases the jobs of queue `statekeeper.builtin` (in every
namespace) and runs them in this server. Kind `statekeeper.append_event`
appends an event to a run's log; the event id is the payload's `event_id`,
else the job id, so a job that runs twice (after a crash between the append
and the completion) appends once. Kind `statekeeper.publish_event`
publishes an event to a sink (see `publish_job`).

The sweeper promotes jobs whose run_after came, settles expired leases
(waking long-polling leasers), and deletes finished jobs and old change
records past their retention. Both loops wait on the notifier or on the
next timer the store reports, and re-read at least every REREAD_INTERVAL
seconds, so a wake-up lost on its way from another replica only delays.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from statekeeper.v1 import events_pb2, jobs_pb2
from statekeeper_server.errors import InvalidArgument, ServiceError, Unavailable
from statekeeper_server.notifier import Notifier
from statekeeper_server.offload import off_loop_if_large
from statekeeper_server.piecewise import merge_in_pieces
from statekeeper_server.publish.sinks import Sinks
from statekeeper_server.services.job_payloads import (
    json_message,
    set_aside_custom_data,
    string_field,
)
from statekeeper_server.services.publish_job import (
    PUBLISH_EVENT_KIND,
    parse_publish_event,
    publish_event,
)
from statekeeper_server.stores.events import EventStore, validate_event_input, validate_expectation
from statekeeper_server.stores.jobs import (
    ANY_NAMESPACE,
    BUILTIN_QUEUE,
    TIMERS_KEY,
    JobStore,
    LeasedJob,
    queue_key,
)
from statekeeper_server.timestamps import now_us
from statekeeper_server.validation import require_id

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)

APPEND_EVENT_KIND = "statekeeper.append_event"
BUILTIN_KINDS = (APPEND_EVENT_KIND, PUBLISH_EVENT_KIND)
APPEND_EVENT_FIELDS = ("run_id", "event", "event_id", "expectation")
RUNNER_BATCH = 32
ERROR_PAUSE = 1.0
"""Seconds a loop waits after the store failed before it tries again."""
REREAD_INTERVAL = 2.0
"""Most seconds a waiter (long poll, watch, runner) sleeps before re-reading the store
without a wake-up: the periodic safety re-read that bounds the delay a lost
notification from another replica can cause."""
MAX_PURGE_EVERY = 60.0


async def wait_for_wake(
    wake: asyncio.Event, stopping: asyncio.Event, seconds: float | None
) -> bool:
    """Wait until `wake` or `stopping` is set or `seconds` pass; whether one was set."""
    if wake.is_set() or stopping.is_set():
        return True
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopping.wait())]
    try:
        done, _ = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return bool(done)


def seconds_until(due_us: int | None, limit: float | None) -> float | None:
    """Seconds from now until `due_us`, at most `limit` (None: no bound)."""
    if due_us is None:
        return limit
    until = max(0.0, (due_us - now_us()) / 1_000_000)
    return until if limit is None else min(until, limit)


# -- statekeeper.append_event ------------------------------------------------------
# A payload's event data can be a megabyte of JSON. Converting JSON between
# protobuf's Struct and Python dicts costs over a second per megabyte of
# small fields, in pure Python, so the event's custom data never takes that
# path: it is copied as a message (a C call of milliseconds) into the event
# and into the result, and only the small remainder goes through
# json_format. The remainder of a payload that passed enqueue holds only an
# event's small known fields.


@dataclass(frozen=True)
class AppendEventCall:
    """What a `statekeeper.append_event` job appends.

    `input` holds the event as parsed from the payload without its custom
    data; `data` is that data, a part of the payload (not a copy), or None
    when the event carries none. `event_input` puts the two together.
    """

    run_id: str
    input: events_pb2.EventInput
    data: struct_pb2.Struct | None
    expectation: events_pb2.SeqExpectation | None

    def event_input(self, job_id: str) -> events_pb2.EventInput:
        """The input to append, completed in place: the custom data copied into the
        event, and `job_id` as the event id unless the payload names one."""
        item = self.input
        if self.data is not None:
            item.event.custom.data.CopyFrom(self.data)
        item.event_id = item.event_id or job_id
        return item


def parse_append_event(payload: struct_pb2.Struct, field: str) -> AppendEventCall:
    """Read an append_event payload; InvalidArgument naming `<field>.<part>` if it is wrong.

    The payload is `{"run_id", "event" (AgentEvent JSON), "event_id"?,
    "expectation"? (SeqExpectation JSON)}`, validated as the event log
    validates an append.
    """
    fields = payload.fields
    for name in fields:
        if name not in APPEND_EVENT_FIELDS:
            raise InvalidArgument(
                f"{field}.{name}", "is not one of " + ", ".join(APPEND_EVENT_FIELDS)
            )
    run_id = string_field(fields, "run_id")
    if run_id is None:
        raise InvalidArgument(f"{field}.run_id", "is required (a string)")
    require_id(run_id, f"{field}.run_id")
    event_id = string_field(fields, "event_id") if "event_id" in fields else ""
    if event_id is None:
        raise InvalidArgument(f"{field}.event_id", "must be a string")
    item = events_pb2.EventInput(event_id=event_id)
    event_json, data = set_aside_custom_data(fields, f"{field}.event")
    json_message(event_json, item.event, f"{field}.event")
    validate_event_input(item, field)
    expectation = None
    if "expectation" in fields:
        expectation = json_message(
            json_format.MessageToDict(fields["expectation"]),
            events_pb2.SeqExpectation(),
            f"{field}.expectation",
        )
        validate_expectation(expectation, f"{field}.expectation")
    return AppendEventCall(run_id, item, data, expectation)


def _append_call(job: jobs_pb2.Job) -> tuple[AppendEventCall, events_pb2.EventInput]:
    """What an append_event job appends, and the input to append."""
    call = parse_append_event(job.payload, "payload")
    return call, call.event_input(job.job_id)


def append_result(envelope: bytes) -> struct_pb2.Struct:
    """The result of an append_event job: `{"envelope": <EventEnvelope JSON>}`.

    The envelope's custom data is copied into the result as a message; the
    rest of the envelope is converted field by field, as json_format would.
    The envelope is decoded in pieces, so that on a worker thread the event
    loop gets the GIL between them.
    """
    stored = events_pb2.EventEnvelope()
    merge_in_pieces(stored, envelope)
    result = struct_pb2.Struct()
    envelope_json = result.get_or_create_struct("envelope")
    envelope_json.update(json_format.MessageToDict(_without(stored, "event")))
    if not stored.HasField("event"):
        return result
    event_json = envelope_json.get_or_create_struct("event")
    if stored.event.WhichOneof("kind") != "custom":
        event_json.update(json_format.MessageToDict(stored.event))
        return result
    custom = stored.event.custom
    custom_json = event_json.get_or_create_struct("custom")
    custom_json.update(json_format.MessageToDict(_without(custom, "data")))
    if custom.HasField("data"):
        custom_json.fields["data"].struct_value.CopyFrom(custom.data)
    return result


def _without(message: M, name: str) -> M:
    """A copy of `message` lacking field `name` (its other fields are small)."""
    copy = type(message)()
    for descriptor, value in message.ListFields():
        if descriptor.name == name:
            continue
        if descriptor.is_repeated or descriptor.message_type is not None:
            getattr(copy, descriptor.name).MergeFrom(value)
        else:
            setattr(copy, descriptor.name, value)
    return copy


def is_retryable(error: Exception) -> bool:
    """Whether a built-in job failing with `error` may succeed on another attempt.

    Only an unavailable store or sink or an unexpected fault is retried: a
    rejected event, a conflicting id, a closed run, a failed expectation or
    a message a sink refused will fail the same way again.
    """
    return isinstance(error, Unavailable) or not isinstance(error, ServiceError)


class BuiltinJobRunner:
    """Leases and runs the built-in jobs of every namespace inside the server.

    On shutdown it leases nothing more once `stopping` is set, and a batch
    in hand is finished even when the loop is cancelled (cancellation waits
    for it), so no job is left leased to a server that is gone; a job lost
    to a crash comes back when its lease expires.
    """

    def __init__(
        self,
        jobs: JobStore,
        events: EventStore,
        notifier: Notifier,
        stopping: asyncio.Event,
        lease_us: int,
        sinks: Sinks,
    ) -> None:
        self._jobs = jobs
        self._sinks = sinks
        self._events = events
        self._notifier = notifier
        self._stopping = stopping
        self._lease_us = lease_us
        self.worker_id = f"statekeeper-server-{os.getpid()}"

    async def run(self) -> None:
        """Lease and run built-in jobs until `stopping` is set."""
        key = queue_key(ANY_NAMESPACE, BUILTIN_QUEUE)
        while not self._stopping.is_set():
            wake = self._notifier.watch(key)
            cycle = asyncio.ensure_future(self._run_batch())
            try:
                timeout = await asyncio.shield(cycle)
            except asyncio.CancelledError:
                await asyncio.wait([cycle])
                raise
            if timeout != 0:
                await wait_for_wake(wake, self._stopping, timeout)

    async def _run_batch(self) -> float | None:
        """Lease a batch and run it; how long to wait before the next (0: at once)."""
        try:
            leased = await self._jobs.lease_builtin(self.worker_id, RUNNER_BATCH, self._lease_us)
        except ServiceError as exc:
            log.warning("cannot lease built-in jobs: %s", exc)
            return ERROR_PAUSE
        if not leased.jobs:
            return seconds_until(leased.next_due_us, REREAD_INTERVAL)
        await asyncio.gather(*(self._run_one(job) for job in leased.jobs))
        return 0

    async def _run_one(self, leased: LeasedJob) -> None:
        job = leased.job
        try:
            result = await self._run_kind(leased)
        except Exception as exc:
            if not isinstance(exc, ServiceError):
                log.exception("built-in job %s failed unexpectedly", job.job_id)
            await self._settle(
                self._jobs.fail(
                    leased.namespace,
                    job.job_id,
                    job.lease.lease_id,
                    str(exc),
                    is_retryable(exc),
                    None,
                ),
                job.job_id,
            )
            return
        await self._settle(
            self._jobs.complete(leased.namespace, job.job_id, job.lease.lease_id, result),
            job.job_id,
        )

    async def _run_kind(self, leased: LeasedJob) -> struct_pb2.Struct:
        """Do what the job's kind does; the job's result."""
        job = leased.job
        if job.kind == PUBLISH_EVENT_KIND:
            call = parse_publish_event(job.payload, "payload", self._sinks.specs)
            return await publish_event(
                call, leased.namespace, job.job_id, self._events, self._sinks
            )
        envelope = await self._append(leased)
        return await off_loop_if_large(len(envelope), append_result, envelope)

    async def _append(self, leased: LeasedJob) -> bytes:
        """Append the job's event; the stored envelope's bytes.

        The payload passed `parse_append_event` at enqueue, so what it converts
        from JSON here is small; the copy of its event data is not, and is made
        on a thread.
        """
        job = leased.job
        # Background work: the hop to a thread costs nothing that matters, and the copy of
        # a large payload's event data stays off the event loop.
        call, item = await asyncio.to_thread(_append_call, job)
        envelopes = await self._events.append(
            leased.namespace, call.run_id, [item], call.expectation
        )
        return envelopes[0]

    @staticmethod
    async def _settle(settling: Awaitable[object], job_id: str) -> None:
        """Await a completion or failure; a lost lease is logged, not raised."""
        try:
            await settling
        except ServiceError as exc:
            log.warning("built-in job %s could not be settled: %s", job_id, exc)


# -- the sweeper -------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepSettings:
    """How often the sweeper runs and how long finished work is kept (seconds)."""

    interval: float
    job_retention: float
    change_retention: float

    @property
    def purge_every(self) -> float:
        """Seconds between two retention purges."""
        shortest = min(self.job_retention, self.change_retention)
        return min(MAX_PURGE_EVERY, max(self.interval, shortest / 2))


async def sweep_jobs(
    jobs: JobStore, notifier: Notifier, stopping: asyncio.Event, settings: SweepSettings
) -> None:
    """Keep timers on time and retention enforced until `stopping` is set.

    Sweeps when the next run_after or lease expiry the store reports comes,
    when a write stores a new run_after, and at least every
    `settings.interval` seconds.
    """
    loop = asyncio.get_running_loop()
    next_purge = loop.time()
    while not stopping.is_set():
        timers = notifier.watch(TIMERS_KEY)
        timeout: float | None = settings.interval
        try:
            swept = await jobs.sweep()
            if loop.time() >= next_purge:
                now = now_us()
                deleted = await jobs.purge(
                    now - int(settings.job_retention * 1_000_000),
                    now - int(settings.change_retention * 1_000_000),
                )
                if deleted:
                    log.info("deleted %d finished jobs past retention", deleted)
                next_purge = loop.time() + settings.purge_every
        except ServiceError as exc:
            log.warning("job sweep failed: %s", exc)
            timeout = ERROR_PAUSE
        else:
            if swept.more:
                continue
            timeout = seconds_until(swept.next_due_us, timeout)
        await wait_for_wake(timers, stopping, timeout)
