"""Relays: how fast a relay drains a backlog into NATS JetStream and Redis Streams, and
how long an event takes from its commit to a consumer of the broker.

A server on a fresh store with one sink per broker holds N events (20,000;
200 in --quick and --smoke) in 20 runs, appended before any relay exists.
Then a relay is created and the time until the broker holds all N is the
relay's throughput. The reference, in the same run: the same N envelopes
published directly with nats-py / redis-py the way the relay publishes them
(8 runs at a time, each run one message at a time, each waiting for the
broker's acknowledgement, with the same headers or fields), to a stream or
key of its own.

Latency: with the relay caught up, one event at a time is appended (300;
30 in the smaller modes) and a consumer of the broker notes when it
arrives; the figure is arrival minus the envelope's `emitted_at` (the
commit, same host clock). The reference is a direct publish's time from
just before `publish` to the consumer's arrival. The relay's time includes
the append's commit notification, the relay's read of the store and its
own publish and acknowledgement.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import payloads
from bench.harness import Bench
from bench.load import ServiceUnavailable
from bench.report import Row
from bench.scenarios.common import store_label
from statekeeper.v1 import events_pb2

NATS_URL = "nats://127.0.0.1:4222"
REDIS_URL = "redis://127.0.0.1:6379/0"
RUNS = 20
PARALLEL = 8
"""Runs published at once (the relay's own PARALLEL_RUNS)."""
BATCH = 100
LATENCY_RUN = "latency"


def relay(bench: Bench, store: str, with_peers: bool) -> list[Row]:
    """Backlog throughput and commit-to-consumer latency of a relay to each broker."""
    events = bench.mode.size(20_000, 200)
    samples = bench.mode.size(300, 30)
    prefix = f"skbench-{secrets.token_hex(4)}"
    sinks = [
        "--sink",
        f"nats={NATS_URL}?subject={prefix}.relay.{{run_id}}",
        "--sink",
        f"redis={REDIS_URL}?stream={prefix}:relay:{{run_id}}",
    ]
    rows: list[Row] = []
    with bench.statekeeper(store, *sinks) as server:
        for broker in (NatsBroker(prefix), RedisBroker(prefix)):
            try:
                result = asyncio.run(measure(server.target, broker, events, samples))
            except ServiceUnavailable as exc:
                rows.append(Row(f"relay to {broker.label}", status="unavailable", note=str(exc)))
                continue
            rows.extend(result.rows(broker.label, events, store))
    return rows


class Result:
    """The figures of one broker."""

    def __init__(
        self,
        relay_rate: float,
        direct_rate: float,
        relay_latency: list[float],
        direct_latency: list[float],
    ) -> None:
        self.relay_rate = relay_rate
        self.direct_rate = direct_rate
        self.relay_latency = relay_latency
        self.direct_latency = direct_latency

    def rows(self, label: str, events: int, store: str) -> list[Row]:
        """A throughput row and a latency row, each against the direct publish."""
        relay_p50, relay_p99 = percentiles(self.relay_latency)
        direct_p50, direct_p99 = percentiles(self.direct_latency)
        return [
            Row(
                f"relay draining {events:,} events of {RUNS} runs to {label} " + store_label(store),
                figure=self.relay_rate,
                unit="events/s",
                reference=f"direct publish of the same messages, {PARALLEL} runs at a time,"
                " each acknowledged",
                reference_figure=self.direct_rate,
                note="each run in order, a page of up to 200 events at a time (JetStream: one"
                " message at a time, each acknowledged; Redis: one script of XADDs), the cursor"
                " stored after each page",
            ),
            Row(
                f"&emsp;commit to {label} consumer, p50",
                figure=relay_p50 * 1000,
                unit="ms",
                reference="direct publish to consumer, p50",
                reference_figure=direct_p50 * 1000,
                lower_is_better=True,
                note=f"p99 {relay_p99 * 1000:.2f} ms vs direct {direct_p99 * 1000:.2f} ms;"
                f" {len(self.relay_latency)} events one at a time",
            ),
        ]


def percentiles(values: list[float]) -> tuple[float, float]:
    """The p50 and p99 of `values`."""
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def measure(target: str, broker: Broker, events: int, samples: int) -> Result:
    """Preload, drain through a relay, publish directly, then the latencies."""
    import statekeeper

    await broker.open()
    try:
        async with statekeeper.AsyncClient(target, timeout=60) as client:
            runs = [payloads.run_id(i, f"{broker.name}-run") for i in range(RUNS)]
            per_run = events // RUNS
            for run in runs:
                await client.events.append(run, payloads.run_started(run))
                for start in range(1, per_run, BATCH):
                    count = min(BATCH, per_run - start)
                    await client.events.append_many(
                        run, [payloads.custom_event() for _ in range(count)]
                    )
            total = per_run * RUNS
            began = time.perf_counter()
            await client.relays.create(broker.name, broker.name)
            for _ in itertools.count():
                if await broker.relayed(runs) >= total:
                    break
                await asyncio.sleep(0.01)
            relay_rate = total / (time.perf_counter() - began)
            direct_rate = await direct_rate_of(broker, runs, per_run)
            relay_latency = await relay_latencies(client, broker, samples)
            direct_latency = [await broker.direct_latency() for _ in range(samples)]
            await client.relays.delete(broker.name)
    finally:
        await broker.close()
    return Result(relay_rate, direct_rate, relay_latency, direct_latency)


async def direct_rate_of(broker: Broker, runs: list[str], per_run: int) -> float:
    """Messages per second of publishing the runs' envelopes directly, as the relay does."""
    turns = asyncio.Semaphore(PARALLEL)
    event = payloads.custom_event()

    async def one(run: str) -> None:
        async with turns:
            for seq in range(1, per_run + 1):
                await broker.publish_direct(payloads.envelope(run, seq, event))

    began = time.perf_counter()
    await asyncio.gather(*(one(run) for run in runs))
    return per_run * len(runs) / (time.perf_counter() - began)


async def relay_latencies(client: Any, broker: Broker, samples: int) -> list[float]:
    """Seconds from each event's commit to its arrival at a consumer of the broker."""
    latencies: list[float] = []
    await client.events.append(LATENCY_RUN, payloads.run_started(LATENCY_RUN))
    await broker.next_relayed()
    for _ in range(samples):
        stored = await client.events.append(LATENCY_RUN, payloads.custom_event())
        arrived = await broker.next_relayed()
        latencies.append(arrived - stored.emitted_at.ToMicroseconds() / 1_000_000)
    return latencies


class Broker:
    """One broker's side of the scenario: counting what the relay published, publishing
    directly, and consuming."""

    name = ""
    label = ""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    async def open(self) -> None:
        """Connect and make what the scenario publishes to."""

    async def close(self) -> None:
        """Remove what `open` made and disconnect."""

    async def relayed(self, runs: list[str]) -> int:
        """Messages the relay published so far."""
        raise NotImplementedError

    async def publish_direct(self, envelope: events_pb2.EventEnvelope) -> None:
        """Publish one envelope as the relay would, to the direct stream or key."""
        raise NotImplementedError

    async def next_relayed(self) -> float:
        """Wall-clock time the next message of the latency run reached a consumer."""
        raise NotImplementedError

    async def direct_latency(self) -> float:
        """Seconds from a direct publish to its arrival at a consumer."""
        raise NotImplementedError


def headers(envelope: events_pb2.EventEnvelope) -> dict[str, str]:
    """The identity a relay's message carries."""
    return {
        "namespace": "default",
        "run_id": envelope.run_id,
        "seq": str(envelope.seq),
        "event_id": envelope.event_id,
        "kind": "custom",
        "content_type": "application/x-protobuf",
    }


async def _guarded(action: Callable[[], Awaitable[Any]], what: str) -> Any:
    try:
        return await action()
    except Exception as exc:  # each broker's client raises its own types
        raise ServiceUnavailable(f"{what}: {exc}") from None


class NatsBroker(Broker):
    """NATS JetStream: one stream for the relay's subjects and the direct ones."""

    name = "nats"
    label = "NATS JetStream"

    async def open(self) -> None:
        """A stream of the scenario's own, and an ordered consumer of the latency run."""
        import nats
        from nats.js.api import StreamConfig

        self.client = await _guarded(lambda: nats.connect(NATS_URL), f"NATS at {NATS_URL}")
        self.js = self.client.jetstream()
        self.stream = self.prefix.upper().replace("-", "_")
        await self.js.add_stream(StreamConfig(name=self.stream, subjects=[f"{self.prefix}.>"]))
        self.latency = await self.js.subscribe(
            f"{self.prefix}.relay.{LATENCY_RUN}", ordered_consumer=True
        )
        self.direct = await self.js.subscribe(f"{self.prefix}.probe", ordered_consumer=True)

    async def close(self) -> None:
        """Delete the stream."""
        await self.js.delete_stream(self.stream)
        await self.client.close()

    async def relayed(self, runs: list[str]) -> int:
        """The stream's messages on the relay's subjects."""
        info = await self.js.stream_info(self.stream, subjects_filter=f"{self.prefix}.relay.>")
        return int(info.state.messages)

    async def publish_direct(self, envelope: events_pb2.EventEnvelope) -> None:
        """js.publish with the relay's headers, waiting for the acknowledgement."""
        await self.js.publish(
            f"{self.prefix}.direct.{envelope.run_id}",
            envelope.SerializeToString(),
            headers={"Nats-Msg-Id": f"{envelope.run_id}/{envelope.seq}", **headers(envelope)},
        )

    async def next_relayed(self) -> float:
        """When the next relayed message of the latency run arrived."""
        await self.latency.next_msg(timeout=30)
        return time.time()

    async def direct_latency(self) -> float:
        """A publish to the probe subject until its consumer has it."""
        began = time.time()
        await self.js.publish(
            f"{self.prefix}.probe",
            payloads.envelope("p", 1, payloads.custom_event()).SerializeToString(),
        )
        await self.direct.next_msg(timeout=30)
        return time.time() - began


class RedisBroker(Broker):
    """Redis Streams: one key per run for the relay, others for the direct publish."""

    name = "redis"
    label = "Redis Streams"

    async def open(self) -> None:
        """A client; the keys are made by the first XADD."""
        from redis.asyncio import Redis

        self.client = Redis.from_url(REDIS_URL)
        await _guarded(self.client.ping, f"Redis at {REDIS_URL}")
        self.latency_id = "0"
        self.direct_id = "0"

    async def close(self) -> None:
        """Delete every key of the scenario."""
        keys = [key async for key in self.client.scan_iter(match=f"{self.prefix}:*")]
        if keys:
            await self.client.delete(*keys)
        await self.client.aclose()

    async def relayed(self, runs: list[str]) -> int:
        """Entries of the relay's keys of `runs`."""
        counts = await asyncio.gather(
            *(self.client.xlen(f"{self.prefix}:relay:{run}") for run in runs)
        )
        return int(sum(counts))

    async def publish_direct(self, envelope: events_pb2.EventEnvelope) -> None:
        """XADD with the relay's fields."""
        fields: dict[Any, Any] = {**headers(envelope), "data": envelope.SerializeToString()}
        await self.client.xadd(f"{self.prefix}:direct:{envelope.run_id}", fields)

    async def next_relayed(self) -> float:
        """When the next relayed entry of the latency run was read (XREAD BLOCK)."""
        key = f"{self.prefix}:relay:{LATENCY_RUN}"
        [(_, [(entry_id, _)])] = await self.client.xread(
            {key: self.latency_id}, count=1, block=30_000
        )
        self.latency_id = entry_id
        return time.time()

    async def direct_latency(self) -> float:
        """An XADD to the probe key until a blocked reader has it."""
        key = f"{self.prefix}:probe"
        reader = asyncio.ensure_future(
            self.client.xread({key: self.direct_id}, count=1, block=30_000)
        )
        await asyncio.sleep(0.001)
        began = time.time()
        await self.client.xadd(key, {"data": b"x"})
        [(_, [(entry_id, _)])] = await reader
        self.direct_id = entry_id
        return time.time() - began
