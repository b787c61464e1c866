"""Stalled followers: what ReplayEvents streams that never read cost the server and its callers.

A run holds about 2 MB of history (2,000 events of about 1 KB). Then N
followers (1,000; 200 in --quick, 20 in --smoke), from two generator
processes, 10 streams per connection, each open ReplayEvents with `follow`
on that run and never read a message. Another client (a third process)
calls LoadSnapshot and AppendEvent one at a time: for 10 s from the moment
the followers start opening their streams, and again once the server has
sent all that their windows allow (its CPU fell under 15%), each beside the
same caller's latency on the same server before the followers came. The
server's RSS is sampled from before the followers came until they leave
(the peak is the figure), and read again right after they left and after a
pause (10 s): memory the server does not give back shows there.

How a real stalled consumer behaves: its application stops pulling
messages (blocked elsewhere, or its process frozen), but its gRPC
transport keeps reading the socket until the stream's HTTP/2 window (and
the connection's) is full; then the server can send no more and whatever
it has not sent stays in its memory. How much the client takes first
depends on that window, so the scenario is run twice:

- **small windows**: channels with BDP probing off (`grpc.http2.bdp_probe`
  0), so each stream's window stays at gRPC's initial 64 KB. The client
  takes 64 KB and stops; the server keeps the rest. This is also what a
  frozen process does once the kernel's socket buffers are full, and what
  a client with a fixed small window (a proxy, another gRPC stack) does:
  the worst case for the server, and the one the target is set for.
- **default windows**: grpc's default client. BDP probing grows the
  window while data flows fast, so on a fast link the client's transport
  takes several MB per stream before it stops; a 2 MB history may then
  leave the server entirely. "the client transports took in" says how
  much the follower processes took in. Followers whose whole history left
  are caught up as far as the server knows: idle followers of one run,
  each owed a heartbeat every interval, so the rows while they stall also
  show what a thousand idle followers of one run cost other callers.

Targets: at most 100 MB of RSS added for 1,000 stalled followers (100 KB
each; the figure is scaled to N in the smaller modes), and the other
caller's p99 under 50 ms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

import grpc

from bench import payloads
from bench.harness import Bench, split
from bench.load import (
    CHANNEL_OPTIONS,
    ServiceUnavailable,
    Window,
    latency_probe,
    raw_stream,
    unary_many,
)
from bench.report import Row, Target
from bench.scenarios.common import (
    APPEND_EVENT,
    APPEND_EVENTS,
    LOAD_SNAPSHOT,
    REPLAY_EVENTS,
    SAVE_SNAPSHOT,
    store_label,
)
from bench.scenarios.events import start_runs
from bench.servers import RssSampler, ServerProcess
from statekeeper.v1 import events_pb2, snapshots_pb2

MB = 1024 * 1024
KB = 1024
HISTORY_EVENTS = 2_000
EVENT_BYTES = 1_000
PRELOAD_BATCH = 500
FOLLOWERS = {"full": 1_000, "quick": 200, "smoke": 20}
FOLLOWER_PROCESSES = 2
STREAMS_PER_CONNECTION = 10
BUDGET_MB_PER_1000 = 100.0
"""The RSS target: 100 MB for 1,000 stalled followers (scaled to N in smaller modes)."""
P99_TARGET_MS = 50.0
PAUSES = {"full": 10.0, "quick": 5.0, "smoke": 1.0}
"""Seconds after the followers left before RSS is read again."""
QUIET_CPU = 0.15
"""Share of a core under which the server counts as done sending what the windows allowed."""
QUIET_LIMIT = 120.0
OPEN_LIMIT = 120.0
"""Seconds the followers get to open their streams."""
WINDOWS: dict[str, list[tuple[str, int]]] = {
    "small": [("grpc.http2.bdp_probe", 0)],
    "default": [],
}
"""Client channel options of each kind of stalled consumer."""
WINDOW_NAMES = {
    "small": "64 KB windows (BDP off)",
    "default": "default windows (BDP on)",
}

FOLLOWED_RUN = payloads.run_id(0, "stalled")
PROBE_RUN = payloads.run_id(0, "probe")
PROBE_SNAPSHOT = payloads.run_id(1, "probe")


# -- generator side ---------------------------------------------------------------


def _own_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


async def stalled_followers(
    target: str,
    run: str,
    count: int,
    window: str,
    ready: Any,
    release: Any,
) -> Window:
    """Open `count` following streams of `run`, never read them, end them once `release` is set.

    `ready` and `release` are manager events shared with the orchestrator;
    `ready` is set once every stream is open (the server sent its first
    message or refused the stream). `extra` holds the streams refused (by
    code) and the RSS this process grew by while holding them: what its
    transport took in.
    """
    options = [*CHANNEL_OPTIONS, *WINDOWS[window]]
    connections = max(1, -(-count // STREAMS_PER_CONNECTION))
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
    result = Window(operations=count)
    try:
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), 30) for c in channels))
        rss_before = _own_rss()
        request = events_pb2.ReplayEventsRequest(run_id=run, follow=True).SerializeToString()
        calls = [
            raw_stream(channels[i % connections], REPLAY_EVENTS)(request) for i in range(count)
        ]
        await asyncio.wait_for(
            asyncio.gather(*(call.initial_metadata() for call in calls)), OPEN_LIMIT
        )
        await asyncio.sleep(0.5)
        for call in calls:
            if call.done():
                code = await call.code()
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    raise ServiceUnavailable(f"ReplayEvents: {code.name}")
                key = f"refused {code.name}"
                result.extra[key] = result.extra.get(key, 0.0) + 1
        await asyncio.to_thread(ready.set)
        await asyncio.to_thread(release.wait)
        result.extra["client_rss"] = float(_own_rss() - rss_before)
        for call in calls:
            call.cancel()
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    return result


async def preload_history(target: str, run: str, events: int, event_bytes: int) -> int:
    """The followed run: a RunStarted, then `events - 1` events of about `event_bytes` each."""
    await start_runs(target, [run])
    requests = []
    for start in range(1, events, PRELOAD_BATCH):
        count = min(PRELOAD_BATCH, events - start)
        inputs = [
            events_pb2.EventInput(event=payloads.sized_event(event_bytes, start + i))
            for i in range(count)
        ]
        requests.append(
            events_pb2.AppendEventsRequest(run_id=run, inputs=inputs).SerializeToString()
        )
    return await unary_many(target, APPEND_EVENTS, requests, concurrency=1)


def probe_calls() -> list[tuple[str, str, bytes]]:
    """The other caller's calls: LoadSnapshot of a small snapshot, AppendEvent to its own run."""
    load = snapshots_pb2.LoadSnapshotRequest(run_id=PROBE_SNAPSHOT).SerializeToString()
    append = payloads.append_request(PROBE_RUN).SerializeToString()
    return [("LoadSnapshot", LOAD_SNAPSHOT, load), ("AppendEvent", APPEND_EVENT, append)]


