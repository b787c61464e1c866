"""The call metrics (grpc_server_*) a real server exposes on /metrics move by exactly
what real calls did.

Counters are process-wide (every in-process server of the run shares them), so each
test compares a scrape after its calls with one before.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import AsyncIterator, Awaitable
from typing import Any, cast

import grpc
import pytest

import statekeeper
from statekeeper.events import custom_event
from statekeeper.v1 import events_pb2, events_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from statekeeper_server.app import Application
from tests.harness import running_app
from tests.metrics_scrape import Metrics, scrape
from tests.test_events_store import custom
from tests.waiting import until, until_async

SERVICE = "statekeeper.v1.EventLogService"
RUN = "run-1"


@pytest.fixture
async def app() -> AsyncIterator[Application]:
    async with running_app("memory:", heartbeat_interval=5.0) as running:
        yield running


@pytest.fixture
async def client(app: Application) -> AsyncIterator[statekeeper.AsyncClient]:
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as connected:
        yield connected


@pytest.fixture
def stub(client: statekeeper.AsyncClient) -> events_pb2_grpc.EventLogServiceAsyncStub:
    return events_pb2_grpc.EventLogServiceStub(client.channel)


def labels(method: str, grpc_type: str = "unary") -> dict[str, str]:
    return {"grpc_type": grpc_type, "grpc_service": SERVICE, "grpc_method": method}


def moved(before: Metrics, after: Metrics, name: str, **selected: str) -> float:
    """How much the series `name` with `selected` labels moved between two scrapes."""
    return after.value(name, **selected) - before.value(name, **selected)


async def append(stub: events_pb2_grpc.EventLogServiceAsyncStub, run_id: str = RUN) -> None:
    await stub.AppendEvent(events_pb2.AppendEventRequest(run_id=run_id, input=custom()))


async def test_successful_unary_calls_are_started_handled_ok_received_and_sent(
    app: Application, stub: events_pb2_grpc.EventLogServiceAsyncStub
) -> None:
    before = await scrape(app.http_port)
    for _ in range(3):
        await append(stub)
    after = await scrape(app.http_port)
    call = labels("AppendEvent")
    assert moved(before, after, "grpc_server_started_total", **call) == 3
    assert moved(before, after, "grpc_server_handled_total", **call, grpc_code="OK") == 3
    assert moved(before, after, "grpc_server_handled_total", **call) == 3
    assert moved(before, after, "grpc_server_msg_received_total", **call) == 3
    assert moved(before, after, "grpc_server_msg_sent_total", **call) == 3


async def test_every_call_is_observed_once_in_the_handling_time_histogram(
    app: Application, stub: events_pb2_grpc.EventLogServiceAsyncStub
) -> None:
    before = await scrape(app.http_port)
    for _ in range(4):
        await append(stub)
    after = await scrape(app.http_port)
    call = labels("AppendEvent")
    assert moved(before, after, "grpc_server_handling_seconds_count", **call) == 4
    assert moved(before, after, "grpc_server_handling_seconds_bucket", **call, le="+Inf") == 4
    assert moved(before, after, "grpc_server_handling_seconds_sum", **call) > 0


async def test_the_handling_time_has_the_go_grpc_prometheus_buckets(
    app: Application, stub: events_pb2_grpc.EventLogServiceAsyncStub
) -> None:
    await append(stub)
    after = await scrape(app.http_port)
    bounds = {
        sample.labels["le"]
        for sample in after.samples
        if sample.name == "grpc_server_handling_seconds_bucket"
        and sample.labels["grpc_method"] == "AppendEvent"
    }
    expected = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0"]
    assert bounds == {*expected, "10.0", "+Inf"}


async def test_an_invalid_argument_is_handled_with_its_code_and_sends_nothing(
    app: Application, stub: events_pb2_grpc.EventLogServiceAsyncStub
) -> None:
    before = await scrape(app.http_port)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AppendEvent(events_pb2.AppendEventRequest(run_id=RUN))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = await scrape(app.http_port)
    call = labels("AppendEvent")
    assert moved(before, after, "grpc_server_started_total", **call) == 1
    assert (
        moved(before, after, "grpc_server_handled_total", **call, grpc_code="INVALID_ARGUMENT") == 1
    )
    assert moved(before, after, "grpc_server_handled_total", **call, grpc_code="OK") == 0
    assert moved(before, after, "grpc_server_msg_received_total", **call) == 1
    assert moved(before, after, "grpc_server_msg_sent_total", **call) == 0


async def test_a_not_found_is_handled_with_its_code(
    app: Application, stub: events_pb2_grpc.EventLogServiceAsyncStub
) -> None:
    before = await scrape(app.http_port)
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListEvents(events_pb2.ListEventsRequest(run_id="nope"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    after = await scrape(app.http_port)
    call = labels("ListEvents")
    assert moved(before, after, "grpc_server_handled_total", **call, grpc_code="NOT_FOUND") == 2
    assert moved(before, after, "grpc_server_started_total", **call) == 2


async def test_a_replay_counts_every_message_it_streams(
    app: Application,
    client: statekeeper.AsyncClient,
    stub: events_pb2_grpc.EventLogServiceAsyncStub,
) -> None:
    # Events of about 100 KiB: a replay packs a few per message, so it sends several.
    await client.events.append_many(RUN, [custom_event("big", {"pad": "x" * 100_000})] * 10)
    before = await scrape(app.http_port)
    call: Any = stub.ReplayEvents(events_pb2.ReplayEventsRequest(run_id=RUN, follow=False))
    messages = [cast(events_pb2.ReplayEventsResponse, message) async for message in call]
    after = await scrape(app.http_port)
    assert sum(len(m.batch.envelopes) for m in messages) == 10
    assert len(messages) > 2
    stream = labels("ReplayEvents", "server_stream")
    assert moved(before, after, "grpc_server_msg_sent_total", **stream) == len(messages)
    assert moved(before, after, "grpc_server_msg_received_total", **stream) == 1
    assert moved(before, after, "grpc_server_started_total", **stream) == 1
    assert moved(before, after, "grpc_server_handled_total", **stream, grpc_code="OK") == 1


async def test_a_job_watch_counts_every_message_it_streams(
    app: Application, client: statekeeper.AsyncClient
) -> None:
    stub = jobs_pb2_grpc.JobServiceStub(client.channel)
    before = await scrape(app.http_port)
    call: Any = stub.WatchJobs(jobs_pb2.WatchJobsRequest(queue="mail"))
    messages = aiter(call)
    received = [await anext(messages)]
    for kind in ("a", "b", "c"):
        await client.jobs.enqueue(kind, queue="mail")
        received.append(await anext(messages))
    assert received[0].WhichOneof("message") == "started"
    assert all(m.WhichOneof("message") == "changes" for m in received[1:])
    call.cancel()
    stream = labels("WatchJobs", "server_stream")
    stream["grpc_service"] = "statekeeper.v1.JobService"
    after: list[Metrics] = []

    async def ended() -> bool:
        after.append(await scrape(app.http_port))
        return moved(before, after[-1], "grpc_server_handled_total", **stream) == 1

    await until_async(ended, "the cancelled watch counted as handled")
    assert moved(before, after[-1], "grpc_server_msg_sent_total", **stream) == len(received)
    assert moved(before, after[-1], "grpc_server_started_total", **stream) == 1


async def test_a_stream_is_started_at_once_and_handled_when_it_ends(
    app: Application, stub: events_pb2_grpc.EventLogServiceAsyncStub
) -> None:
    await append(stub)
    before = await scrape(app.http_port)
    call: Any = stub.ReplayEvents(events_pb2.ReplayEventsRequest(run_id=RUN, follow=True))
    first = await call.read()
    assert first is not grpc.aio.EOF
    during = await scrape(app.http_port)
    stream = labels("ReplayEvents", "server_stream")
    assert moved(before, during, "grpc_server_started_total", **stream) == 1
    assert moved(before, during, "grpc_server_handled_total", **stream) == 0
    call.cancel()
    ended: list[Metrics] = []

    async def handled() -> bool:
        ended.append(await scrape(app.http_port))
        return moved(before, ended[-1], "grpc_server_handled_total", **stream) == 1

    await until_async(handled, "the cancelled stream counted as handled")
    assert (
        moved(before, ended[-1], "grpc_server_handled_total", **stream, grpc_code="CANCELLED") == 1
    )


async def test_open_streams_are_counted_by_method_while_they_last(
    app: Application, stub: events_pb2_grpc.EventLogServiceAsyncStub
) -> None:
    await append(stub)
    calls: list[Any] = []
    for _ in range(2):
        call = stub.ReplayEvents(events_pb2.ReplayEventsRequest(run_id=RUN, follow=True))
        assert await call.read() is not grpc.aio.EOF
        calls.append(call)
    during = await scrape(app.http_port)
    assert during.value("statekeeper_active_streams", grpc_method="ReplayEvents") == 2
    for call in calls:
        call.cancel()
    await until(lambda: app.admission.streams == 0, "the streams ended")
    after = await scrape(app.http_port)
    assert after.value("statekeeper_active_streams", grpc_method="ReplayEvents") == 0


async def test_open_connections_are_counted_while_they_are_open(app: Application) -> None:
    async def connections() -> float:
        return (await scrape(app.http_port)).value("statekeeper_connections")

    before = await connections()
    channels = [
        # Each its own connection: no subchannel sharing between these channels.
        grpc.aio.insecure_channel(
            f"127.0.0.1:{app.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(3)
    ]
    for channel in channels:
        await append(events_pb2_grpc.EventLogServiceStub(channel), run_id="connections")
    assert await connections() == before + 3
    for channel in channels:
        await channel.close()
    await until_async(
        lambda: _equals(connections(), before), "the closed connections stopped counting"
    )


async def _equals(value: Awaitable[float], expected: float) -> bool:
    return await value == expected


async def test_build_info_names_the_version_and_python(app: Application) -> None:
    metrics = await scrape(app.http_port)
    assert metrics.value("statekeeper_build_info", python=platform.python_version()) == 1
    assert metrics.has("statekeeper_build_info", version=importlib.metadata.version("statekeeper"))
