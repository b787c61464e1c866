"""Live follow: append-to-delivery latency with 100 followers on 10 runs at 500 appends/s.

The appender (one generator process) writes its wall-clock time into each
event's data (`sent_at`) and appends at a steady rate (an open loop: a slow
append never lowers the rate). The followers (another process) replay each
run with `follow`, and for every envelope received take the time minus
`sent_at`: append-to-delivery on one host clock. The same is measured
through the echo's minimal relay (publish fans out to subscriber queues),
Redis XREAD BLOCK and NATS JetStream ordered consumers.
"""

from __future__ import annotations

import asyncio
import struct
import time

import grpc

from bench import payloads, peers
from bench.harness import Bench, Measurement, ServerCpu, best, split
from bench.load import (
    Window,
    all_caught_up,
    cpu_in_window,
    open_channels,
    process_cpu,
    raw_stream,
    raw_unary,
    rpc_errors,
    sleep_until,
)
from bench.report import Row, Target
from bench.scenarios.common import APPEND_EVENT, REPLAY_EVENTS, echo, peer_row, store_label
from bench.scenarios.events import start_runs
from bench.servers import ServerProcess
from statekeeper.v1 import events_pb2

RUNS = 10
FOLLOWERS = 100
RATE = 500.0
"""Appends per second, over all runs."""
FOLLOWER_PROCESSES = 2
"""Generator processes the followers are spread over (decoding 5,000 deliveries/s is work)."""
FOLLOWER_CHANNELS = 4
DRAIN = 0.5
"""Seconds followers keep reading after the window, for the last deliveries."""


def _shares(total: int, parts: int) -> list[tuple[int, int]]:
    """(first follower, count) of each follower process."""
    counts = split(total, parts)
    return [(sum(counts[:i]), n) for i, n in enumerate(counts)]


