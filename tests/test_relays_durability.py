"""Relays survive what servers and brokers go through: thousands of events from
concurrent appenders, a server killed mid-relay, and on PostgreSQL a replica that dies
while it runs the relay (another takes over; never two at once)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from redis.asyncio import Redis

import statekeeper
from statekeeper.events import custom_event
from statekeeper.v1 import events_pb2
from tests.brokers import NATS_URL, REDIS_URL, jetstream_stream, redis_keys
from tests.harness import ServerProcess, data_file, running_app
from tests.waiting import until_async

STARTED = events_pb2.AgentEvent(run_started=events_pb2.RunStarted(session_id="session-1"))
BATCH = 100


async def fill_run(client: statekeeper.AsyncClient, run_id: str, events: int) -> None:
    """A RunStarted, then custom events up to `events` in all, in batches."""
    await client.events.append(run_id, STARTED)
    for start in range(1, events, BATCH):
        count = min(BATCH, events - start)
        await client.events.append_many(
            run_id, [custom_event("step", {"n": start + n}) for n in range(count)]
        )


def first_seen(seqs: Sequence[tuple[str, int]]) -> dict[str, list[int]]:
    """Per run, the seqs in the order they first arrived (repeats dropped)."""
    runs: dict[str, list[int]] = defaultdict(list)
    seen: set[tuple[str, int]] = set()
    for item in seqs:
        if item not in seen:
            seen.add(item)
            runs[item[0]].append(item[1])
    return dict(runs)


async def redis_seqs(redis: Redis, key: str) -> list[tuple[str, int]]:
    """(run_id, seq) of every entry of the stream `key`, in stream order."""
    return [
        (fields[b"run_id"].decode(), int(fields[b"seq"])) for _, fields in await redis.xrange(key)
    ]


async def test_ten_thousand_events_from_concurrent_appenders_reach_jetstream_and_redis(
    tmp_path: Path,
) -> None:
    runs = [f"run-{n:02}" for n in range(20)]
    async with (
        jetstream_stream() as stream,
        redis_keys() as (redis, prefix),
        running_app(
            data_file(tmp_path),
            sink=[
                f"events={NATS_URL}?subject={stream.prefix}.{{run_id}}",
                f"audit={REDIS_URL}?stream={prefix}",
            ],
        ) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        await client.relays.create("to-nats", "events")
        await client.relays.create("to-redis", "audit")
        await asyncio.gather(*(fill_run(client, run, 500) for run in runs))

        async def redis_has_all() -> bool:
            return int(await redis.xlen(prefix)) >= 10_000

        await until_async(redis_has_all, "10,000 entries on the Redis stream")
        nats_headers = await stream.headers(10_000)
        redis_seen = await redis_seqs(redis, prefix)
        relays = [await client.relays.get(name) for name in ("to-nats", "to-redis")]
    expected = {run: list(range(1, 501)) for run in runs}
    assert first_seen([(h["run_id"], int(h["seq"])) for h in nats_headers]) == expected
    assert first_seen(redis_seen) == expected
    assert [relay.status.lag_events for relay in relays] == [0, 0]


async def test_a_server_killed_mid_relay_resumes_without_missing_an_event(
    tmp_path: Path,
) -> None:
    runs = [f"run-{n}" for n in range(8)]
    async with jetstream_stream() as stream:
        sink = ["--sink", f"events={NATS_URL}?subject={stream.prefix}.{{run_id}}"]
        server = ServerProcess(data_file(tmp_path), *sink).start()
        try:
            async with statekeeper.AsyncClient(server.target) as client:
                await asyncio.gather(*(fill_run(client, run, 250) for run in runs))
                await client.relays.create("events", "events")

                async def started_forwarding() -> bool:
                    return await stream.count() > 0

                await until_async(started_forwarding, "the relay started")
                server.kill()
            forwarded_before_kill = await stream.count()
            server.start()
            async with statekeeper.AsyncClient(server.target) as client:

                async def caught_up() -> bool:
                    return (await client.relays.get("events")).status.lag_events == 0

                await until_async(caught_up, "the relay caught up after the restart")
            headers = await stream.headers(await stream.count())
        finally:
            server.stop()
    assert forwarded_before_kill < 2000
    seqs = [(h["run_id"], int(h["seq"])) for h in headers]
    # JetStream dropped what the restarted relay published again (by Nats-Msg-Id).
    assert len(seqs) == len(set(seqs))
    assert first_seen(seqs) == {run: list(range(1, 251)) for run in runs}


@pytest.fixture
def replicas(postgres_url: str, redis_prefix: str) -> Iterator[list[ServerProcess]]:
    """Two `statekeeper serve` processes on one PostgreSQL schema, with one Redis sink."""
    flags = ["--relay-lease-duration", "1", "--sink", f"audit={REDIS_URL}?stream={redis_prefix}"]
    servers = [ServerProcess(postgres_url, *flags).start() for _ in range(2)]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
async def redis_prefix() -> object:
    async with redis_keys() as (_, prefix):
        yield prefix


def owner_of(servers: Sequence[ServerProcess], owner: str) -> ServerProcess:
    """The server whose process runs under `owner` (host-pid-suffix)."""
    [server] = [s for s in servers if s.process and f"-{s.process.pid}-" in owner]
    return server


async def test_one_replica_runs_a_relay_and_another_takes_over_when_it_dies(
    replicas: list[ServerProcess], redis_prefix: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        redis, _ = await stack.enter_async_context(redis_keys())
        first, second = [
            await stack.enter_async_context(statekeeper.AsyncClient(s.target, timeout=20))
            for s in replicas
        ]
        await first.relays.create("audit", "audit")
        await asyncio.gather(fill_run(first, "run-a", 150), fill_run(second, "run-b", 150))

        async def forwarded(count: int) -> bool:
            return int(await redis.xlen(redis_prefix)) >= count

        await until_async(lambda: forwarded(300), "300 events forwarded")
        await asyncio.sleep(0.5)
        # One replica ran the relay: two would have published the events twice.
        assert int(await redis.xlen(redis_prefix)) == 300
        owner = owner_of(replicas, (await first.relays.get("audit")).status.owner)
        survivor = second if owner is replicas[0] else first
        owner.kill()
        await fill_run(survivor, "run-c", 150)
        await until_async(lambda: forwarded(450), "the events after the death forwarded")
        relay = await survivor.relays.get("audit")
        seqs = await redis_seqs(redis, redis_prefix)
    assert owner_of(replicas, relay.status.owner) is not owner
    assert first_seen(seqs) == {run: list(range(1, 151)) for run in ("run-a", "run-b", "run-c")}
