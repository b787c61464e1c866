"""Event log hot paths: unary AppendEvent, AppendEvents of 100, and ReplayEvents catch-up.

Each is measured against the bare echo carrying the same bytes, the raw
storage under it (SQLite for file/memory, asyncpg for PostgreSQL) and,
beside the first store, Redis Streams and NATS JetStream.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench import payloads, peers
from bench.harness import Bench, Measurement, split
from bench.load import (
    Metadata,
    Window,
    open_channels,
    process_cpu,
    raw_stream,
    rpc_errors,
    sleep_until,
    unary_load,
    unary_many,
)
from bench.report import Row, Target
from bench.scenarios.common import (
    APPEND_EVENT,
    APPEND_EVENTS,
    REPLAY_EVENTS,
    compare,
    echo,
    peer_row,
    repeated,
    store_label,
)
from statekeeper.v1 import events_pb2

CALLERS = 64
"""Concurrent AppendEvent callers (each appends to its own run)."""
CHANNELS = 4
"""Connections the callers of one generator process share."""
BATCH = 100
BATCH_CALLERS = 8
"""Concurrent AppendEvents callers (each appends to its own run)."""
REPLAY_SIZES = {"full": 200_000, "quick": 20_000, "smoke": 2_000}
"""Events a replay catches up on, per mode."""
PRELOAD_BATCH = 1000
REPLAY_LIMIT = 600.0
"""Seconds a replay may take before the harness gives up."""


# -- generator side -----------------------------------------------------------


async def start_runs(target: str, runs: Sequence[str], metadata: Metadata = None) -> int:
    """Append each run's RunStarted (so its envelopes carry a session id), each call
    carrying `metadata`."""
    requests = [
        events_pb2.AppendEventRequest(
            run_id=run, input=events_pb2.EventInput(event=payloads.run_started(run))
        ).SerializeToString()
        for run in runs
    ]
    return await unary_many(target, APPEND_EVENT, requests, concurrency=16, metadata=metadata)


async def preload(target: str, runs: Sequence[str], events_per_run: int) -> float:
    """Append `events_per_run` events to each run in batches of 1000; returns events/s.

    At most one batch per run is in flight (up to 4 runs at once), as a
    single writer per run would append.
    """
    requests = [
        payloads.append_batch_request(
            run, min(PRELOAD_BATCH, events_per_run - start)
        ).SerializeToString()
        for start in range(0, events_per_run, PRELOAD_BATCH)
        for run in runs
    ]
    began = time.perf_counter()
    await unary_many(target, APPEND_EVENTS, requests, concurrency=min(4, len(runs)))
    return len(runs) * events_per_run / (time.perf_counter() - began)


async def replay_read(
    target: str, path: str, request: bytes, start_at: float, duration: float
) -> Window:
    """Read one replay stream until CaughtUp, decoding every message as a consumer would.

    `extra` holds the largest page seen (envelopes per message) and the
    mean message size in bytes.
    """
    async with open_channels(target, 1) as (channel,):
        stream = raw_stream(channel, path)
        await sleep_until(start_at)
        cpu, began = process_cpu(), time.perf_counter()
        events = messages = size = largest = 0
        async with rpc_errors(path):
            call = stream(request, timeout=duration)
            async for message in call:
                decoded = events_pb2.ReplayEventsResponse.FromString(message)
                if decoded.HasField("caught_up"):
                    break
                count = len(decoded.batch.envelopes)
                events += count
                messages += 1
                size += len(message)
                largest = max(largest, count)
            call.cancel()
        elapsed = time.perf_counter() - began
    return Window(
        operations=events,
        seconds=elapsed,
        cpu_seconds=process_cpu() - cpu,
        extra={"events_per_page": largest, "page_bytes": size / max(1, messages)},
    )


# -- scenarios ------------------------------------------------------------------


def callers_by_process(
    bench: Bench, requests: Sequence[bytes], callers: int
) -> list[dict[str, Any]]:
    """Per generator process: its share of the callers and their requests."""
    parts, start = [], 0
    for count in split(callers, bench.generator_processes):
        parts.append({"concurrency": count, "requests": list(requests[start : start + count])})
        start += count
    return parts


def generators_note(bench: Bench) -> str:
    """How many generator processes sent the load, when more than one."""
    return (
        f"{bench.generator_processes} generator processes" if bench.generator_processes > 1 else ""
    )


def append(bench: Bench, store: str, with_peers: bool) -> list[Row]:
    """Unary AppendEvent by 64 concurrent callers vs the bare echo's unary calls."""
    name = f"AppendEvent, {CALLERS} callers {store_label(store)}"
    runs = [payloads.run_id(i) for i in range(CALLERS)]
    requests = [payloads.append_request(run).SerializeToString() for run in runs]
    load = {"per_process": callers_by_process(bench, requests, CALLERS), "channels": CHANNELS}
    with bench.statekeeper(store) as server:
        bench.generators.run(start_runs, target=server.target, runs=runs)

        def on_echo(method: str, label: str) -> Callable[[], Measurement]:
            return lambda: bench.measure(
                unary_load,
                bench.echo,
                f"{name} {label}",
                target=bench.echo.target,
                path=echo(method),
                **load,
            )

        echoes = [
            on_echo("AppendEvent", "echo"),
            on_echo("AppendEventHop", "echo through a thread"),
        ]
        if store == "file":
            echoes.append(on_echo("AppendEventDurable", "echo writing durable rows"))
        measured, reference, hop, *durable = repeated(
            bench,
            lambda: bench.measure(
                unary_load, server, name, target=server.target, path=APPEND_EVENT, **load
            ),
            *echoes,
        )
    rows = [
        compare(
            name,
            measured,
            "bare echo unary, same bytes",
            reference,
            "events/s",
            [Target(0.75, on_ratio=True)],
            note=generators_note(bench),
        ),
        Row(
            "  vs bare echo answering from a thread, as the writer does",
            figure=measured.rate,
            unit="events/s",
            reference_figure=hop.rate,
            note=f"the thread alone: {hop.rate / reference.rate:.2f}x the bare echo; {hop.note()}",
        ),
    ]
    for rows_written in durable:
        rows.append(
            Row(
                "  vs bare echo writing each call's rows durably from that thread",
                figure=measured.rate,
                unit="events/s",
                reference_figure=rows_written.rate,
                note=(
                    f"the thread and the rows alone: {rows_written.rate / reference.rate:.2f}x"
                    " the bare echo (an envelope row and the run's counter per call, a"
                    f" transaction and fsync per group, no validation); {rows_written.note()}"
                ),
            )
        )
    figure = measured.rate
    if store == "postgres":
        rows.append(
            peer_row(
                bench,
                name,
                figure,
                "events/s",
                f"raw asyncpg, {CALLERS} callers, pool of {peers.POSTGRES_POOL}",
                peers.asyncpg_inserts,
                concurrency=CALLERS,
                events_per_call=1,
            )
        )
    else:
        rows.append(
            peer_row(
                bench,
                name,
                figure,
                "events/s",
                "raw SQLite, 1 append per transaction",
                peers.sqlite_inserts,
                runs=1,
                events_per_run=1,
            )
        )
        rows.append(
            peer_row(
                bench,
                name,
                figure,
                "events/s",
                f"raw SQLite, {CALLERS} appends per transaction (group commit)",
                peers.sqlite_inserts,
                runs=CALLERS,
                events_per_run=1,
            )
        )
    if with_peers:
        rows.append(
            peer_row(
                bench,
                name,
                figure,
                "events/s",
                f"Redis XADD, {CALLERS} callers",
                peers.redis_xadd,
                ("redis", 6379),
                note="not durable (no persistence here)",
                concurrency=CALLERS,
                batch=1,
            )
        )
        rows.append(
            peer_row(
                bench,
                name,
                figure,
                "events/s",
                f"NATS JetStream publish, {CALLERS} callers",
                peers.nats_publish,
                ("nats", 4222),
                note="file storage, no fsync per message",
                concurrency=CALLERS,
                batch=1,
            )
        )
    return rows


