"""`client.events`: the append-only event log of each run, replayable and followable.

`replay` is the consumer's tool: an async iterator of single envelopes that
survives server restarts and dropped connections by resuming after the last
seq it delivered, so an application sees every event exactly once, in order.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from statekeeper._calls import CallOptions
from statekeeper.v1 import events_pb2, events_pb2_grpc

SERVICE = "statekeeper.v1.EventLogService"
IDEMPOTENT = [
    (SERVICE, "ListEvents"),
    (SERVICE, "ReplayEvents"),
    (SERVICE, "ListRuns"),
    (SERVICE, "DeleteRun"),
    (SERVICE, "TruncateRun"),
]
"""Calls the channel may retry on UNAVAILABLE. Appends are not among them: an
append is safe to repeat only with a client event_id, so retrying it is the
caller's decision."""

RECONNECT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
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


class EventsClient:
    """Append, list, replay and follow the events of runs."""

    def __init__(self, channel: grpc.aio.Channel, options: CallOptions) -> None:
        self._channel = channel
        self._stub = events_pb2_grpc.EventLogServiceStub(channel)
        self._options = options

    async def append(
        self,
        run_id: str,
        event: events_pb2.AgentEvent,
        *,
        event_id: str = "",
        expectation: events_pb2.SeqExpectation | None = None,
    ) -> events_pb2.EventEnvelope:
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
        response = await self._stub.AppendEvent(
            request, metadata=self._options.metadata, timeout=self._options.timeout
        )
        return response.envelope

    async def append_many(
        self,
        run_id: str,
        inputs: Iterable[events_pb2.EventInput | events_pb2.AgentEvent],
        *,
        expectation: events_pb2.SeqExpectation | None = None,
    ) -> builtins.list[events_pb2.EventEnvelope]:
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
        response = await self._stub.AppendEvents(
            request, metadata=self._options.metadata, timeout=self._options.timeout
        )
        return list(response.envelopes)

    async def list(
        self, run_id: str, after_seq: int = 0, limit: int = 0
    ) -> builtins.list[events_pb2.EventEnvelope]:
        """Up to `limit` (default 100, at most 1000) events with seq > after_seq.

        Raises NOT_FOUND for a run without events.
        """
        response = await self._stub.ListEvents(
            events_pb2.ListEventsRequest(run_id=run_id, after_seq=after_seq, limit=limit),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return list(response.envelopes)

    async def replay(
        self,
        run_id: str,
        after_seq: int = 0,
        follow: bool = True,
        *,
        reconnect_timeout: float = 30.0,
    ) -> AsyncIterator[events_pb2.EventEnvelope]:
        """Every event of `run_id` after `after_seq`, one at a time, in seq order.

        With `follow` the iterator keeps delivering live events and ends after
        the run's terminal event (it waits for a run that has not started).
        On UNAVAILABLE (a server restart or shutdown, a dropped connection) it
        waits until the channel is ready again and resumes after the last seq
        it delivered, so no event is missed or repeated; it raises the last
        error once `reconnect_timeout` seconds pass without getting through.
        A stream the server ends with UNAUTHENTICATED after accepting it (the
        credential it was opened with expired) is resumed at once: every
        resumption sends the client's token anew, so a callable token gets
        through with a fresh one. Other errors (NOT_FOUND, OUT_OF_RANGE,
        UNAUTHENTICATED when opening ...) are raised at once.
        """
        position = after_seq
        failing_since: float | None = None
        backoff = INITIAL_BACKOFF
        loop = asyncio.get_running_loop()
        while True:
            call = self._stub.ReplayEvents(
                events_pb2.ReplayEventsRequest(run_id=run_id, after_seq=position, follow=follow),
                metadata=self._options.metadata,
            )
            accepted = False
            try:
                async for message in call:
                    accepted = True
                    failing_since, backoff = None, INITIAL_BACKOFF
                    for envelope in message.batch.envelopes:
                        if envelope.seq <= position:
                            continue
                        position = envelope.seq
                        yield envelope
                        if follow and is_terminal(envelope):
                            return
                return
            except grpc.aio.AioRpcError as exc:
                if accepted and exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    continue
                if exc.code() not in RECONNECT_CODES:
                    raise
                error = exc
            finally:
                call.cancel()
            now = loop.time()
            failing_since = now if failing_since is None else failing_since
            remaining = reconnect_timeout - (now - failing_since)
            if remaining <= 0 or not await self._reconnected(backoff, remaining):
                raise error
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _reconnected(self, pause: float, within: float) -> bool:
        """Pause, then wait for the channel to be ready; False if not within `within` s."""

        async def ready() -> None:
            await asyncio.sleep(pause)
            await self._channel.channel_ready()

        try:
            await asyncio.wait_for(ready(), within)
        except TimeoutError:
            return False
        return True

    async def list_runs(self, *, page_size: int = 0) -> AsyncIterator[events_pb2.RunInfo]:
        """Every run of the namespace in run_id order, page by page."""
        token = ""
        while True:
            response = await self._stub.ListRuns(
                events_pb2.ListRunsRequest(page_size=page_size, page_token=token),
                metadata=self._options.metadata,
                timeout=self._options.timeout,
            )
            for run in response.runs:
                yield run
            token = response.next_page_token
            if not token:
                return

    async def delete_run(self, run_id: str) -> bool:
        """Delete `run_id` with its events; whether it existed."""
        response = await self._stub.DeleteRun(
            events_pb2.DeleteRunRequest(run_id=run_id),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return response.deleted

    async def truncate(self, run_id: str, up_to_seq: int) -> events_pb2.TruncateRunResponse:
        """Drop the events of `run_id` with seq <= up_to_seq (first_seq kept, count dropped)."""
        return await self._stub.TruncateRun(
            events_pb2.TruncateRunRequest(run_id=run_id, up_to_seq=up_to_seq),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
