"""EventLogService: validation in front of the event store, and the replay stream.

A replay is a loop over the store, never a private queue of events: the
follower takes the run's notifier event *before* each read, sends what the
read returned (stored envelope bytes, packed many to a message, never
re-encoded), and once it has caught up waits on that event. A commit
landing between the read and the wait has already set the event, so the
switch from history to live has no gap and no duplicate, and a slow
follower holds no events in server memory. An idle follower also reads
again before each heartbeat, so a wake-up lost on its way from another
replica delays an event by one heartbeat interval at most and never loses
it. Its heartbeat timer wakes it alone (`Wakeup.wait_or`), never the other
followers of the run: a thousand idle followers then cost a thousand
wake-ups per heartbeat interval, not a million.

A follower reads and sends each page in a turn (`StreamTurns`): at most a
few dozen streams of the server do at once, so a thousand catching up
together never flood the event loop, and since only those few read, they
read large pages. How much a follower reads at a time is what its
`StreamBuffer` grants: its share (STREAM_SHARE_BYTES) plus whatever the
server's stream buffer budget has free, up to REPLAY_READ_BYTES, given back
as the page's messages (at most REPLAY_MESSAGE_BYTES each) are sent. It
reads the next page while sending one only with budget granted for that
read. A follower that keeps up thus reads large pages and replays fast,
and one that stops reading holds its share and what it borrowed for the
page it is stuck on, whatever the size of the run. Its reads are `stream`
reads: the store serves them beside point reads, never ahead of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import grpc
from google.protobuf.message import Message

from statekeeper.v1 import events_pb2
from statekeeper_server.errors import InvalidArgument, Unavailable
from statekeeper_server.limits import (
    PAGE_BUDGET_BYTES,
    REPLAY_MESSAGE_BYTES,
    REPLAY_READ_BYTES,
    REPLAY_READ_EVENTS,
)
from statekeeper_server.notifier import Notifier, Wakeup
from statekeeper_server.observability import store_metrics
from statekeeper_server.services.context import request_namespace
from statekeeper_server.stores.budget import split_by_size
from statekeeper_server.stores.event_wire import pack_envelopes, replay_batch_message
from statekeeper_server.stores.events import (
    EventPage,
    EventStore,
    check_read_position,
    event_key,
    missing_event,
    run_filter,
    run_not_found,
    validate_event_input,
)
from statekeeper_server.stream_buffers import Grant, StreamBuffer, StreamBuffers
from statekeeper_server.stream_turns import StreamTurns
from statekeeper_server.timestamps import now_us, to_timestamp
from statekeeper_server.validation import page_size, require_id
from statekeeper_server.wire import uint_field

Context = grpc.aio.ServicerContext[Any, Any]
ReplayMessage = bytes | events_pb2.ReplayEventsResponse
"""A replay stream message: a pre-encoded batch, or a caught-up / heartbeat message."""
Response = bytes | Message
"""A response: wire bytes built from stored envelopes, or a message to encode."""

SERVICE_NAME = events_pb2.DESCRIPTOR.services_by_name["EventLogService"].full_name
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
DEFAULT_RUNS_PAGE = 50
MAX_RUNS_PAGE = 1000


def serialize_response(message: Response) -> bytes:
    """Wire bytes of a response; bytes are already encoded and pass as they are."""
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()


class EventLogServicer:
    """Serves EventLogService from an EventStore.

    Followers end their streams with UNAVAILABLE (SERVER_STOPPING) once
    `stopping` is set, so they never hold up a shutdown; clients resume from
    the last seq they received.
    """

    service_name = SERVICE_NAME

    def __init__(
        self,
        store: EventStore,
        notifier: Notifier,
        stopping: asyncio.Event,
        heartbeat_interval: float,
        buffers: StreamBuffers,
        turns: StreamTurns,
    ) -> None:
        """`buffers` is the server's stream buffer budget and `turns` the turns its streams
        take to read and send, both shared with every stream of the server."""
        self._store = store
        self._notifier = notifier
        self._stopping = stopping
        self._heartbeat_interval = heartbeat_interval
        self._buffers = buffers
        self._turns = turns

    def add_to(self, server: grpc.aio.Server) -> None:
        """Register the handlers; pre-encoded responses are sent as they are."""
        handlers = {
            "AppendEvent": _unary(self.AppendEvent, events_pb2.AppendEventRequest),
            "AppendEvents": _unary(self.AppendEvents, events_pb2.AppendEventsRequest),
            "ListEvents": _unary(self.ListEvents, events_pb2.ListEventsRequest),
            "ReplayEvents": grpc.unary_stream_rpc_method_handler(
                self.ReplayEvents,
                request_deserializer=events_pb2.ReplayEventsRequest.FromString,
                response_serializer=serialize_response,
            ),
            "ListRuns": _unary(self.ListRuns, events_pb2.ListRunsRequest),
            "DeleteRun": _unary(self.DeleteRun, events_pb2.DeleteRunRequest),
            "TruncateRun": _unary(self.TruncateRun, events_pb2.TruncateRunRequest),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
        )
        server.add_registered_method_handlers(SERVICE_NAME, handlers)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """Wake every follower when the server starts stopping, so each can end."""
        return [self._release_followers()]

    async def _release_followers(self) -> None:
        await self._stopping.wait()
        self._notifier.notify_all()

    async def AppendEvent(self, request: events_pb2.AppendEventRequest, context: Context) -> bytes:
        """Append one event (validated as `input`); the AppendEventResponse's wire bytes."""
        namespace = request_namespace(context)
        run_id = require_id(request.run_id, "run_id")
        validate_event_input(request.input, "input")
        expectation = request.expectation if request.HasField("expectation") else None
        envelopes = await self._store.append(namespace, run_id, [request.input], expectation)
        return pack_envelopes(envelopes)

    async def AppendEvents(
        self, request: events_pb2.AppendEventsRequest, context: Context
    ) -> bytes:
        """Append a batch atomically (the store validates it as `inputs`); the
        AppendEventsResponse's wire bytes."""
        namespace = request_namespace(context)
        run_id = require_id(request.run_id, "run_id")
        expectation = request.expectation if request.HasField("expectation") else None
        envelopes = await self._store.append(namespace, run_id, request.inputs, expectation)
        return pack_envelopes(envelopes)

    async def ListEvents(self, request: events_pb2.ListEventsRequest, context: Context) -> bytes:
        """A page of stored envelopes: at most `limit` and PAGE_BUDGET_BYTES of them (the
        caller continues after the last); the ListEventsResponse's wire bytes, built
        around the stored envelopes."""
        namespace = request_namespace(context)
        run_id = require_id(request.run_id, "run_id")
        limit = page_size(
            request.limit, "limit", default=DEFAULT_LIST_LIMIT, maximum=MAX_LIST_LIMIT
        )
        page = await self._store.read(
            namespace, run_id, request.after_seq, limit, PAGE_BUDGET_BYTES
        )
        if page.run is None:
            raise run_not_found(run_id)
        check_read_position(run_id, page.run, request.after_seq)
        response = events_pb2.ListEventsResponse
        return (
            pack_envelopes(page.envelopes)
            + uint_field(response.LAST_SEQ_FIELD_NUMBER, page.run.last_seq)
            + uint_field(response.FIRST_SEQ_FIELD_NUMBER, page.run.first_seq)
        )

    async def ReplayEvents(
        self, request: events_pb2.ReplayEventsRequest, context: Context
    ) -> AsyncIterator[ReplayMessage]:
        """History after `after_seq`, CaughtUp, then (with follow) live events."""
        namespace = request_namespace(context)
        run_id = require_id(request.run_id, "run_id")
        after_seq, follow = request.after_seq, request.follow
        key = event_key(namespace, run_id)
        loop = asyncio.get_running_loop()
        position = after_seq
        created_us: int | None = None
        caught_up = False
        last_sent = loop.time()
        buffer = self._buffers.open()
        follower = store_metrics.FOLLOWERS.open(key, after_seq)
        # While a page of history is sent, the next one may be read, with budget granted
        # for it (one page ahead at most).
        ahead: asyncio.Future[tuple[Wakeup, EventPage]] | None = None
        ahead_grant: Grant | None = None
        # Wakes this follower alone when it may owe a heartbeat, by resolving `bell`, the
        # future its current wait ends with. Re-armed only once it went off, not for every
        # wait: a timer per wait cost more than the wait.
        alarm: asyncio.TimerHandle | None = None
        bell: asyncio.Future[None] | None = None

        def ring() -> None:
            nonlocal alarm
            alarm = None
            if bell is not None and not bell.done():
                bell.set_result(None)

        try:
            while True:
                if self._stopping.is_set():
                    raise Unavailable(
                        "SERVER_STOPPING",
                        f"the server is shutting down; resume after seq {position}",
                        run_id=run_id,
                        last_seq=position,
                    )
                more = False
                turn = await self._turns.take()
                try:
                    if ahead is None or ahead_grant is None:
                        # Nothing else is held now: the share at least is granted.
                        grant = buffer.grant(REPLAY_READ_BYTES)
                        assert grant is not None
                        woken, page = await self._read(namespace, run_id, position, buffer, grant)
                    else:
                        woken, page = await ahead
                        grant, ahead, ahead_grant = ahead_grant, None, None
                    run = page.run
                    if run is None or (created_us is not None and run.create_us != created_us):
                        # Only a follower from the start waits for a run it has never seen; a
                        # run that vanished (or came back as a new run) was deleted.
                        if created_us is not None or not follow or after_seq > 0:
                            raise run_not_found(run_id, deleted=created_us is not None)
                    else:
                        created_us = run.create_us
                        check_read_position(run_id, run, position)
                        if position < run.last_seq and not page.envelopes:
                            raise missing_event(run_id, position + 1)
                        if page.through_seq < run.last_seq:
                            ahead_grant = buffer.grant(
                                REPLAY_READ_BYTES, minimum=self._buffers.share
                            )
                            if ahead_grant is not None:
                                ahead = asyncio.ensure_future(
                                    self._read(
                                        namespace, run_id, page.through_seq, buffer, ahead_grant
                                    )
                                )
                        follower.last_seq = run.last_seq
                        messages = [
                            (replay_batch_message(chunk), len(chunk))
                            for chunk in split_by_size(page.envelopes, len, REPLAY_MESSAGE_BYTES)
                        ]
                        through_seq = page.through_seq
                        # While a follower that stops reading blocks a send, it holds only
                        # the page's messages (and the read ahead), not the envelopes too.
                        del page
                        unsent = grant.size
                        messages.reverse()
                        while messages:
                            message, count = messages.pop()
                            unsent -= len(message)
                            yield message
                            del message
                            follower.position += count
                            buffer.settle(grant, max(unsent, 0))
                            last_sent = loop.time()
                        position = through_seq
                        more = position < run.last_seq
                finally:
                    self._turns.end(turn)
                if more:
                    continue
                if not caught_up:
                    caught_up = True
                    yield events_pb2.ReplayEventsResponse(
                        caught_up=events_pb2.CaughtUp(last_seq=position)
                    )
                    last_sent = loop.time()
                if not follow or (run is not None and run.terminal):
                    return
                now = loop.time()
                if now - last_sent >= self._heartbeat_interval:
                    yield events_pb2.ReplayEventsResponse(
                        heartbeat=events_pb2.Heartbeat(sent_at=to_timestamp(now_us()))
                    )
                    last_sent = loop.time()
                # Woken or not, read again once a heartbeat is due: a wake-up lost on its
                # way from another replica then delays an event by one heartbeat at most.
                if alarm is None:
                    alarm = loop.call_at(last_sent + self._heartbeat_interval, ring)
                bell = loop.create_future()
                await woken.wait_or(bell)
        finally:
            store_metrics.FOLLOWERS.close(follower)
            if ahead is not None:
                ahead.cancel()
            if alarm is not None:
                alarm.cancel()
            buffer.close()

    async def _read(
        self, namespace: str, run_id: str, after_seq: int, buffer: StreamBuffer, grant: Grant
    ) -> tuple[Wakeup, EventPage]:
        """The run's next page (at most `grant.size` bytes of envelopes, at least one
        envelope), and the wake-up event taken before reading it; `grant` is settled to
        the bytes the page holds.

        A commit landing after the read has already set that event. A
        follower woken by a commit of this process usually finds that commit
        kept in memory (`recent`) and skips the store.
        """
        woken = self._notifier.watch(event_key(namespace, run_id))
        page = self._store.recent(namespace, run_id, after_seq, REPLAY_READ_EVENTS, grant.size)
        if page is None:
            page = await self._store.read(
                namespace, run_id, after_seq, REPLAY_READ_EVENTS, grant.size, stream=True
            )
        buffer.settle(grant, sum(map(len, page.envelopes)))
        return woken, page

    async def ListRuns(
        self, request: events_pb2.ListRunsRequest, context: Context
    ) -> events_pb2.ListRunsResponse:
        """A page of the namespace's runs in run_id order, of the request's filters."""
        namespace = request_namespace(context)
        size = page_size(request.page_size, default=DEFAULT_RUNS_PAGE, maximum=MAX_RUNS_PAGE)
        where = run_filter(
            request.run_id_prefix,
            request.session_id,
            request.terminal if request.HasField("terminal") else None,
        )
        page = await self._store.list_runs(namespace, size, request.page_token, where)
        return events_pb2.ListRunsResponse(runs=page.runs, next_page_token=page.next_page_token)

    async def DeleteRun(
        self, request: events_pb2.DeleteRunRequest, context: Context
    ) -> events_pb2.DeleteRunResponse:
        """Delete the run; succeeds when there is none."""
        namespace = request_namespace(context)
        run_id = require_id(request.run_id, "run_id")
        return events_pb2.DeleteRunResponse(deleted=await self._store.delete_run(namespace, run_id))

    async def TruncateRun(
        self, request: events_pb2.TruncateRunRequest, context: Context
    ) -> events_pb2.TruncateRunResponse:
        """Drop the run's events up to `up_to_seq`."""
        namespace = request_namespace(context)
        run_id = require_id(request.run_id, "run_id")
        if request.up_to_seq == 0:
            raise InvalidArgument("up_to_seq", "is required (> 0)")
        truncation = await self._store.truncate(namespace, run_id, request.up_to_seq)
        return events_pb2.TruncateRunResponse(
            first_seq=truncation.first_seq, dropped=truncation.dropped
        )


def _unary(behavior: Any, request_type: Any) -> grpc.RpcMethodHandler[Any, Any]:
    """A unary handler decoding `request_type` and encoding its response."""
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=request_type.FromString,
        response_serializer=serialize_response,
    )
