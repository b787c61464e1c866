"""`client.events`: the append-only event log of each run, replayable and followable.

`replay` is the consumer's tool: an iterator of single envelopes that
survives server restarts and dropped connections by resuming after the last
seq it delivered, so an application sees every event exactly once, in order.

`EventCalls` (with `ReplayCursor` for `replay`) says what each method sends
and returns; `EventsClient` (asyncio) and `BlockingEventsClient` make the calls.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncGenerator, Generator, Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from statekeeper import _aio_calls as aio
from statekeeper import _sync_calls as sync
from statekeeper._calls import Pages, Unary, whole
from statekeeper.errors import StatekeeperError
from statekeeper.v1 import events_pb2, events_pb2_grpc

RECONNECT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
"""Failures of a replay it waits out, resuming after the last seq it delivered."""
INITIAL_BACKOFF = 0.05
MAX_BACKOFF = 2.0
"""Pauses (seconds) between a replay's reconnection attempts, doubling from the first."""
TERMINAL_KINDS = frozenset({"run_completed", "run_failed", "run_cancelled"})


def expect_no_run() -> events_pb2.SeqExpectation:
    """An append condition: the run must not exist yet."""
    return events_pb2.SeqExpectation(no_run=True)


def expect_run_exists() -> events_pb2.SeqExpectation:
    """An append condition: the run must already have events."""
    return events_pb2.SeqExpectation(run_exists=True)


def expect_last_seq(seq: int) -> events_pb2.SeqExpectation:
    """An append condition: the run's last seq must be exactly `seq` (0: no run yet)."""
    return events_pb2.SeqExpectation(last_seq=seq)


def custom_event(
    event_type: str,
    data: Mapping[str, Any] | None = None,
    *,
    timestamp: timestamp_pb2.Timestamp | None = None,
) -> events_pb2.AgentEvent:
    """A custom event of `event_type` carrying `data` (a JSON-like mapping)."""
    payload = struct_pb2.Struct()
    if data:
        payload.update(data)
    return events_pb2.AgentEvent(
        custom=events_pb2.CustomEvent(type=event_type, data=payload, timestamp=timestamp)
    )


def is_terminal(envelope: events_pb2.EventEnvelope) -> bool:
    """Whether the envelope's event ends its run (completed, failed or cancelled)."""
    return envelope.event.WhichOneof("kind") in TERMINAL_KINDS


