"""Relays through a real server: declared with RelayService, forwarding every committed
event to the real NATS JetStream and Redis of the machine, on every store."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from redis.asyncio import Redis

import statekeeper
from statekeeper.events import custom_event
from statekeeper.v1 import events_pb2
from statekeeper_server.publish.messages import PROTOBUF_CONTENT_TYPE
from tests.brokers import NATS_URL, REDIS_URL, gate, jetstream_stream, redis_keys
from tests.harness import running_app
from tests.metrics_scrape import scrape
from tests.rpc_errors import bad_request_fields, error_info
from tests.waiting import until_async

STARTED = events_pb2.AgentEvent(run_started=events_pb2.RunStarted(session_id="session-1"))


async def append_runs(
    client: statekeeper.AsyncClient, runs: Sequence[str], steps: int
) -> list[events_pb2.EventEnvelope]:
    """A RunStarted and `steps` custom events in each run, the runs appended concurrently."""

    async def one(run_id: str) -> list[events_pb2.EventEnvelope]:
        first = await client.events.append(run_id, STARTED)
        rest = await client.events.append_many(
            run_id, [custom_event("step", {"n": n}) for n in range(steps)]
        )
        return [first, *rest]

    return [envelope for run in await asyncio.gather(*map(one, runs)) for envelope in run]


def by_run(seqs: Sequence[tuple[str, int]]) -> dict[str, list[int]]:
    """The seqs received per run, in the order received."""
    runs: dict[str, list[int]] = defaultdict(list)
    for run_id, seq in seqs:
        runs[run_id].append(seq)
    return dict(runs)


async def redis_seqs(redis: Redis, key: str) -> list[tuple[str, int]]:
    """(run_id, seq) of every entry of the stream `key`, in stream order."""
    return [
        (fields[b"run_id"].decode(), int(fields[b"seq"])) for _, fields in await redis.xrange(key)
    ]


async def test_a_relay_forwards_every_event_to_jetstream_in_seq_order_per_run(
    store_url: str,
) -> None:
    async with (
        jetstream_stream() as stream,
        running_app(
            store_url, sink=[f"events={NATS_URL}?subject={stream.prefix}.{{namespace}}.{{run_id}}"]
        ) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        before = await append_runs(client, ["run-a", "run-b"], 10)
        await client.relays.create("all", "events")
        after = await append_runs(client, ["run-c"], 10)

        async def all_arrived() -> bool:
            return len(await stream.messages()) == 33

        await until_async(all_arrived, "33 messages on the stream")
        messages = await stream.messages()
        relay = await client.relays.get("all")
    seqs = by_run([((m.headers or {})["run_id"], int((m.headers or {})["seq"])) for m in messages])
    assert seqs == {run: list(range(1, 12)) for run in ("run-a", "run-b", "run-c")}
    envelopes = {e.event_id: e for e in [*before, *after]}
    for message in messages:
        headers = message.headers or {}
        assert headers["Content-Type"] == PROTOBUF_CONTENT_TYPE
        assert headers["Nats-Msg-Id"] == headers["event_id"]
        assert headers["namespace"] == "default"
        assert message.subject == f"{stream.prefix}.default.{headers['run_id']}"
        published = events_pb2.EventEnvelope.FromString(message.data or b"")
        assert published == envelopes[headers["event_id"]]
    assert (relay.status.lag_events, relay.status.lag.ToMicroseconds()) == (0, 0)
    assert relay.status.owner


async def test_a_relay_forwards_only_runs_of_its_prefix_and_events_of_its_kinds(
    store_url: str,
) -> None:
    async with (
        redis_keys() as (redis, prefix),
        running_app(store_url, sink=[f"audit={REDIS_URL}?stream={prefix}"]) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        await client.relays.create(
            "agents", "audit", run_id_prefix="agent-", event_kinds=["run_started"]
        )
        await append_runs(client, ["agent-1", "agent-2", "tool-1"], 3)
        await client.events.append("agent-3", STARTED)

        async def caught_up() -> bool:
            return (await client.relays.get("agents")).status.lag_events == 0

        await until_async(caught_up, "the relay caught up")
        await asyncio.sleep(0.3)
        seqs = await redis_seqs(redis, prefix)
    assert sorted(seqs) == [("agent-1", 1), ("agent-2", 1), ("agent-3", 1)]


async def test_a_broker_down_delays_the_relay_which_catches_up_without_a_gap() -> None:
    async with (
        redis_keys() as (redis, prefix),
        gate(REDIS_URL) as redis_gate,
        running_app(
            "memory:", sink=[f"audit=redis://127.0.0.1:{redis_gate.port}/0?stream={prefix}"]
        ) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        await client.relays.create("audit", "audit")
        await append_runs(client, ["run-1"], 4)

        async def forwarded(count: int) -> bool:
            return len(await redis_seqs(redis, prefix)) == count

        await until_async(lambda: forwarded(5), "the first events forwarded")
        await redis_gate.close()
        await append_runs(client, ["run-2"], 4)
        await client.events.append_many("run-1", [custom_event("late")])

        async def failing() -> bool:
            return bool((await client.relays.get("audit")).status.last_error)

        await until_async(failing, "the relay reports the outage")
        stalled = await client.relays.get("audit")
        assert await redis_seqs(redis, prefix) == [("run-1", seq) for seq in range(1, 6)]
        await redis_gate.open()
        await until_async(lambda: forwarded(11), "every event forwarded after the outage")

        async def recovered() -> bool:
            return not (await client.relays.get("audit")).status.last_error

        await until_async(recovered, "the error cleared")
        seqs = by_run(await redis_seqs(redis, prefix))
    assert stalled.status.lag_events == 6
    assert "sink audit" in stalled.status.last_error
    assert seqs == {"run-1": [1, 2, 3, 4, 5, 6], "run-2": [1, 2, 3, 4, 5]}


async def test_a_message_the_broker_refuses_stops_the_relay_there_until_it_is_taken() -> None:
    async with (
        redis_keys() as (redis, prefix),
        running_app("memory:", sink=[f"audit={REDIS_URL}?stream={prefix}:{{kind}}"]) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        await redis.set(f"{prefix}:custom", "not a stream")
        await client.relays.create("audit", "audit")
        await client.events.append("run-1", STARTED)
        await client.events.append_many(
            "run-1",
            [
                custom_event("step"),
                events_pb2.AgentEvent(run_completed=events_pb2.RunCompleted(iterations=1)),
            ],
        )

        async def refused() -> bool:
            return "WRONGTYPE" in (await client.relays.get("audit")).status.last_error

        await until_async(refused, "the relay reports the refusal")
        stalled = await client.relays.get("audit")
        held_back = await redis.exists(f"{prefix}:run_completed")
        await redis.delete(f"{prefix}:custom")

        async def caught_up() -> bool:
            return (await client.relays.get("audit")).status.lag_events == 0

        await until_async(caught_up, "the relay forwarded the rest")
        kinds = [
            [fields[b"seq"] for _, fields in await redis.xrange(f"{prefix}:{kind}")]
            for kind in ("run_started", "custom", "run_completed")
        ]
    assert (stalled.status.lag_events, held_back) == (2, 0)
    assert kinds == [[b"1"], [b"2"], [b"3"]]


async def test_the_lag_of_a_relay_is_a_metric_of_the_replica_running_it() -> None:
    async with (
        redis_keys() as (_, prefix),
        gate(REDIS_URL) as redis_gate,
        running_app(
            "memory:",
            sink=[f"audit=redis://127.0.0.1:{redis_gate.port}/0?stream={prefix}"],
            relay_poll_interval=0.1,
        ) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        await redis_gate.close()
        await client.relays.create("audit", "audit")
        await append_runs(client, ["run-1"], 2)

        async def lag_reported() -> bool:
            metrics = await scrape(app.http_port)
            return metrics.value("statekeeper_relay_lag_events", relay="audit") == 3

        await until_async(lag_reported, "a lag of 3 events in the metrics")
        metrics = await scrape(app.http_port)
        assert metrics.value("statekeeper_relay_lag_seconds", relay="audit") > 0
        await redis_gate.open()

        async def caught_up() -> bool:
            metrics = await scrape(app.http_port)
            return (
                metrics.value("statekeeper_relay_lag_events", relay="audit") == 0
                and metrics.value("statekeeper_relay_events_forwarded_total", relay="audit") == 3
            )

        await until_async(caught_up, "no lag and 3 forwarded in the metrics")


@pytest.fixture
async def client() -> AsyncIterator[statekeeper.AsyncClient]:
    async with (
        running_app("memory:", sink=[f"events={NATS_URL}"]) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as connected,
    ):
        yield connected


async def test_relays_are_listed_by_name_and_deleted_once(
    client: statekeeper.AsyncClient,
) -> None:
    for name in ("b", "a", "c"):
        await client.relays.create(name, "events")
    assert [relay.name async for relay in client.relays.list(page_size=2)] == ["a", "b", "c"]
    assert await client.relays.delete("b")
    assert not await client.relays.delete("b")
    assert await client.relays.names() == ["a", "c"]


async def test_a_relay_created_again_with_another_definition_is_already_exists(
    client: statekeeper.AsyncClient,
) -> None:
    first = await client.relays.create("billing", "events", event_kinds=["custom"])
    again = await client.relays.create("billing", "events", event_kinds=["custom"])
    assert (again.name, again.create_time) == (first.name, first.create_time)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.relays.create("billing", "events")
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(raised.value).reason == "RELAY_EXISTS"


async def test_an_unknown_relay_is_not_found(client: statekeeper.AsyncClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.relays.get("nowhere")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("name", "sink", "kinds", "field"),
    [
        ("", "events", [], "relay.name"),
        ("../x", "events", [], "relay.name"),
        ("r", "", [], "relay.sink"),
        ("r", "kafka", [], "relay.sink"),
        ("r", "events", ["custom", "tool_called"], "relay.event_kinds[1]"),
    ],
)
async def test_an_invalid_relay_is_refused_naming_the_field(
    client: statekeeper.AsyncClient, name: str, sink: str, kinds: list[str], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.relays.create(name, sink, event_kinds=kinds)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(raised.value) == [field]
