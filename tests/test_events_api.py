"""EventLogService end to end: a real server on a free port, through the client and raw stubs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import statekeeper
from statekeeper.errors import StatekeeperError
from statekeeper.events import custom_event, expect_last_seq, is_terminal
from statekeeper.v1 import events_pb2, events_pb2_grpc
from statekeeper_server.app import Application
from tests.harness import running_app
from tests.rpc_errors import error_details
from tests.test_events_store import cancelled, completed, custom, started

RUN = "run-1"
ReplayCall = grpc.aio.UnaryStreamCall[Any, events_pb2.ReplayEventsResponse]


@pytest.fixture
async def app(store_url: str) -> AsyncIterator[Application]:
    async with running_app(store_url, heartbeat_interval=0.05) as running:
        yield running


@pytest.fixture
async def client(app: Application) -> AsyncIterator[statekeeper.AsyncClient]:
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as connected:
        yield connected


@pytest.fixture
def stub(client: statekeeper.AsyncClient) -> events_pb2_grpc.EventLogServiceStub:
    return events_pb2_grpc.EventLogServiceStub(client.channel)


async def fails(call: object) -> grpc.aio.AioRpcError:
    """The error `call` (an awaitable, a stream or an async iterator) ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await finish(call)
    return caught.value


async def finish(call: Any) -> None:
    """Await a unary call, or consume a stream or async iterator to its end."""
    if isinstance(call, grpc.aio.UnaryStreamCall):
        await read_rest(call)
    elif hasattr(call, "__aiter__"):
        _ = [message async for message in call]
    else:
        await call


def open_replay(
    stub: events_pb2_grpc.EventLogServiceStub, after_seq: int = 0, follow: bool = True
) -> ReplayCall:
    """A raw ReplayEvents call of RUN."""
    request = events_pb2.ReplayEventsRequest(run_id=RUN, after_seq=after_seq, follow=follow)
    return cast(ReplayCall, stub.ReplayEvents(request))


async def next_message(call: ReplayCall) -> events_pb2.ReplayEventsResponse:
    """The next message of a stream read with `read()`; the stream must not have ended."""
    message = await call.read()
    assert message is not grpc.aio.EOF
    return cast(events_pb2.ReplayEventsResponse, message)


async def read_rest(call: ReplayCall) -> list[events_pb2.ReplayEventsResponse]:
    """The messages left on a stream that was read with `read()`."""
    messages = []
    while (message := await call.read()) is not grpc.aio.EOF:
        messages.append(cast(events_pb2.ReplayEventsResponse, message))
    return messages


async def replay_messages(
    stub: events_pb2_grpc.EventLogServiceStub, after_seq: int = 0, follow: bool = False
) -> list[events_pb2.ReplayEventsResponse]:
    """Every message of a ReplayEvents call of RUN, to its end."""
    return await read_rest(open_replay(stub, after_seq, follow))


async def collect(client: statekeeper.AsyncClient, **options: object) -> list[int]:
    """The seqs `client.events.replay` delivers for RUN."""
    return [e.seq async for e in client.events.replay(RUN, **options)]  # type: ignore[arg-type]


# -- appends and lists ---------------------------------------------------------


async def test_append_and_list_through_the_client(client: statekeeper.AsyncClient) -> None:
    first = await client.events.append(RUN, started().event, event_id="start")
    rest = await client.events.append_many(RUN, [custom_event("tool.call", {"n": 1}), completed()])
    listed = await client.events.list(RUN)
    assert listed == [first, *rest]
    assert [e.seq for e in listed] == [1, 2, 3]
    assert listed[1].event.custom.data["n"] == 1


async def test_retried_append_with_an_event_id_returns_the_original(
    client: statekeeper.AsyncClient,
) -> None:
    original = await client.events.append(RUN, custom().event, event_id="e-1")
    assert await client.events.append(RUN, custom().event, event_id="e-1") == original
    assert len(await client.events.list(RUN)) == 1