def batch(bench: Bench, store: str, with_peers: bool) -> list[Row]:
    """AppendEvents of 100 events by 8 callers vs a bare call carrying the same bytes."""
    name = f"AppendEvents x{BATCH}, {BATCH_CALLERS} callers {store_label(store)}"
    runs = [payloads.run_id(i) for i in range(BATCH_CALLERS)]
    requests = [payloads.append_batch_request(run, BATCH).SerializeToString() for run in runs]
    load = {
        "per_process": callers_by_process(bench, requests, BATCH_CALLERS),
        "channels": 2,
        "per_call": BATCH,
    }
    with bench.statekeeper(store) as server:
        bench.generators.run(start_runs, target=server.target, runs=runs)
        measured, reference = repeated(
            bench,
            lambda: bench.measure(
                unary_load, server, name, target=server.target, path=APPEND_EVENTS, **load
            ),
            lambda: bench.measure(
                unary_load,
                bench.echo,
                name + " echo",
                target=bench.echo.target,
                path=echo("AppendEvents"),
                **load,
            ),
        )
    rows = [
        compare(
            name,
            measured,
            f"bare echo unary, same bytes ({len(requests[0]) // 1024} KB request)",
            reference,
            "events/s",
            [Target(0.5, on_ratio=True), Target(50_000)],
            note=generators_note(bench),
        )
    ]
    figure = measured.rate
    if store == "postgres":
        rows.append(
            peer_row(
                bench,
                name,
                figure,
                "events/s",
                f"raw asyncpg executemany x{BATCH}, {BATCH_CALLERS} callers",
                peers.asyncpg_inserts,
                concurrency=BATCH_CALLERS,
                events_per_call=BATCH,
            )
        )
    else:
        rows.append(
            peer_row(
                bench,
                name,
                figure,
                "events/s",
                f"raw SQLite, {BATCH} rows per transaction",
                peers.sqlite_inserts,
                runs=1,
                events_per_run=BATCH,
            )
        )
        rows.append(
            peer_row(
                bench,
                name,
                figure,
                "events/s",
                f"raw SQLite, {BATCH_CALLERS}x{BATCH} rows per transaction (group commit)",
                peers.sqlite_inserts,
                runs=BATCH_CALLERS,
                events_per_run=BATCH,
            )
        )
    if with_peers:
        rows.append(
            peer_row(
                bench,
                name,
                figure,
                "events/s",
                f"Redis XADD pipelined x{BATCH}, {BATCH_CALLERS} callers",
                peers.redis_xadd,
                ("redis", 6379),
                concurrency=BATCH_CALLERS,
                batch=BATCH,
            )
        )
        rows.append(
            peer_row(
                bench,
                name,
                figure,
                "events/s",
                f"NATS JetStream publish x{BATCH} in flight, {BATCH_CALLERS} callers",
                peers.nats_publish,
                ("nats", 4222),
                concurrency=BATCH_CALLERS,
                batch=BATCH,
            )
        )
    return rows