async def prepare_probe(target: str) -> int:
    """The snapshot the probe loads and the run it appends to."""
    await start_runs(target, [PROBE_RUN])
    save = snapshots_pb2.SaveSnapshotRequest(snapshot=payloads.snapshot(PROBE_SNAPSHOT))
    return await unary_many(target, SAVE_SNAPSHOT, [save.SerializeToString()], concurrency=1)


# -- scenario ------------------------------------------------------------------------


def _probe_task(server: ServerProcess) -> tuple[Any, dict[str, Any]]:
    return (latency_probe, {"target": server.target, "calls": probe_calls()})


def _probe(bench: Bench, server: ServerProcess, label: str) -> Window:
    windows, _ = bench.measure_each(
        [_probe_task(server)], server, label, duration=bench.mode.duration * 2
    )
    return windows[0]


def _wait_quiet(server: ServerProcess, limit: float) -> float:
    """Seconds until the server uses under QUIET_CPU of a core over a second (at most `limit`)."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        before = server.cpu_seconds()
        time.sleep(1.0)
        if server.cpu_seconds() - before < QUIET_CPU:
            break
    return time.monotonic() - began


@dataclass
class Stall:
    """What one stalled-followers run measured."""

    rss_before: int = 0
    rss_settled: int = 0
    rss_peak: int = 0
    rss_left: int = 0
    rss_paused: int = 0
    quiet_after: float = 0.0
    client_bytes: float = 0.0
    refused: str = ""
    probes: dict[str, Window] = field(default_factory=dict)
    """The other caller's windows: idle, opening (while the followers open and take in what
    their windows allow), stalled, after (once they left)."""


def _run_stall(bench: Bench, store: str, window: str, count: int, label: str) -> Stall:
    """One server: idle probe, N followers opening then stalled beside the probe, RSS after."""
    result = Stall()
    with bench.statekeeper(store) as server, get_context("spawn").Manager() as manager:
        bench.generators.run(
            preload_history,
            target=server.target,
            run=FOLLOWED_RUN,
            events=HISTORY_EVENTS,
            event_bytes=EVENT_BYTES,
        )
        bench.generators.run(prepare_probe, target=server.target)
        result.probes["idle"] = _probe(bench, server, f"{label} idle")
        result.rss_before = server.rss()
        ready = [manager.Event() for _ in range(FOLLOWER_PROCESSES)]
        release = manager.Event()
        followers = [
            bench.generators.submit(
                stalled_followers,
                target=server.target,
                run=FOLLOWED_RUN,
                count=share,
                window=window,
                ready=ready[index],
                release=release,
            )
            for index, share in enumerate(split(count, FOLLOWER_PROCESSES))
        ]
        opening_probe = bench.generators.submit(
            latency_probe,
            **_probe_task(server)[1],
            start_at=time.time(),
            duration=bench.mode.duration * 2,
        )
        try:
            with RssSampler(server.pid, interval=0.1) as sampler:
                _wait_ready(ready, followers)
                result.probes["opening"] = opening_probe.result()
                time.sleep(bench.mode.settle)
                result.quiet_after = _wait_quiet(server, QUIET_LIMIT)
                result.rss_settled = server.rss()
                result.probes["stalled"] = _probe(bench, server, label)
        finally:
            release.set()
        windows = [f.result() for f in followers]
        result.rss_peak = sampler.peak
        time.sleep(1.0)
        result.rss_left = server.rss()
        time.sleep(PAUSES[bench.mode.name])
        result.rss_paused = server.rss()
        result.probes["after"] = _probe(bench, server, f"{label} after")
    result.client_bytes = sum(w.extra.get("client_rss", 0.0) for w in windows)
    result.refused = _refused(windows)
    return result


def _stall(bench: Bench, store: str, window: str, count: int) -> list[Row]:
    """The rows of one kind of stalled consumer: RSS added, and the other caller's p99."""
    label = f"stalled: {count:,} followers, {WINDOW_NAMES[window]} {store_label(store)}"
    run = _run_stall(bench, store, window, count, label)
    added = max(0, run.rss_peak - run.rss_before)
    note = (
        f"RSS {run.rss_before / MB:.0f} MB before -> {run.rss_settled / MB:.0f} MB with the "
        f"followers stalled (peak {run.rss_peak / MB:.0f} MB) -> {run.rss_left / MB:.0f} MB 1 s "
        f"after they left -> {run.rss_paused / MB:.0f} MB after {PAUSES[bench.mode.name]:.0f} s "
        f"more; {1024 * added / MB / count:.0f} KB per follower; history "
        f"{HISTORY_EVENTS:,} events of {EVENT_BYTES / 1000:.0f} KB; "
        f"{-(-count // STREAMS_PER_CONNECTION)} connections; the client transports took in "
        f"{run.client_bytes / MB:.0f} MB; the server went quiet {run.quiet_after:.0f} s after "
        "the streams were open" + (f"; streams refused: {run.refused}" if run.refused else "")
    )
    rows = [
        Row(
            label + " RSS added",
            figure=added / MB,
            unit="MB",
            targets=[Target(BUDGET_MB_PER_1000 * count / 1000, at_least=False)],
            lower_is_better=True,
            note=note,
        )
    ]
    idle = run.probes["idle"]
    for phase, what in (("opening", "while they open"), ("stalled", "while they stall")):
        for call in ("LoadSnapshot", "AppendEvent"):
            rows.append(
                Row(
                    f"  other caller's {call} p99 {what}",
                    figure=run.probes[phase].extra[f"{call} p99"] * 1000,
                    unit="ms",
                    reference="same caller, idle server",
                    reference_figure=idle.extra[f"{call} p99"] * 1000,
                    targets=[Target(P99_TARGET_MS, at_least=False)],
                    lower_is_better=True,
                    note=_probe_note(call, run.probes[phase], idle, run.probes["after"]),
                )
            )
    return rows