async def followers(
    target: str,
    path: str,
    runs: list[str],
    first: int,
    count: int,
    start_at: float,
    duration: float,
) -> Window:
    """Followers `first` .. `first + count - 1`, follower i on run i % len(runs);
    latencies of deliveries sent inside the window.

    `extra["commit_p50"]` is the median of receive time minus the envelope's
    `emitted_at` (statekeeper's commit time), when the server sets it.
    """
    end_at = start_at + duration
    window = Window(seconds=duration)
    commit_latencies: list[float] = []
    caught_up = 0
    async with open_channels(target, FOLLOWER_CHANNELS) as channels:

        async def follow(index: int) -> None:
            nonlocal caught_up
            stream = raw_stream(channels[index % len(channels)], path)
            request = events_pb2.ReplayEventsRequest(
                run_id=runs[(first + index) % len(runs)], follow=True
            ).SerializeToString()
            async for message in stream(request):
                received = time.time()
                decoded = events_pb2.ReplayEventsResponse.FromString(message)
                kind = decoded.WhichOneof("message")
                if kind == "caught_up":
                    caught_up += 1
                    continue
                if kind != "batch":
                    continue
                for envelope in decoded.batch.envelopes:
                    sent = envelope.event.custom.data.fields["sent_at"].number_value
                    if start_at <= sent <= end_at:
                        window.latencies.append(received - sent)
                        window.operations += 1
                        if envelope.HasField("emitted_at"):
                            commit_latencies.append(
                                received - envelope.emitted_at.ToNanoseconds() / 1e9
                            )

        async with rpc_errors(path):
            tasks = [asyncio.create_task(follow(i)) for i in range(count)]
            await all_caught_up(lambda: caught_up, count, tasks)
            window.extra["late"] = float(time.time() > start_at)
            await sleep_until(start_at)
            cpu, began = process_cpu(), time.monotonic()
            await sleep_until(end_at + DRAIN)
            window.cpu_seconds = cpu_in_window(cpu, began, duration)
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError
                ):
                    raise result
    if commit_latencies:
        commit_latencies.sort()
        window.extra["commit_p50"] = commit_latencies[len(commit_latencies) // 2]
    return window


SENTINEL = 1234567.875
"""A `sent_at` whose 8 bytes are replaced by the real send time in pre-built requests."""


def _stamped_request(run: str) -> tuple[bytes, bytes]:
    """An AppendEvent request split around the bytes of its `sent_at` double."""
    data = payloads.append_request(run, SENTINEL).SerializeToString()
    mark = struct.pack("<d", SENTINEL)
    assert data.count(mark) == 1
    before, after = data.split(mark)
    return before, after


async def appender(
    target: str, path: str, runs: list[str], rate: float, start_at: float, duration: float
) -> Window:
    """Append to the runs in turn at `rate` per second through the window."""
    templates = [_stamped_request(run) for run in runs]
    async with open_channels(target, 1) as (channel,):
        call = raw_unary(channel, path)
        window = Window(seconds=duration)

        async def send(index: int) -> None:
            before, after = templates[index % len(templates)]
            request = before + struct.pack("<d", time.time()) + after
            started = time.perf_counter()
            try:
                await call(request, timeout=30)
            except grpc.aio.AioRpcError as exc:
                # An overloaded server sheds calls; count them, the figures say the rest.
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    raise
                key = f"failed {exc.code().name}"
                window.extra[key] = window.extra.get(key, 0.0) + 1
                return
            window.latencies.append(time.perf_counter() - started)
            window.operations += 1

        async with rpc_errors(path):
            await call(templates[0][0] + struct.pack("<d", 0.0) + templates[0][1], timeout=30)
            await sleep_until(start_at)
            cpu, began = process_cpu(), time.monotonic()
            await peers.paced(rate, start_at, start_at + duration, send)
            window.cpu_seconds = cpu_in_window(cpu, began, duration)
    return window


def _measure(
    bench: Bench, server: ServerProcess, follow_path: str, append_path: str
) -> Measurement:
    """One window of followers and appender against `server` (statekeeper or the echo)."""
    runs = [payloads.run_id(i) for i in range(RUNS)]
    lead = bench.mode.lead + bench.mode.settle
    start_at = time.time() + lead
    duration = bench.mode.duration * 2
    common = {"runs": runs, "start_at": start_at, "duration": duration}
    receiving = [
        bench.generators.submit(
            followers, target=server.target, path=follow_path, first=first, count=count, **common
        )
        for first, count in _shares(FOLLOWERS, FOLLOWER_PROCESSES)
    ]
    sent = bench.generators.submit(
        appender, target=server.target, path=append_path, rate=RATE, **common
    )
    cpu = ServerCpu(server, start_at, duration, bench.recording_path("follow", server))
    try:
        windows = [r.result() for r in receiving]
        appends = sent.result()
    finally:
        cpu.finish()
    if cpu.profile_summary is not None:
        bench.profiles["follow"] = cpu.profile_summary
    window = Window.merge(windows)
    window.extra["append_p50"] = appends.p50
    window.extra["append_rate"] = appends.rate
    window.extra["append_cpu"] = appends.cpu_share
    window.extra.update({k: v for k, v in appends.extra.items() if k.startswith("failed")})
    window.extra["commit_p50"] = max(w.extra.get("commit_p50", 0.0) for w in windows)
    window.extra["late"] = max(w.extra.get("late", 0.0) for w in windows)
    return Measurement(window, cpu.share)


def follow(bench: Bench, store: str, with_peers: bool) -> list[Row]:
    """Append-to-delivery latency of live followers vs the bare relay and the peers."""
    name = f"follow: {FOLLOWERS} followers, {RUNS} runs, {RATE:.0f} appends/s {store_label(store)}"
    measured: list[Measurement] = []
    references: list[Measurement] = []
    with bench.statekeeper(store) as server:
        bench.generators.run(
            start_runs, target=server.target, runs=[payloads.run_id(i) for i in range(RUNS)]
        )
        for _ in range(bench.mode.repeats):
            measured.append(_measure(bench, server, REPLAY_EVENTS, APPEND_EVENT))
            references.append(_measure(bench, bench.echo, echo("Subscribe"), echo("Publish")))
    sk = best(measured, lower_is_better=True)
    ref = best(references, lower_is_better=True)
    extra = sk.window.extra
    note = (
        f"{sk.window.operations:,} deliveries at {extra['append_rate']:.0f} appends/s; "
        f"commit-to-delivery p50 {extra.get('commit_p50', 0) * 1000:.2f} ms; "
        f"AppendEvent p50 {extra['append_p50'] * 1000:.2f} ms; "
        f"server CPU {100 * (sk.server_cpu or 0):.0f}%, "
        f"follower processes CPU {100 * sk.window.cpu_share:.0f}%, "
        f"appender CPU {100 * extra['append_cpu']:.0f}%"
        + ("; some followers caught up after the window opened" if extra.get("late") else "")
        + "".join(
            f"; {count:.0f} appends {key} (the server shed load)"
            for key, count in extra.items()
            if key.startswith("failed")
        )
    )
    rows = [
        Row(
            f"{name} {quantile}",
            figure=getattr(sk.window, quantile) * 1000,
            unit="ms",
            reference="bare echo relay",
            reference_figure=getattr(ref.window, quantile) * 1000,
            targets=[Target(bound, at_least=False)],
            note=note,
            lower_is_better=True,
        )
        for quantile, bound in (("p50", 2.0), ("p99", 10.0))
    ]
    if with_peers:
        for label, function, port in (
            ("Redis XREAD BLOCK", peers.redis_follow, ("redis", 6379)),
            ("NATS JetStream ordered consumers", peers.nats_follow, ("nats", 4222)),
        ):
            rows.append(
                peer_row(
                    bench,
                    name,
                    sk.window.p50 * 1000,
                    "ms",
                    f"{label}, p50",
                    function,
                    port,
                    latency=True,
                    duration=bench.mode.duration * 2,
                    streams=RUNS,
                    followers=FOLLOWERS,
                    rate=RATE,
                )
            )
    return rows
