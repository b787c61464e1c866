"""Memory: the server's RSS while a follower lags far behind, and with many idle followers.

Lagging follower: one follower catches up on a run, then stops reading
(its stream stays open) while 1,000,000 events are appended to that run in
batches of 1,000. The server's RSS is sampled all along; the reference is
the RSS growth of the same appends on a fresh server with no follower, so
the difference is what the lagging follower costs. Afterwards the follower
reads on and must receive every event, which shows it really was behind
and that nothing was dropped.

Idle followers: 1,000 streams following 100 quiet runs (10 each); the
reference is the bare echo holding as many idle streams.
"""

from __future__ import annotations

import asyncio
import threading
import time
from multiprocessing import get_context

from bench import payloads
from bench.harness import Bench
from bench.load import Window, all_caught_up, open_channels, raw_stream, rpc_errors
from bench.report import Row, Target
from bench.scenarios.common import REPLAY_EVENTS, echo, store_label
from bench.scenarios.events import preload, start_runs
from bench.servers import RssSampler, ServerProcess
from statekeeper.v1 import events_pb2

MB = 1024 * 1024
LAG_FULL = 1_000_000
IDLE_FULL = 1_000
IDLE_RUNS = 100
IDLE_CHANNELS = 10
WARMUP_EVENTS = 20_000
"""Appended to another run before the baseline is read, so caches are warm."""


# -- generator side ---------------------------------------------------------------


async def lagging_follower(
    target: str, run: str, ready: threading.Event, resume: threading.Event, expected: int
) -> Window:
    """Catch up, set `ready`, stop reading until `resume` is set, then read `expected` events.

    The events are manager proxies shared with the orchestrator.
    The window's operations are the events received after resuming and its
    seconds the time they took.
    """
    request = events_pb2.ReplayEventsRequest(run_id=run, follow=True).SerializeToString()
    async with open_channels(target, 1) as (channel,), rpc_errors("ReplayEvents"):
        messages = raw_stream(channel, REPLAY_EVENTS)(request).__aiter__()
        caught_up = False
        while not caught_up:
            message = events_pb2.ReplayEventsResponse.FromString(await messages.__anext__())
            caught_up = message.HasField("caught_up")
        await asyncio.to_thread(ready.set)
        await asyncio.to_thread(resume.wait)
        received = 0
        began = time.perf_counter()
        while received < expected:
            decoded = events_pb2.ReplayEventsResponse.FromString(await messages.__anext__())
            received += len(decoded.batch.envelopes)
        return Window(operations=received, seconds=time.perf_counter() - began)


async def idle_followers(
    target: str, path: str, runs: list[str], count: int, start_at: float, duration: float
) -> Window:
    """Open `count` following streams and hold them for `duration` once all are caught up."""
    caught_up = 0
    async with open_channels(target, IDLE_CHANNELS) as channels:

        async def follow(index: int) -> None:
            nonlocal caught_up
            request = events_pb2.ReplayEventsRequest(
                run_id=runs[index % len(runs)], follow=True
            ).SerializeToString()
            async for message in raw_stream(channels[index % len(channels)], path)(request):
                if events_pb2.ReplayEventsResponse.FromString(message).HasField("caught_up"):
                    caught_up += 1

        async with rpc_errors(path):
            tasks = [asyncio.create_task(follow(i)) for i in range(count)]
            try:
                await all_caught_up(lambda: caught_up, count, tasks)
                await asyncio.sleep(duration)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    return Window(operations=count, seconds=duration)


# -- scenario ------------------------------------------------------------------------


def _append_growth(
    bench: Bench, server: ServerProcess, run: str, events: int
) -> tuple[int, int, float]:
    """(baseline RSS, peak RSS, seconds) while `events` are appended to `run`."""
    bench.generators.run(start_runs, target=server.target, runs=[run, "warmup-00000000"])
    bench.generators.run(
        preload, target=server.target, runs=["warmup-00000000"], events_per_run=WARMUP_EVENTS
    )
    baseline = server.rss()
    began = time.monotonic()
    with RssSampler(server.pid) as sampler:
        bench.generators.run(preload, target=server.target, runs=[run], events_per_run=events)
    return baseline, sampler.peak, time.monotonic() - began


def lagging(bench: Bench, store: str) -> Row:
    """RSS growth with one follower far behind vs the same appends with no follower."""
    lag = bench.mode.size(LAG_FULL, minimum=2_000)
    name = f"memory: one follower {lag:,} events behind {store_label(store)}"
    run = payloads.run_id(0)
    with bench.statekeeper(store) as server:
        alone_base, alone_peak, _ = _append_growth(bench, server, payloads.run_id(1), lag)
    with bench.statekeeper(store) as server, get_context("spawn").Manager() as manager:
        ready, resume = manager.Event(), manager.Event()
        follower = bench.generators.submit(
            lagging_follower,
            target=server.target,
            run=run,
            ready=ready,
            resume=resume,
            expected=lag,
        )
        while not ready.wait(0.1):
            if follower.done():
                follower.result()
        base, peak, seconds = _append_growth(bench, server, run, lag)
        resume.set()
        caught_up = follower.result()
    growth = max(0, peak - base) / MB
    alone = max(0, alone_peak - alone_base) / MB
    return Row(
        name,
        figure=growth,
        unit="MB",
        reference="same appends, no follower",
        reference_figure=alone,
        targets=[Target(50, at_least=False)],
        lower_is_better=True,
        note=f"RSS {base / MB:.0f} -> peak {peak / MB:.0f} MB over {seconds:.0f} s of appends; "
        f"the follower then read all {caught_up.operations:,} events at "
        f"{caught_up.rate:,.0f} events/s",
    )


def _idle_growth(bench: Bench, server: ServerProcess, path: str, count: int) -> tuple[int, int]:
    """(baseline RSS, peak RSS) while `count` idle followers are connected to `server`."""
    runs = [payloads.run_id(i) for i in range(IDLE_RUNS)]
    baseline = server.rss()
    with RssSampler(server.pid) as sampler:
        bench.generators.run(
            idle_followers,
            target=server.target,
            path=path,
            runs=runs,
            count=count,
            start_at=time.time(),
            duration=bench.mode.duration + bench.mode.settle,
        )
    return baseline, sampler.peak


def idle(bench: Bench, store: str) -> Row:
    """RSS growth with 1,000 idle followers vs the bare echo holding as many streams."""
    count = IDLE_FULL if bench.mode.judged else 100
    name = f"memory: {count:,} idle followers {store_label(store)}"
    with bench.statekeeper(store) as server:
        bench.generators.run(
            start_runs,
            target=server.target,
            runs=[payloads.run_id(i) for i in range(IDLE_RUNS)],
        )
        base, peak = _idle_growth(bench, server, REPLAY_EVENTS, count)
    echo_base, echo_peak = _idle_growth(bench, bench.echo, echo("Idle"), count)
    growth = max(0, peak - base) / MB
    return Row(
        name,
        figure=growth,
        unit="MB",
        reference="bare echo, as many idle streams",
        reference_figure=max(0, echo_peak - echo_base) / MB,
        targets=[Target(50, at_least=False)],
        lower_is_better=True,
        note=f"RSS {base / MB:.0f} -> peak {peak / MB:.0f} MB; "
        f"{1024 * growth / count:.0f} KB per follower",
    )


def memory(bench: Bench, store: str, with_peers: bool) -> list[Row]:
    """Both memory checks."""
    return [lagging(bench, store), idle(bench, store)]