def _wait_ready(ready: Sequence[Any], followers: Sequence[Any]) -> None:
    """Until every follower process has opened its streams; a failed one re-raises."""
    deadline = time.monotonic() + OPEN_LIMIT + 30
    for event in ready:
        while not event.wait(0.1):
            for future in followers:
                if future.done():
                    future.result()
            if time.monotonic() > deadline:
                raise RuntimeError("the stalled followers did not open their streams")


def _refused(results: Sequence[Window]) -> str:
    counts: dict[str, float] = {}
    for result in results:
        for key, value in result.extra.items():
            if key.startswith("refused "):
                counts[key] = counts.get(key, 0.0) + value
    return ", ".join(f"{value:.0f} {key.split(' ', 1)[1]}" for key, value in counts.items())


def _probe_note(call: str, stalled: Window, idle: Window, after: Window) -> str:
    def p(window: Window, q: str) -> str:
        return f"{window.extra[f'{call} {q}'] * 1000:.2f}"

    failures = "".join(
        f"; {value:.0f} probe calls {key}"
        for window in (stalled, idle, after)
        for key, value in window.extra.items()
        if key.startswith("failed ")
    )
    return (
        f"p50 {p(stalled, 'p50')} ms with the followers vs {p(idle, 'p50')} ms idle; "
        f"after they left p50 {p(after, 'p50')} ms, p99 {p(after, 'p99')} ms; "
        f"{stalled.extra[f'{call} calls']:.0f} calls" + failures
    )


def stalled(bench: Bench, store: str, with_peers: bool) -> list[Row]:
    """Stalled followers with small windows, then with default windows, each on a fresh server."""
    count = FOLLOWERS[bench.mode.name]
    rows: list[Row] = []
    for window in WINDOWS:
        rows += _stall(bench, store, window, count)
    return rows
