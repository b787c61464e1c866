"""Scale: point-read latencies must not grow with the amount of stored state.

Two servers run side by side, one holding 10,000 of everything, the other
1,000,000 events, 100,000 snapshots, 100,000 agent checkpoints and
1,000,000 queued jobs (100x fewer in --quick). Both are preloaded through
the batch RPCs where there are some, then one caller measures, in turn on
each server, LoadSnapshot of a random run, ListEvents of the last page of a
random run (runs of 1,000 events), LeaseJobs of 10 (each followed, untimed,
by an EnqueueJobs of 10 so the queue keeps its size) and
RecoverAgentCheckpoint of a random agent (10 checkpoints per agent).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from bench import payloads
from bench.harness import Bench, Measurement
from bench.load import ServiceUnavailable, Window, open_channels, raw_unary, rpc_errors, unary_many
from bench.report import UNAVAILABLE, Row, Target
from bench.scenarios.common import (
    APPEND_EVENTS,
    ENQUEUE_JOBS,
    LEASE_JOBS,
    LIST_EVENTS,
    LOAD_SNAPSHOT,
    PERSIST_AGENT_CHECKPOINT,
    RECOVER_AGENT_CHECKPOINT,
    SAVE_SNAPSHOT,
    store_label,
)
from bench.servers import ServerProcess
from statekeeper.v1 import checkpoints_pb2, events_pb2, jobs_pb2, snapshots_pb2

EVENTS_PER_RUN = 1_000
CHECKPOINTS_PER_AGENT = 10
PAGE = 100
LEASE = 10
SAMPLES = {"full": 1_000, "quick": 200, "smoke": 30}
"""Timed calls per operation, server and repeat."""
LIMIT = 3_600.0
"""Seconds a preload or a probe may take before the harness gives up."""


@dataclass(frozen=True)
class Sizes:
    """How much state one server holds."""

    events: int
    snapshots: int
    checkpoints: int
    jobs: int

    def describe(self) -> str:
        """`1,000,000 events / 100,000 snapshots / ...`."""
        return (
            f"{self.events:,} events / {self.snapshots:,} snapshots / "
            f"{self.checkpoints:,} checkpoints / {self.jobs:,} jobs"
        )


class Numbered(Sequence[bytes]):
    """`count` requests made on demand from a template by swapping its fixed-width id."""

    def __init__(
        self, template: bytes, placeholder: str, make_id: Callable[[int], str], count: int
    ):
        assert len(make_id(0)) == len(placeholder)
        self._template = template
        self._placeholder = placeholder.encode()
        self._make_id = make_id
        self._count = count

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if not 0 <= index < self._count:
            raise IndexError(index)
        return self._template.replace(self._placeholder, self._make_id(index).encode())

    def __iter__(self) -> Iterator[bytes]:
        return (self[i] for i in range(self._count))


def snapshot_id(index: int) -> str:
    """Run id of the `index`th preloaded snapshot."""
    return payloads.run_id(index, "snap")


def agent_id(index: int) -> str:
    """Id of the `index`th preloaded agent."""
    return payloads.run_id(index, "agent")


def event_runs(sizes: Sizes) -> tuple[int, int]:
    """(runs, events per run) holding `sizes.events`."""
    per_run = min(EVENTS_PER_RUN, sizes.events)
    return max(1, sizes.events // per_run), per_run


def enqueue_request(count: int) -> bytes:
    """EnqueueJobs of `count` jobs."""
    return jobs_pb2.EnqueueJobsRequest(
        jobs=[payloads.job_spec(i) for i in range(count)]
    ).SerializeToString()


# -- generator side ---------------------------------------------------------------


async def preload(target: str, family: str, sizes: Sizes) -> float:
    """Store one family's share of `sizes`; returns the seconds it took."""
    began = time.perf_counter()
    if family == "events":
        runs, per_run = event_runs(sizes)
        requests: Sequence[bytes] = Numbered(
            payloads.append_batch_request(payloads.run_id(0), per_run).SerializeToString(),
            payloads.run_id(0),
            payloads.run_id,
            runs,
        )
        await unary_many(target, APPEND_EVENTS, requests, concurrency=4)
    elif family == "snapshots":
        template = snapshots_pb2.SaveSnapshotRequest(snapshot=payloads.snapshot(snapshot_id(0)))
        requests = Numbered(
            template.SerializeToString(), snapshot_id(0), snapshot_id, sizes.snapshots
        )
        await unary_many(target, SAVE_SNAPSHOT, requests, concurrency=32)
    elif family == "checkpoints":
        agents = max(1, sizes.checkpoints // CHECKPOINTS_PER_AGENT)
        template = checkpoints_pb2.PersistAgentCheckpointRequest(
            checkpoint=payloads.agent_checkpoint(agent_id(0)),
            retention=checkpoints_pb2.CheckpointRetention(keep_last=0),
        )
        requests = Numbered(template.SerializeToString(), agent_id(0), agent_id, agents)
        for _ in range(CHECKPOINTS_PER_AGENT):
            await unary_many(target, PERSIST_AGENT_CHECKPOINT, requests, concurrency=32)
    elif family == "jobs":
        per_call = min(1_000, sizes.jobs)
        request = enqueue_request(per_call)
        await unary_many(target, ENQUEUE_JOBS, [request] * (sizes.jobs // per_call), concurrency=4)
    else:
        raise ValueError(f"unknown family {family!r}")
    return time.perf_counter() - began


def probe_requests(family: str, sizes: Sizes, samples: int) -> list[bytes]:
    """The requests one probe sends, chosen at random (the same for both servers)."""
    rng = random.Random(7)
    if family == "events":
        runs, per_run = event_runs(sizes)
        return [
            events_pb2.ListEventsRequest(
                run_id=payloads.run_id(rng.randrange(runs)),
                after_seq=max(0, per_run - PAGE),
                limit=PAGE,
            ).SerializeToString()
            for _ in range(samples)
        ]
    if family == "snapshots":
        return [
            snapshots_pb2.LoadSnapshotRequest(
                run_id=snapshot_id(rng.randrange(sizes.snapshots))
            ).SerializeToString()
            for _ in range(samples)
        ]
    if family == "checkpoints":
        agents = max(1, sizes.checkpoints // CHECKPOINTS_PER_AGENT)
        return [
            checkpoints_pb2.RecoverAgentCheckpointRequest(
                agent_id=agent_id(rng.randrange(agents))
            ).SerializeToString()
            for _ in range(samples)
        ]
    return [
        payloads.lease_request(f"worker-{i % 8}", LEASE).SerializeToString() for i in range(samples)
    ]


async def probe(
    target: str, family: str, requests: list[bytes], start_at: float, duration: float
) -> Window:
    """One caller sends `requests` in turn; latency of each (LeaseJobs: refill untimed).

    It starts at once: the window only bounds the server's CPU reading.
    """
    path = FAMILIES[family][1]
    window = Window()
    async with open_channels(target, 1) as (channel,):
        call = raw_unary(channel, path)
        refill = raw_unary(channel, ENQUEUE_JOBS)
        refill_request = enqueue_request(LEASE)
        async with rpc_errors(path):
            for request in requests[: max(1, len(requests) // 10)]:
                await call(request, timeout=30)
            began = time.perf_counter()
            for request in requests:
                started = time.perf_counter()
                await call(request, timeout=30)
                window.latencies.append(time.perf_counter() - started)
                if family == "jobs":
                    await refill(refill_request, timeout=30)
            window.seconds = time.perf_counter() - began
    window.operations = len(requests)
    return window


FAMILIES = {
    "snapshots": ("LoadSnapshot", LOAD_SNAPSHOT),
    "events": ("ListEvents of a run's last page", LIST_EVENTS),
    "jobs": (f"LeaseJobs x{LEASE}", LEASE_JOBS),
    "checkpoints": ("RecoverAgentCheckpoint", RECOVER_AGENT_CHECKPOINT),
}


# -- scenario ------------------------------------------------------------------------


def levels(bench: Bench) -> tuple[Sizes, Sizes]:
    """(small, large) for this mode."""
    small = bench.mode.size(10_000, minimum=100)
    large = Sizes(
        events=bench.mode.size(1_000_000, minimum=1_000),
        snapshots=bench.mode.size(100_000, minimum=200),
        checkpoints=bench.mode.size(100_000, minimum=200),
        jobs=bench.mode.size(1_000_000, minimum=1_000),
    )
    return Sizes(small, small, small, small), large


def scale(bench: Bench, store: str, with_peers: bool) -> list[Row]:
    """p50 latency of each point read at the large size vs the small size."""
    small, large = levels(bench)
    samples = SAMPLES[bench.mode.name]
    rows = []
    with bench.statekeeper(store) as small_server, bench.statekeeper(store) as large_server:
        preloaded: dict[str, dict[str, float]] = {}
        missing: dict[str, str] = {}
        for family in FAMILIES:
            for label, server, sizes in (
                ("small", small_server, small),
                ("large", large_server, large),
            ):
                try:
                    seconds = bench.generators.run(
                        preload, target=server.target, family=family, sizes=sizes
                    )
                except ServiceUnavailable as exc:
                    missing[family] = str(exc)
                    break
                preloaded.setdefault(family, {})[label] = seconds
        for family, (operation, _path) in FAMILIES.items():
            name = f"scale: {operation} {store_label(store)}"
            if family in missing:
                rows.append(Row(name, status=UNAVAILABLE, note=missing[family]))
                continue
            small_best, large_best = _probe_both(
                bench, family, (small_server, small), (large_server, large), samples
            )
            times = preloaded[family]
            rows.append(
                Row(
                    name,
                    figure=large_best.window.p50 * 1000,
                    unit="ms",
                    reference=f"same at {small.events:,}",
                    reference_figure=small_best.window.p50 * 1000,
                    targets=[Target(1.5, at_least=False, on_ratio=True)],
                    lower_is_better=True,
                    note=f"p50 at {_size_of(family, large):,} vs {_size_of(family, small):,}; "
                    f"p99 {large_best.window.p99 * 1000:.2f} vs "
                    f"{small_best.window.p99 * 1000:.2f} ms; {samples} calls each; preload "
                    f"{times['large']:.0f} s (large), {times['small']:.1f} s (small)",
                )
            )
    return rows


def _size_of(family: str, sizes: Sizes) -> int:
    return int(getattr(sizes, family))


def _probe_both(
    bench: Bench,
    family: str,
    small: tuple[ServerProcess, Sizes],
    large: tuple[ServerProcess, Sizes],
    samples: int,
) -> tuple[Measurement, Measurement]:
    """Probe the two servers in turn, `repeats` times; the lower p50 of each."""
    results: list[list[Measurement]] = [[], []]
    for _ in range(max(2, bench.mode.repeats)):
        for index, (server, sizes) in enumerate((small, large)):
            results[index].append(
                bench.measure(
                    probe,
                    server,
                    f"scale {family} {index}",
                    duration=LIMIT,
                    target=server.target,
                    family=family,
                    requests=probe_requests(family, sizes, samples),
                )
            )
    small_best, large_best = (min(r, key=lambda m: m.window.p50) for r in results)
    return small_best, large_best