class EventCalls:
    """The operations of the events family, shared by both clients. Appends are
    not retried: an append is safe to repeat only with a client event_id, so
    retrying it is the caller's decision."""

    @staticmethod
    def append(
        run_id: str,
        event: events_pb2.AgentEvent,
        *,
        event_id: str = "",
        expectation: events_pb2.SeqExpectation | None = None,
    ) -> Unary[events_pb2.EventEnvelope]:
        """Append `event` to `run_id` and return its envelope (seq, event_id, ...).

        With `event_id` the append is idempotent: repeating it returns the
        original envelope. `expectation` (see `expect_*`) makes it a
        compare-and-set on the run's last seq: ABORTED when it fails.
        """
        request = events_pb2.AppendEventRequest(
            run_id=run_id,
            input=events_pb2.EventInput(event=event, event_id=event_id),
            expectation=expectation,
        )
        return Unary("AppendEvent", request, lambda response: response.envelope)

    @staticmethod
    def append_many(
        run_id: str,
        inputs: Iterable[events_pb2.EventInput | events_pb2.AgentEvent],
        *,
        expectation: events_pb2.SeqExpectation | None = None,
    ) -> Unary[builtins.list[events_pb2.EventEnvelope]]:
        """Append events atomically (all or none), with consecutive seqs.

        Items are EventInputs (to give event ids) or bare AgentEvents.
        """
        request = events_pb2.AppendEventsRequest(
            run_id=run_id,
            inputs=[
                item
                if isinstance(item, events_pb2.EventInput)
                else events_pb2.EventInput(event=item)
                for item in inputs
            ],
            expectation=expectation,
        )
        return Unary("AppendEvents", request, lambda response: builtins.list(response.envelopes))

    @staticmethod
    def list(
        run_id: str, after_seq: int = 0, limit: int = 0
    ) -> Unary[builtins.list[events_pb2.EventEnvelope]]:
        """Up to `limit` (default 100, at most 1000) events with seq > after_seq.

        Raises NOT_FOUND for a run without events.
        """
        return Unary(
            "ListEvents",
            events_pb2.ListEventsRequest(run_id=run_id, after_seq=after_seq, limit=limit),
            lambda response: builtins.list(response.envelopes),
            idempotent=True,
        )

    @staticmethod
    def list_runs(
        *,
        page_size: int = 0,
        run_id_prefix: str = "",
        session_id: str = "",
        terminal: bool | None = None,
    ) -> Pages[events_pb2.RunInfo]:
        """Every run of the namespace in run_id order, page by page; only those whose
        run_id starts with `run_id_prefix`, of `session_id` and of `terminal` state
        (True: ended, False: still open), each when set. The server filters, so a
        selective filter reads only the runs it returns."""
        return Pages(
            "ListRuns",
            lambda token: events_pb2.ListRunsRequest(
                page_size=page_size,
                page_token=token,
                run_id_prefix=run_id_prefix,
                session_id=session_id,
                terminal=terminal,
            ),
            lambda response: response.runs,
        )

    @staticmethod
    def delete_run(run_id: str) -> Unary[bool]:
        """Delete `run_id` with its events; whether it existed."""
        return Unary(
            "DeleteRun",
            events_pb2.DeleteRunRequest(run_id=run_id),
            lambda response: response.deleted,
            idempotent=True,
        )

    @staticmethod
    def truncate(run_id: str, up_to_seq: int) -> Unary[events_pb2.TruncateRunResponse]:
        """Drop the events of `run_id` with seq <= up_to_seq (first_seq kept, count dropped)."""
        return Unary(
            "TruncateRun",
            events_pb2.TruncateRunRequest(run_id=run_id, up_to_seq=up_to_seq),
            whole,
            idempotent=True,
        )


class ReplayCursor:
    """Where a replay stands and what it does about a failure, for both clients.

    Each (re)opened stream asks for the events after the last seq delivered;
    envelopes at or before it are dropped, so none is delivered twice.
    """

    def __init__(self, run_id: str, after_seq: int, follow: bool, reconnect_timeout: float) -> None:
        self.run_id = run_id
        self.position = after_seq
        self.follow = follow
        self.reconnect_timeout = reconnect_timeout
        self.done = False
        self._accepted = False
        self._failing_since: float | None = None
        self._backoff = INITIAL_BACKOFF

    def request(self) -> events_pb2.ReplayEventsRequest:
        """The request of a stream opened now: events after the last seq delivered."""
        self._accepted = False
        return events_pb2.ReplayEventsRequest(
            run_id=self.run_id, after_seq=self.position, follow=self.follow
        )

    def receive(
        self, message: events_pb2.ReplayEventsResponse
    ) -> builtins.list[events_pb2.EventEnvelope]:
        """The envelopes of `message` to deliver, in order; after a terminal event
        of a followed run, `done` is true and nothing more is delivered."""
        self._accepted = True
        self._failing_since, self._backoff = None, INITIAL_BACKOFF
        fresh: builtins.list[events_pb2.EventEnvelope] = []
        for envelope in message.batch.envelopes:
            if self.done or envelope.seq <= self.position:
                continue
            self.position = envelope.seq
            fresh.append(envelope)
            self.done = self.follow and is_terminal(envelope)
        return fresh

    def pause_after(self, code: grpc.StatusCode) -> float | None:
        """The pause before reopening the stream after a failure with `code`, or
        None when the replay fails with it.

        UNAVAILABLE is waited out with a doubling pause until
        `reconnect_timeout` seconds pass without getting through. So is
        CANCELLED while doing so: a stopping server answers new streams
        with UNAVAILABLE, but cancels one that reaches it at its very end.
        UNAUTHENTICATED on a stream the server had accepted (the credential
        it was opened with expired) is resumed at once: the reopened stream
        sends the client's token anew. Anything else fails the replay.
        """
        if self._accepted and code == grpc.StatusCode.UNAUTHENTICATED:
            return 0.0
        reconnecting = self._failing_since is not None
        if code not in RECONNECT_CODES and not (reconnecting and code == grpc.StatusCode.CANCELLED):
            return None
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        remaining = self.reconnect_timeout - (now - self._failing_since)
        if remaining <= 0:
            return None
        pause = min(self._backoff, remaining)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        return pause