def replay(bench: Bench, store: str, with_peers: bool) -> list[Row]:
    """Catch-up of one run's stored events by one reader vs a stream of pre-built pages."""
    count = REPLAY_SIZES[bench.mode.name]
    name = f"ReplayEvents catch-up of {count:,} {store_label(store)}"
    run = payloads.run_id(0)
    request = events_pb2.ReplayEventsRequest(run_id=run).SerializeToString()
    measured: list[Measurement] = []
    references: list[Measurement] = []
    with bench.statekeeper(store) as server:
        bench.generators.run(start_runs, target=server.target, runs=[run])
        preload_rate = bench.generators.run(
            preload, target=server.target, runs=[run], events_per_run=count - 1
        )
        for _ in range(bench.mode.repeats):
            measured.append(
                bench.measure(
                    replay_read,
                    server,
                    name,
                    duration=REPLAY_LIMIT,
                    target=server.target,
                    path=REPLAY_EVENTS,
                    request=request,
                )
            )
            page = int(measured[0].window.extra["events_per_page"]) or 500
            echo_request = json.dumps(
                {"pages": math.ceil(count / page), "events_per_page": page}
            ).encode()
            references.append(
                bench.measure(
                    replay_read,
                    bench.echo,
                    name + " echo",
                    duration=REPLAY_LIMIT,
                    target=bench.echo.target,
                    path=echo("Replay"),
                    request=echo_request,
                )
            )
    best_measured = max(measured, key=lambda m: m.rate)
    best_reference = max(references, key=lambda m: m.rate)
    extra = best_measured.window.extra
    rows = [
        compare(
            name,
            best_measured,
            "bare echo stream of the same pages",
            best_reference,
            "events/s",
            [Target(0.4, on_ratio=True), Target(250_000)],
            note=f"{extra['events_per_page']:.0f} events/page, "
            f"{extra['page_bytes'] / 1024:.0f} KB/page; preloaded at {preload_rate:,.0f} events/s",
        )
    ]
    figure = best_measured.rate
    if store == "postgres":
        rows.append(
            peer_row(
                bench,
                name,
                figure,
                "events/s",
                "raw asyncpg SELECT, 500 rows per query",
                peers.asyncpg_reads,
                duration=REPLAY_LIMIT,
                count=count,
                page=500,
            )
        )
    else:
        rows.append(
            peer_row(
                bench,
                name,
                figure,
                "events/s",
                "raw SQLite SELECT, 500 rows per query",
                peers.sqlite_reads,
                duration=REPLAY_LIMIT,
                count=count,
                page=500,
            )
        )
    if with_peers:
        rows.append(
            peer_row(
                bench,
                name,
                figure,
                "events/s",
                "Redis XRANGE, 500 per call",
                peers.redis_xrange,
                ("redis", 6379),
                duration=REPLAY_LIMIT,
                count=count,
                page=500,
            )
        )
        rows.append(
            peer_row(
                bench,
                name,
                figure,
                "events/s",
                "NATS JetStream ordered consumer",
                peers.nats_replay,
                ("nats", 4222),
                duration=REPLAY_LIMIT,
                count=count,
            )
        )
    return rows