async def test_list_of_an_unknown_run_is_run_not_found(
    stub: events_pb2_grpc.EventLogServiceStub,
) -> None:
    error = await fails(stub.ListEvents(events_pb2.ListEventsRequest(run_id="nope")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_details(error)[0].reason == "RUN_NOT_FOUND"


async def test_list_limit_defaults_to_100_and_is_capped_at_1000(
    client: statekeeper.AsyncClient,
) -> None:
    for _ in range(2):
        await client.events.append_many(RUN, [custom().event] * 600)
    assert len(await client.events.list(RUN)) == 100
    assert len(await client.events.list(RUN, limit=5000)) == 1000
    assert [e.seq for e in await client.events.list(RUN, after_seq=1195, limit=10)] == [
        1196,
        1197,
        1198,
        1199,
        1200,
    ]


async def test_failed_expectation_reports_the_actual_last_seq(
    client: statekeeper.AsyncClient,
) -> None:
    await client.events.append_many(RUN, [started().event, custom().event])
    error = await fails(client.events.append(RUN, custom().event, expectation=expect_last_seq(1)))
    assert error.code() == grpc.StatusCode.ABORTED
    info = error_details(error)[0]
    assert (info.reason, info.metadata["actual_last_seq"]) == ("SEQ_MISMATCH", "2")


async def test_invalid_event_in_a_batch_names_its_field(
    stub: events_pb2_grpc.EventLogServiceStub,
) -> None:
    request = events_pb2.AppendEventsRequest(run_id=RUN, inputs=[custom(), custom(""), custom()])
    error = await fails(stub.AppendEvents(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(error)[1] == ["inputs[1].event.custom.type"]
    assert await fails(stub.ListEvents(events_pb2.ListEventsRequest(run_id=RUN)))


async def test_single_append_names_the_input_field(
    stub: events_pb2_grpc.EventLogServiceStub,
) -> None:
    error = await fails(stub.AppendEvent(events_pb2.AppendEventRequest(run_id=RUN)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(error)[1] == ["input.event"]


async def test_bad_run_id_is_invalid_argument(stub: events_pb2_grpc.EventLogServiceStub) -> None:
    request = events_pb2.AppendEventRequest(run_id="../x", input=custom())
    error = await fails(stub.AppendEvent(request))
    assert error_details(error)[1] == ["run_id"]


async def test_reused_event_id_with_other_content_is_already_exists(
    client: statekeeper.AsyncClient,
) -> None:
    await client.events.append(RUN, custom(n=1).event, event_id="e-1")
    error = await fails(client.events.append(RUN, custom(n=2).event, event_id="e-1"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_details(error)[0].reason == "EVENT_ID_CONFLICT"


async def test_append_after_the_terminal_event_is_failed_precondition(
    client: statekeeper.AsyncClient,
) -> None:
    await client.events.append(RUN, cancelled().event)
    error = await fails(client.events.append(RUN, custom().event))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(error)[0].reason == "RUN_TERMINATED"


async def test_runs_are_listed_truncated_and_deleted_through_the_client(
    client: statekeeper.AsyncClient,
) -> None:
    await client.events.append_many("run-a", [started().event, custom().event, custom().event])
    await client.events.append("run-b", custom().event)
    truncated = await client.events.truncate("run-a", 2)
    assert (truncated.first_seq, truncated.dropped) == (3, 2)
    runs = [run async for run in client.events.list_runs(page_size=1)]
    assert [(r.run_id, r.first_seq, r.last_seq) for r in runs] == [("run-a", 3, 3), ("run-b", 1, 1)]
    assert await client.events.delete_run("run-b") is True
    assert await client.events.delete_run("run-b") is False
    assert [run.run_id async for run in client.events.list_runs()] == ["run-a"]


async def test_runs_are_listed_by_prefix_session_and_terminal_state_through_the_client(
    client: statekeeper.AsyncClient,
) -> None:
    await client.events.append_many("job-1", [started("session-a").event, completed().event])
    await client.events.append("job-2", started("session-a").event)
    await client.events.append("task-1", started("session-b").event)
    listed = client.events.list_runs
    assert [r.run_id async for r in listed(page_size=1, run_id_prefix="job-")] == ["job-1", "job-2"]
    assert [r.run_id async for r in listed(session_id="session-b")] == ["task-1"]
    assert [r.run_id async for r in listed(terminal=True)] == ["job-1"]
    assert [r.run_id async for r in listed(terminal=False)] == ["job-2", "task-1"]


async def test_runs_are_listed_by_filters_through_the_blocking_client(app: Application) -> None:
    def use_blocking_client() -> list[str]:
        with statekeeper.Client(f"127.0.0.1:{app.port}") as client:
            client.events.append("run-1", started("session-a").event)
            client.events.append("other-1", started("session-a").event)
            runs = client.events.list_runs(
                run_id_prefix="run-", session_id="session-a", terminal=False
            )
            return [run.run_id for run in runs]

    assert await asyncio.to_thread(use_blocking_client) == ["run-1"]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"run_id_prefix": "../"}, "run_id_prefix"),
        ({"run_id_prefix": "x" * 129}, "run_id_prefix"),
        ({"session_id": "a b"}, "session_id"),
    ],
)
async def test_a_malformed_run_filter_is_invalid_naming_its_field(
    stub: events_pb2_grpc.EventLogServiceStub, request_fields: dict[str, Any], field: str
) -> None:
    error = await fails(stub.ListRuns(events_pb2.ListRunsRequest(**request_fields)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(error)[1] == [field]


async def test_truncate_needs_a_positive_seq(stub: events_pb2_grpc.EventLogServiceStub) -> None:
    error = await fails(stub.TruncateRun(events_pb2.TruncateRunRequest(run_id=RUN)))
    assert error_details(error)[1] == ["up_to_seq"]


# -- replay --------------------------------------------------------------------


async def test_replay_sends_history_then_caught_up_then_ends(
    client: statekeeper.AsyncClient, stub: events_pb2_grpc.EventLogServiceStub
) -> None:
    appended = await client.events.append_many(RUN, [started().event] + [custom().event] * 4)
    messages = await replay_messages(stub, after_seq=1)
    assert [m.WhichOneof("message") for m in messages] == ["batch", "caught_up"]
    assert list(messages[0].batch.envelopes) == appended[1:]
    assert messages[1].caught_up.last_seq == 5


async def test_replay_packs_many_envelopes_per_message(
    client: statekeeper.AsyncClient, stub: events_pb2_grpc.EventLogServiceStub
) -> None:
    for _ in range(2):
        await client.events.append_many(RUN, [custom().event] * 600)
    messages = await replay_messages(stub)
    sizes = [len(m.batch.envelopes) for m in messages if m.HasField("batch")]
    assert sizes == [500, 500, 200]
    seqs = [e.seq for m in messages for e in m.batch.envelopes]
    assert seqs == list(range(1, 1201))


async def test_replay_of_an_unknown_run_without_follow_is_not_found(
    client: statekeeper.AsyncClient,
) -> None:
    error = await fails(client.events.replay(RUN, follow=False))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_follow_from_a_seq_of_an_unknown_run_is_not_found(
    client: statekeeper.AsyncClient,
) -> None:
    error = await fails(client.events.replay(RUN, after_seq=3, follow=True))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_replay_from_a_truncated_seq_is_out_of_range_naming_the_first_seq(
    client: statekeeper.AsyncClient, stub: events_pb2_grpc.EventLogServiceStub
) -> None:
    await client.events.append_many(RUN, [custom().event] * 10)
    await client.events.truncate(RUN, 4)
    for call in (
        open_replay(stub, after_seq=3, follow=False),
        stub.ListEvents(events_pb2.ListEventsRequest(run_id=RUN, after_seq=2)),
    ):
        error = await fails(call)
        assert error.code() == grpc.StatusCode.OUT_OF_RANGE
        info = error_details(error)[0]
        assert (info.reason, info.metadata["first_seq"]) == ("SEQ_TRUNCATED", "5")
    assert await collect(client, after_seq=4, follow=False) == [5, 6, 7, 8, 9, 10]


async def test_replay_after_the_last_seq_is_out_of_range(
    client: statekeeper.AsyncClient,
) -> None:
    await client.events.append_many(RUN, [custom().event] * 3)
    error = await fails(client.events.replay(RUN, after_seq=4))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert error_details(error)[0].reason == "SEQ_BEYOND_LAST"


async def test_follow_ends_after_the_terminal_event(client: statekeeper.AsyncClient) -> None:
    await client.events.append_many(RUN, [started().event, custom().event])
    follower = asyncio.create_task(collect(client))
    await client.events.append(RUN, custom().event)
    await client.events.append(RUN, completed().event)
    assert await asyncio.wait_for(follower, 30) == [1, 2, 3, 4]


async def test_follow_of_a_finished_run_ends_after_the_history(
    client: statekeeper.AsyncClient, stub: events_pb2_grpc.EventLogServiceStub
) -> None:
    await client.events.append_many(RUN, [started().event, completed().event])
    messages = await asyncio.wait_for(replay_messages(stub, follow=True), 30)
    assert [m.WhichOneof("message") for m in messages] == ["batch", "caught_up"]
    assert await asyncio.wait_for(replay_messages(stub, after_seq=2, follow=True), 30) == [
        events_pb2.ReplayEventsResponse(caught_up=events_pb2.CaughtUp(last_seq=2))
    ]


async def test_subscribe_before_the_run_starts_receives_the_whole_run(
    client: statekeeper.AsyncClient, stub: events_pb2_grpc.EventLogServiceStub
) -> None:
    call = open_replay(stub)
    first = await next_message(call)
    assert first == events_pb2.ReplayEventsResponse(caught_up=events_pb2.CaughtUp(last_seq=0))
    await client.events.append(RUN, started().event)
    await client.events.append_many(RUN, [custom().event, completed().event])
    seqs = [e.seq for message in await read_rest(call) for e in message.batch.envelopes]
    assert seqs == [1, 2, 3]


async def test_replay_with_appends_racing_the_catch_up_delivers_each_seq_once_in_order(
    client: statekeeper.AsyncClient, stub: events_pb2_grpc.EventLogServiceStub
) -> None:
    await client.events.append_many(RUN, [started().event] + [custom().event] * 999)

    async def writer(worker: int) -> None:
        for _ in range(50):
            await client.events.append(RUN, custom(worker=worker).event)

    async def appenders() -> None:
        await asyncio.gather(*map(writer, range(10)))
        await client.events.append(RUN, completed().event)

    racing = asyncio.create_task(appenders())
    call = open_replay(stub)
    seqs: list[int] = []
    caught_up = 0
    async for message in call:
        seqs.extend(e.seq for e in message.batch.envelopes)
        caught_up += message.HasField("caught_up")
    await racing
    assert seqs == list(range(1, 1502))
    assert caught_up == 1


async def test_failed_appends_are_never_delivered_to_followers(
    client: statekeeper.AsyncClient,
) -> None:
    await client.events.append(RUN, started().event)
    follower = asyncio.create_task(collect(client))
    await fails(client.events.append(RUN, custom().event, expectation=expect_last_seq(7)))
    await fails(client.events.append_many(RUN, [custom().event, custom("").event]))
    await client.events.append(RUN, completed().event)
    assert await asyncio.wait_for(follower, 30) == [1, 2]
    assert [e.seq for e in await client.events.list(RUN)] == [1, 2]


async def test_idle_follow_gets_heartbeats(
    client: statekeeper.AsyncClient, stub: events_pb2_grpc.EventLogServiceStub
) -> None:
    await client.events.append(RUN, started().event)
    call = open_replay(stub)
    kinds = [(await next_message(call)).WhichOneof("message") for _ in range(4)]
    call.cancel()
    assert kinds == ["batch", "caught_up", "heartbeat", "heartbeat"]


async def test_follower_reads_again_before_each_heartbeat_so_a_lost_wake_up_only_delays(
    app: Application, client: statekeeper.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.events.append(RUN, started().event)
    replay = client.events.replay(RUN)
    first = await anext(replay)
    monkeypatch.setattr(app.store.notifier, "notify", lambda key: None)
    await client.events.append_many(RUN, [custom().event, completed().event])
    assert [first.seq] + [e.seq async for e in replay] == [1, 2, 3]


async def test_a_followers_heartbeat_wakes_no_other_follower_of_the_run(
    app: Application,
    client: statekeeper.AsyncClient,
    stub: events_pb2_grpc.EventLogServiceStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    followers, heartbeats_each = 10, 3
    await client.events.append(RUN, started().event)
    calls = []
    for _ in range(followers):
        call = open_replay(stub)
        assert (await next_message(call)).HasField("batch")
        assert (await next_message(call)).HasField("caught_up")
        calls.append(call)
    reads = 0
    watch = app.store.notifier.watch

    def counted_watch(key: object) -> Any:
        nonlocal reads
        reads += 1  # a follower takes the run's wake-up before each read
        return watch(key)

    async def heartbeats(call: ReplayCall) -> list[str | None]:
        return [(await next_message(call)).WhichOneof("message") for _ in range(heartbeats_each)]

    monkeypatch.setattr(app.store.notifier, "watch", counted_watch)
    kinds = await asyncio.gather(*(heartbeats(call) for call in calls))
    monkeypatch.undo()
    for call in calls:
        call.cancel()
    assert kinds == [["heartbeat"] * heartbeats_each] * followers
    # Each follower reads again once per heartbeat it owes (give or take one while they
    # are counted); were each heartbeat to wake the whole run, every follower would read
    # once per heartbeat of each of the others.
    assert reads <= followers * (heartbeats_each + 2)


async def test_deleting_a_followed_run_ends_its_streams_with_not_found(
    client: statekeeper.AsyncClient, stub: events_pb2_grpc.EventLogServiceStub
) -> None:
    await client.events.append(RUN, started().event)
    call = open_replay(stub)
    assert (await next_message(call)).HasField("batch")
    assert (await next_message(call)).HasField("caught_up")
    await client.events.delete_run(RUN)
    error = await fails(call)
    assert (error.code(), error_details(error)[0].reason) == (
        grpc.StatusCode.NOT_FOUND,
        "RUN_NOT_FOUND",
    )


async def test_client_replay_delivers_single_envelopes_until_terminal(
    client: statekeeper.AsyncClient,
) -> None:
    await client.events.append_many(RUN, [started().event, custom().event, failed_event()])
    envelopes = [e async for e in client.events.replay(RUN)]
    assert [e.seq for e in envelopes] == [1, 2, 3]
    assert is_terminal(envelopes[-1])


def failed_event() -> events_pb2.AgentEvent:
    return events_pb2.AgentEvent(run_failed=events_pb2.RunFailed(error="boom"))


async def test_blocking_client_replays_too(app: Application) -> None:
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as setup:
        await setup.events.append_many(RUN, [started().event, completed().event])

    def replay_blocking() -> list[int]:
        with statekeeper.Client(f"127.0.0.1:{app.port}") as blocking:
            return [e.seq for e in blocking.events.replay(RUN)]

    assert await asyncio.to_thread(replay_blocking) == [1, 2]


async def test_client_replay_gives_up_after_its_reconnect_timeout() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{probe.getsockname()[1]}"
    async with statekeeper.AsyncClient(target) as nowhere:
        replay = nowhere.events.replay(RUN, reconnect_timeout=0.2)
        error = await fails(replay)
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_blocking_replay_gives_up_after_its_reconnect_timeout() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{probe.getsockname()[1]}"
    with (
        statekeeper.Client(target) as nowhere,
        pytest.raises(StatekeeperError) as caught,
    ):
        list(nowhere.events.replay(RUN, reconnect_timeout=0.2))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# -- lifecycle of streams ------------------------------------------------------


def running_tasks() -> int:
    """The server's tasks running calls (grpc.aio runs each in `_schedule_rpc_coro`).

    Other tasks come and go on their own (grpc's pool of tasks waiting for
    calls, the job runner's waits), so they are not counted.
    """
    return sum(
        task.get_coro().__qualname__ == "_schedule_rpc_coro"  # type: ignore[union-attr]
        for task in asyncio.all_tasks()
    )


async def calls_settle_at(count: int) -> int:
    """Wait (at most 5 s) until the server runs `count` calls; how many it runs then."""
    for _ in range(500):
        if running_tasks() == count:
            break
        await asyncio.sleep(0.01)
    return running_tasks()


async def test_cancelled_stream_leaves_no_task_behind(
    client: statekeeper.AsyncClient, stub: events_pb2_grpc.EventLogServiceStub
) -> None:
    await client.events.append(RUN, started().event)
    assert await calls_settle_at(0) == 0
    call = open_replay(stub)
    await next_message(call)
    await next_message(call)
    assert running_tasks() == 1
    call.cancel()
    assert await calls_settle_at(0) == 0


async def test_replay_cancelled_in_the_middle_of_history_leaves_no_task_behind(
    client: statekeeper.AsyncClient, stub: events_pb2_grpc.EventLogServiceStub
) -> None:
    for _ in range(3):
        await client.events.append_many(RUN, [custom().event] * 600)
    assert await calls_settle_at(0) == 0
    call = open_replay(stub)
    first = await next_message(call)
    assert len(first.batch.envelopes) == 500
    call.cancel()
    assert await calls_settle_at(0) == 0


async def test_server_stop_ends_followers_with_server_stopping(store_url: str) -> None:
    async with running_app(store_url, grace_period=60.0) as app:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        stub = events_pb2_grpc.EventLogServiceStub(channel)
        call = open_replay(stub)
        assert (await next_message(call)).HasField("caught_up")
        stopping = asyncio.create_task(app.stop())
        error = await fails(call)
        await stopping
        await channel.close()
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_details(error)[0].reason == "SERVER_STOPPING"


async def test_event_log_is_served_with_health(app: Application) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
            health_pb2.HealthCheckRequest(service="statekeeper.v1.EventLogService")
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
