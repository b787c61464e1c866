"""What observability costs: AppendEvent and ReplayEvents with metrics and tracing on vs off.

Four statekeeper servers, each on a fresh store of the same kind and all at
`--log-level info` (so the access log writes what it is asked to), take the
`append` scenario's load (64 callers, each appending to its own run) in
interleaved rounds, each round starting with another server, as the `auth`
scenario does; the best round of each counts, and the server's CPU per call is
the median of the rounds:

- metrics off: `--http-listen ""` (no side port, so no call metrics either);
- metrics on: `--http-listen 127.0.0.1:0` (the call layer counting every call
  and the store metrics; nothing scrapes, as between two scrapes);
- metrics and tracing on: the same with `--otel` and `OTEL_TRACES_EXPORTER=none`,
  so every call makes its SERVER span and store spans but none is exported: the
  cost inside the process, without an exporter's batching and network;
- access log all: metrics off and `--access-log all`, one line per call on
  stderr (the benchmark reads it), beside metrics off, whose access log is the
  default (failed calls only, so no line here).

The first three also replay one run's stored events (the `replay` scenario's
catch-up: REPLAY_SIZES events read by one reader), again in interleaved rounds.
Every server process gets OTEL_SDK_DISABLED=true but the traced one, so an
OTEL_* environment around the benchmark cannot turn tracing on elsewhere.

Target: AppendEvent with metrics on at least 0.95x the rate with metrics off,
and at most 1.05x its CPU per call; the other rows are reported, not judged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench import payloads
from bench.harness import Bench, Measurement, best
from bench.load import unary_load
from bench.report import Row, Target
from bench.scenarios.common import (
    APPEND_EVENT,
    REPLAY_EVENTS,
    Compared,
    compare,
    interleaved,
    per_round,
    plural,
    rate_and_cpu_rows,
    store_label,
)
from bench.scenarios.events import (
    CALLERS,
    CHANNELS,
    REPLAY_LIMIT,
    REPLAY_SIZES,
    callers_by_process,
    preload,
    replay_read,
    start_runs,
)
from statekeeper.v1 import events_pb2

ROUNDS = {"full": 5, "quick": 3, "smoke": 1}
"""Interleaved rounds of appends (each measures every server once), per mode."""
REPLAY_ROUNDS = {"full": 3, "quick": 2, "smoke": 1}
"""Interleaved rounds of replays, per mode."""
TARGET = 0.95
"""Least AppendEvent rate with metrics on, as a share of the rate with metrics off."""
CPU_TARGET = 1.05
"""Most server CPU per AppendEvent with metrics on, as a multiple of that with them off."""
NO_TRACES = {"OTEL_SDK_DISABLED": "true"}
"""The environment of every server but the traced one."""


@dataclass(frozen=True)
class Variant:
    """One of the servers compared: its flags, its environment, and whether to replay on it."""

    label: str
    flags: Sequence[str]
    env: dict[str, str] = field(default_factory=lambda: dict(NO_TRACES))
    targets: Sequence[Target] = ()
    """Targets of its AppendEvent rate against metrics off."""
    cpu_targets: Sequence[Target] = ()
    """Targets of its server CPU per AppendEvent against metrics off."""
    replays: bool = True


VARIANTS = [
    Variant("metrics off", ["--http-listen", ""]),
    Variant(
        "metrics on",
        ["--http-listen", "127.0.0.1:0"],
        targets=[Target(TARGET, on_ratio=True)],
        cpu_targets=[Target(CPU_TARGET, at_least=False, on_ratio=True)],
    ),
    Variant(
        "metrics and tracing on (spans made, not exported)",
        ["--http-listen", "127.0.0.1:0", "--otel"],
        env={"OTEL_TRACES_EXPORTER": "none"},
    ),
    Variant("access log all", ["--http-listen", "", "--access-log", "all"], replays=False),
]
"""The servers, the first the one every other is compared with."""
COMMON_FLAGS = ["--log-level", "info"]
"""Flags of every server: info is the level access lines are written at."""


def observe(bench: Bench, store: str, with_peers: bool) -> list[Row]:
    """AppendEvent by 64 callers, and a replay catch-up, with observability on and off."""
    name = f"AppendEvent, {CALLERS} callers"
    runs = [payloads.run_id(i) for i in range(CALLERS)]
    requests = [payloads.append_request(run).SerializeToString() for run in runs]
    per_process = callers_by_process(bench, requests, CALLERS)
    replayed = payloads.run_id(CALLERS)
    count = REPLAY_SIZES[bench.mode.name]
    replay_name = f"ReplayEvents catch-up of {count:,}"
    replay_request = events_pb2.ReplayEventsRequest(run_id=replayed).SerializeToString()
    rounds, replay_rounds = ROUNDS[bench.mode.name], REPLAY_ROUNDS[bench.mode.name]
    replaying = [index for index, kind in enumerate(VARIANTS) if kind.replays]
    with contextlib.ExitStack() as stack:
        started = [
            stack.enter_context(bench.statekeeper(store, *COMMON_FLAGS, *kind.flags, env=kind.env))
            for kind in VARIANTS
        ]
        for index, server in enumerate(started):
            bench.generators.run(start_runs, target=server.target, runs=[*runs, replayed])
            if index in replaying:
                bench.generators.run(
                    preload, target=server.target, runs=[replayed], events_per_run=count - 1
                )

        def appends(index: int) -> Measurement:
            server = started[index]
            return bench.measure(
                unary_load,
                server,
                f"{name}, {VARIANTS[index].label} {store_label(store)}",
                per_process=per_process,
                target=server.target,
                path=APPEND_EVENT,
                channels=CHANNELS,
            )

        def replays(position: int) -> Measurement:
            index = replaying[position]
            server = started[index]
            return bench.measure(
                replay_read,
                server,
                f"{replay_name}, {VARIANTS[index].label} {store_label(store)}",
                duration=REPLAY_LIMIT,
                target=server.target,
                path=REPLAY_EVENTS,
                request=replay_request,
            )

        appended = interleaved(rounds, len(VARIANTS), appends)
        replayed_rounds = interleaved(replay_rounds, len(replaying), replays)
    return [
        *append_rows(name, store, appended, rounds),
        *replay_rows(replay_name, store, replayed_rounds, replay_rounds, replaying),
    ]


def append_rows(name: str, store: str, results: list[list[Measurement]], rounds: int) -> list[Row]:
    """The AppendEvent rate of each server against metrics off, then its CPU per call."""
    return rate_and_cpu_rows(
        f"{name}, {VARIANTS[0].label} {store_label(store)}",
        VARIANTS[0].label,
        [Compared(kind.label, kind.targets, kind.cpu_targets) for kind in VARIANTS[1:]],
        results,
        rounds,
    )


def replay_rows(
    name: str,
    store: str,
    results: list[list[Measurement]],
    rounds: int,
    replaying: Sequence[int],
) -> list[Row]:
    """The replay rate of each replaying server against metrics off."""
    without = results[0]
    plain = best(without)
    rows = [
        Row(
            f"{name}, {VARIANTS[replaying[0]].label} {store_label(store)}",
            figure=plain.rate,
            unit="events/s",
            note=f"best of {plural(rounds, 'round')}; "
            f"{plain.window.extra.get('events_per_page', 0):.0f} events/page; {plain.note()}",
        )
    ]
    for index, measured in zip(replaying[1:], results[1:], strict=True):
        rows.append(
            compare(
                f"  with {VARIANTS[index].label}",
                best(measured),
                "metrics off, same run",
                plain,
                "events/s",
                note=f"rate vs metrics off per round: {per_round(measured, without)}",
            )
        )
    return rows