class EventsClient(aio.Family):
    """Append, list, replay and follow the events of runs."""

    stub = events_pb2_grpc.EventLogServiceStub
    append = aio.unary(EventCalls.append)
    append_many = aio.unary(EventCalls.append_many)
    list = aio.unary(EventCalls.list)
    list_runs = aio.pages(EventCalls.list_runs)
    delete_run = aio.unary(EventCalls.delete_run)
    truncate = aio.unary(EventCalls.truncate)

    async def replay(
        self,
        run_id: str,
        after_seq: int = 0,
        follow: bool = True,
        *,
        reconnect_timeout: float = 30.0,
    ) -> AsyncGenerator[events_pb2.EventEnvelope, None]:
        """Every event of `run_id` after `after_seq`, one at a time, in seq order.

        With `follow` the iterator keeps delivering live events and ends after
        the run's terminal event (it waits for a run that has not started).
        On UNAVAILABLE (a server restart or shutdown, a dropped connection) it
        reopens the stream after a growing pause and resumes after the last seq
        it delivered, so no event is missed or repeated; it raises the last
        error once `reconnect_timeout` seconds pass without getting through.
        A stream the server ends with UNAUTHENTICATED after accepting it (the
        credential it was opened with expired) is resumed at once: every
        resumption sends the client's token anew, so a callable token gets
        through with a fresh one. Other errors (NOT_FOUND, OUT_OF_RANGE,
        UNAUTHENTICATED when opening ...) are raised at once.
        """
        cursor = ReplayCursor(run_id, after_seq, follow, reconnect_timeout)
        while True:
            call = self._stub.ReplayEvents(cursor.request(), metadata=self._options.metadata)
            try:
                async for message in call:
                    for envelope in cursor.receive(message):
                        yield envelope
                    if cursor.done:
                        return
                return
            except grpc.aio.AioRpcError as exc:
                error = StatekeeperError.from_call(exc)
                pause = cursor.pause_after(error.code())
                if pause is None:
                    raise error from None
            finally:
                call.cancel()
            await asyncio.sleep(pause)


class BlockingEventsClient(sync.Family):
    """Append, list, replay and follow the events of runs (blocking)."""

    stub = events_pb2_grpc.EventLogServiceStub
    append = sync.unary(EventCalls.append)
    append_many = sync.unary(EventCalls.append_many)
    list = sync.unary(EventCalls.list)
    list_runs = sync.pages(EventCalls.list_runs)
    delete_run = sync.unary(EventCalls.delete_run)
    truncate = sync.unary(EventCalls.truncate)

    def replay(
        self,
        run_id: str,
        after_seq: int = 0,
        follow: bool = True,
        *,
        reconnect_timeout: float = 30.0,
    ) -> Generator[events_pb2.EventEnvelope, None, None]:
        """Every event of `run_id` after `after_seq`, one at a time, in seq order:
        blocking, otherwise as `EventsClient.replay` (following, resuming after
        UNAVAILABLE from the last seq delivered, `reconnect_timeout`)."""
        cursor = ReplayCursor(run_id, after_seq, follow, reconnect_timeout)
        while True:
            call = self._stub.ReplayEvents(cursor.request(), metadata=self._options.metadata)
            try:
                for message in call:
                    yield from cursor.receive(message)
                    if cursor.done:
                        return
                return
            except grpc.RpcError as exc:
                error = StatekeeperError.from_call(exc)
                pause = cursor.pause_after(error.code())
                if pause is None:
                    raise error from None
            finally:
                call.cancel()
            time.sleep(pause)
