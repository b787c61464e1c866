"""Replays and watches read as much as the stream buffer budget grants them, on every store.

A stream may always hold its share (STREAM_SHARE_BYTES) of pages read but
not yet sent; beyond that it borrows what the server-wide budget
(`--stream-buffer-bytes`) has free, and gives it back as the page is sent
and when the stream ends, however it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import struct_pb2

from statekeeper.v1 import events_pb2, events_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from statekeeper_server.app import Application
from statekeeper_server.limits import REPLAY_MESSAGE_BYTES, STREAM_SHARE_BYTES
from statekeeper_server.services.jobs import WATCH_BATCH
from tests.harness import running_app
from tests.waiting import until

WAIT = 10.0
RUN = "run-1"
EVENTS = 1_500
EVENT_BYTES = 1_000
JOBS = 1_000
SMALL_WINDOWS = [("grpc.http2.bdp_probe", 0)]
"""A client whose transport takes in 64 KB per stream and no more until it is read."""


def event(index: int) -> events_pb2.EventInput:
    data = struct_pb2.Struct()
    data.update({"i": index, "text": "x" * EVENT_BYTES})
    return events_pb2.EventInput(
        event=events_pb2.AgentEvent(custom=events_pb2.CustomEvent(type="blob", data=data))
    )


async def with_history(app: Application, channel: grpc.aio.Channel) -> None:
    """RUN gets EVENTS events of about EVENT_BYTES each (1.5 MB of history)."""
    stub = events_pb2_grpc.EventLogServiceStub(channel)
    for start in range(0, EVENTS, 500):
        inputs = [event(start + i) for i in range(500)]
        await stub.AppendEvents(events_pb2.AppendEventsRequest(run_id=RUN, inputs=inputs))


@pytest.fixture
async def channel_to(
    store_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Application, grpc.aio.Channel]]:
    budget = getattr(request, "param", None)
    settings = {} if budget is None else {"stream_buffer_bytes": budget}
    async with running_app(store_url, **settings) as app:
        target = f"127.0.0.1:{app.port}"
        async with grpc.aio.insecure_channel(target, options=SMALL_WINDOWS) as channel:
            yield app, channel


async def replayed_batches(
    channel: grpc.aio.Channel, *, follow: bool = False
) -> list[events_pb2.EventBatch]:
    """Every batch of a replay of RUN until its last event arrived."""
    call = events_pb2_grpc.EventLogServiceStub(channel).ReplayEvents(
        events_pb2.ReplayEventsRequest(run_id=RUN, follow=follow)
    )
    batches: list[events_pb2.EventBatch] = []
    try:
        while not batches or batches[-1].envelopes[-1].seq < EVENTS:
            message = await asyncio.wait_for(call.read(), WAIT)
            assert message is not grpc.aio.EOF
            if message.HasField("batch"):
                batches.append(message.batch)
    finally:
        call.cancel()
    return batches


def assert_everything_given_back(app: Application) -> None:
    buffers = app.stream_buffers
    assert (buffers.held, buffers.borrowed, buffers.open_streams) == (0, 0, 0)


@pytest.mark.parametrize("channel_to", [0], indirect=True)
async def test_a_follower_that_stops_reading_holds_at_most_its_share_once_the_budget_is_used_up(
    channel_to: tuple[Application, grpc.aio.Channel],
) -> None:
    app, channel = channel_to
    await with_history(app, channel)
    stalled = events_pb2_grpc.EventLogServiceStub(channel).ReplayEvents(
        events_pb2.ReplayEventsRequest(run_id=RUN, follow=True)
    )
    try:
        await asyncio.wait_for(stalled.read(), WAIT)
        await until(lambda: app.stream_buffers.held > 0, "the follower holds a page")
        assert app.stream_buffers.held <= STREAM_SHARE_BYTES
        assert app.stream_buffers.borrowed == 0
    finally:
        stalled.cancel()
    await until(lambda: app.stream_buffers.open_streams == 0, "the stream ended")
    assert_everything_given_back(app)


@pytest.mark.parametrize("channel_to", [0], indirect=True)
async def test_without_budget_every_replay_message_holds_at_most_the_share(
    channel_to: tuple[Application, grpc.aio.Channel],
) -> None:
    app, channel = channel_to
    await with_history(app, channel)
    batches = await replayed_batches(channel)
    assert all(batch.ByteSize() <= STREAM_SHARE_BYTES for batch in batches)
    assert [e.seq for batch in batches for e in batch.envelopes] == list(range(1, EVENTS + 1))


async def test_a_lone_follower_reads_large_pages_and_gives_the_budget_back_when_it_ends(
    channel_to: tuple[Application, grpc.aio.Channel],
) -> None:
    app, channel = channel_to
    await with_history(app, channel)
    batches = await replayed_batches(channel)
    assert max(batch.ByteSize() for batch in batches) > REPLAY_MESSAGE_BYTES // 2
    assert [e.seq for batch in batches for e in batch.envelopes] == list(range(1, EVENTS + 1))
    await until(lambda: app.stream_buffers.open_streams == 0, "the stream ended")
    assert_everything_given_back(app)


async def test_a_cancelled_follower_gives_back_what_it_held(
    channel_to: tuple[Application, grpc.aio.Channel],
) -> None:
    app, channel = channel_to
    await with_history(app, channel)
    call = events_pb2_grpc.EventLogServiceStub(channel).ReplayEvents(
        events_pb2.ReplayEventsRequest(run_id=RUN, follow=True)
    )
    await asyncio.wait_for(call.read(), WAIT)
    await until(lambda: app.stream_buffers.borrowed > 0, "the follower borrowed")
    call.cancel()
    await until(lambda: app.stream_buffers.open_streams == 0, "the stream ended")
    assert_everything_given_back(app)


async def watched_batches(channel: grpc.aio.Channel) -> list[jobs_pb2.JobChangeBatch]:
    """The change batches of a watch from the first change until JOBS jobs were enqueued."""
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    specs = [jobs_pb2.JobSpec(queue="q", kind="k") for _ in range(JOBS)]
    await stub.EnqueueJobs(jobs_pb2.EnqueueJobsRequest(jobs=specs))
    call = stub.WatchJobs(jobs_pb2.WatchJobsRequest(after_change_id=0))
    batches: list[jobs_pb2.JobChangeBatch] = []
    try:
        while sum(len(batch.changes) for batch in batches) < JOBS:
            message = await asyncio.wait_for(call.read(), WAIT)
            assert message is not grpc.aio.EOF
            if message.HasField("changes"):
                batches.append(message.changes)
    finally:
        call.cancel()
    return batches


@pytest.mark.parametrize("channel_to", [0], indirect=True)
async def test_without_budget_every_watch_batch_holds_at_most_the_share(
    channel_to: tuple[Application, grpc.aio.Channel],
) -> None:
    app, channel = channel_to
    batches = await watched_batches(channel)
    assert len(batches) > JOBS // WATCH_BATCH
    assert all(batch.ByteSize() <= STREAM_SHARE_BYTES for batch in batches)
    await until(lambda: app.stream_buffers.open_streams == 0, "the watch ended")
    assert_everything_given_back(app)


async def test_a_lone_watcher_gets_full_batches_and_gives_the_budget_back_when_it_ends(
    channel_to: tuple[Application, grpc.aio.Channel],
) -> None:
    app, channel = channel_to
    batches = await watched_batches(channel)
    assert [len(batch.changes) for batch in batches] == [WATCH_BATCH] * (JOBS // WATCH_BATCH)
    assert batches[0].ByteSize() > STREAM_SHARE_BYTES
    await until(lambda: app.stream_buffers.open_streams == 0, "the watch ended")
    assert_everything_given_back(app)
