"""Console: how long each page of the web console takes to render at scale.

One store is filled, before its server starts, through the store's own batch
calls (no gRPC): a run of 1,000,000 events, 100,000 runs of one or two
events (10 runs per session, every other one ended) and 1,000,000 available
jobs over 4 queues and 10 kinds (100x fewer in --quick, 1,000x in --smoke);
PostgreSQL's tables are then vacuumed and analyzed, as autovacuum soon would.
Then one caller, in a generator process, times each page over HTTP (the
overview, the runs list unfiltered and filtered by prefix, session and
terminal state, the long run's first and last timeline page, the jobs list
filtered by queue, kind and state, one job), each beside the raw gRPC call
that page makes, alternating the two. A page's figure is its p99; the target
is 100 ms.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

from bench import servers
from bench.harness import Bench
from bench.load import RpcFailed, open_channels, percentile, raw_unary, rpc_errors
from bench.report import Row, Target
from bench.scenarios.common import store_label
from statekeeper.v1 import events_pb2, jobs_pb2
from statekeeper_server.console.overview_pages import COUNT_LIMIT, QUEUES_SHOWN
from statekeeper_server.stores.events import RunFilter

NS = "default"
LONG_RUN = "long-run"
EVENTS_PER_BATCH = 1_000
JOBS_PER_BATCH = 1_000
RUNS_AT_ONCE = 256
RUNS_PER_SESSION = 10
QUEUES = 4
KINDS = 10
PAGE_EVENTS = 100
"""Events of a timeline page (the console's EVENTS_PAGE)."""
RUNS_PAGE = 50
"""Runs of a runs-list page (the console's PAGE_SIZE)."""
SAMPLES = {"full": 200, "quick": 50, "smoke": 5}
"""Timed requests per page and per reference call."""
TARGET_MS = 100.0


@dataclass(frozen=True)
class Sizes:
    """What the store holds."""

    events: int
    """Events of the long run."""
    runs: int
    jobs: int

    def describe(self) -> str:
        """`1,000,000 events in one run / 100,000 runs / 1,000,000 jobs`."""
        return f"{self.events:,} events in one run / {self.runs:,} runs / {self.jobs:,} jobs"


@dataclass(frozen=True)
class Page:
    """A console page and the gRPC call it makes, as the reference."""

    name: str
    path: str
    method: str
    request: bytes


def run_id(index: int) -> str:
    """Id of the `index`th short run."""
    return f"run-{index:06d}"


def session_id(index: int) -> str:
    """Session of the `index`th short run."""
    return f"session-{index // RUNS_PER_SESSION:05d}"


# -- generator side -------------------------------------------------------------------


async def fill(url: str, sizes: Sizes) -> tuple[float, str]:
    """Fill the store at `url` through its batch calls; (seconds taken, a job's id)."""
    from google.protobuf import struct_pb2

    from statekeeper_server.stores import open_store
    from statekeeper_server.stores.jobs import JobFilter, NewJob

    began = time.perf_counter()
    store = await open_store(url)
    try:
        custom = events_pb2.EventInput(
            event=events_pb2.AgentEvent(custom=events_pb2.CustomEvent(type="tool.call"))
        )
        custom.event.custom.data.update({"tool": "search", "query": "q" * 200})
        first = [_started("session-long"), *[custom] * (EVENTS_PER_BATCH - 1)]
        batch = [custom] * EVENTS_PER_BATCH
        for start in range(0, sizes.events, EVENTS_PER_BATCH):
            inputs = first if start == 0 else batch
            await store.events.append(NS, LONG_RUN, inputs[: sizes.events - start], None)
        ended = events_pb2.EventInput(
            event=events_pb2.AgentEvent(run_completed=events_pb2.RunCompleted(finish_reason=1))  # type: ignore[arg-type]
        )

        async def short_run(index: int) -> None:
            inputs = [_started(session_id(index))] + ([ended] if index % 2 else [])
            await store.events.append(NS, run_id(index), inputs, None)

        for start in range(0, sizes.runs, RUNS_AT_ONCE):
            await asyncio.gather(
                *(short_run(i) for i in range(start, min(sizes.runs, start + RUNS_AT_ONCE)))
            )
        payload = struct_pb2.Struct()
        payload.update({"to": "someone@example.com", "body": "b" * 200})
        jobs = [
            NewJob(
                queue=f"queue-{n % QUEUES}",
                kind=f"kind-{n % KINDS}",
                payload=payload,
                priority=jobs_pb2.JOB_PRIORITY_NORMAL,
                run_after_us=None,
                delay_us=0,
                max_retries=3,
                idempotency_key="",
                backoff_base_us=1_000_000,
                backoff_cap_us=60_000_000,
            )
            for n in range(JOBS_PER_BATCH)
        ]
        for start in range(0, sizes.jobs, JOBS_PER_BATCH):
            await store.jobs.enqueue(NS, jobs[: sizes.jobs - start])
        some = await store.jobs.list(NS, JobFilter(queue="queue-1"), 1, "")
        # Touch the filtered listing once so a broken filter fails here, not in the window.
        await store.events.list_runs(NS, 1, "", RunFilter(terminal=True))
    finally:
        await store.close()
    if url.startswith("postgresql://"):
        await _vacuum(url)
    return time.perf_counter() - began, some.jobs[0].job_id


async def _vacuum(url: str) -> None:
    """VACUUM ANALYZE the store's schema, as autovacuum does soon after a bulk load: the
    planner gets the tables' statistics and index-only scans their visibility map."""
    import urllib.parse

    import asyncpg

    parts = urllib.parse.urlsplit(url)
    schema = urllib.parse.parse_qs(parts.query)["schema"][0]
    conn = await asyncpg.connect(urllib.parse.urlunsplit(parts._replace(query="")))
    try:
        await conn.execute(f'SET search_path TO "{schema}"')
        for table in ("event_runs", "events", "jobs", "job_changes"):
            await conn.execute(f"VACUUM ANALYZE {table}")
    finally:
        await conn.close()


def _started(session: str) -> events_pb2.EventInput:
    return events_pb2.EventInput(
        event=events_pb2.AgentEvent(run_started=events_pb2.RunStarted(session_id=session))
    )


async def probe_pages(
    http: str, target: str, pages: list[Page], samples: int
) -> dict[str, tuple[list[float], list[float]]]:
    """Each page's HTTP latencies and its gRPC call's, alternating, after a warm-up."""
    found: dict[str, tuple[list[float], list[float]]] = {}
    async with (
        aiohttp.ClientSession(base_url=http) as browser,
        open_channels(target, 1) as (channel,),
    ):

        async def get(path: str) -> None:
            async with browser.get(path) as response:
                body = await response.read()
                if response.status != 200:
                    raise RpcFailed(f"GET {path}: HTTP {response.status}: {body[:300]!r}")

        for page in pages:
            call = raw_unary(channel, page.method)
            pages_ms: list[float] = []
            calls_ms: list[float] = []
            async with rpc_errors(page.method):
                for _ in range(3):
                    await get(page.path)
                    await call(page.request, timeout=30)
                for _ in range(samples):
                    started = time.perf_counter()
                    await get(page.path)
                    pages_ms.append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    await call(page.request, timeout=30)
                    calls_ms.append((time.perf_counter() - started) * 1000)
            found[page.name] = (pages_ms, calls_ms)
    return found


# -- scenario --------------------------------------------------------------------------


def sizes_of(bench: Bench) -> Sizes:
    """The store's contents in this mode."""
    return Sizes(
        events=bench.mode.size(1_000_000, minimum=1_000),
        runs=bench.mode.size(100_000, minimum=100),
        jobs=bench.mode.size(1_000_000, minimum=1_000),
    )


def pages_of(sizes: Sizes, job_id: str) -> list[Page]:
    """The pages timed, each with the call it makes."""
    runs = events_pb2.ListRunsRequest
    middle = sizes.runs // 2
    prefix = run_id(middle)[:-2]
    session = session_id(middle)
    last_after = max(0, sizes.events - PAGE_EVENTS)
    listed = jobs_pb2.ListJobsRequest(
        page_size=RUNS_PAGE, queue="queue-1", kind="kind-3", state=jobs_pb2.JOB_STATE_AVAILABLE
    )

    def method(service: str, name: str) -> str:
        return f"/statekeeper.v1.{service}/{name}"

    list_runs = method("EventLogService", "ListRuns")
    list_events = method("EventLogService", "ListEvents")
    return [
        Page(
            "overview",
            "/",
            method("JobService", "GetQueueStats"),
            jobs_pb2.GetQueueStatsRequest(
                page_size=QUEUES_SHOWN, count_limit=COUNT_LIMIT
            ).SerializeToString(),
        ),
        Page("runs, first page", "/runs", list_runs, runs(page_size=RUNS_PAGE).SerializeToString()),
        Page(
            "runs by prefix",
            f"/runs?prefix={prefix}",
            list_runs,
            runs(page_size=RUNS_PAGE, run_id_prefix=prefix).SerializeToString(),
        ),
        Page(
            "runs by session",
            f"/runs?session={session}",
            list_runs,
            runs(page_size=RUNS_PAGE, session_id=session).SerializeToString(),
        ),
        Page(
            "runs ended",
            "/runs?terminal=yes",
            list_runs,
            runs(page_size=RUNS_PAGE, terminal=True).SerializeToString(),
        ),
        Page(
            "a run's first timeline page",
            f"/runs/{LONG_RUN}",
            list_events,
            events_pb2.ListEventsRequest(run_id=LONG_RUN, limit=PAGE_EVENTS).SerializeToString(),
        ),
        Page(
            "a run's last timeline page",
            f"/runs/{LONG_RUN}?after={last_after}",
            list_events,
            events_pb2.ListEventsRequest(
                run_id=LONG_RUN, after_seq=last_after, limit=PAGE_EVENTS
            ).SerializeToString(),
        ),
        Page(
            "jobs by queue, kind and state",
            "/jobs?queue=queue-1&kind=kind-3&state=AVAILABLE",
            method("JobService", "ListJobs"),
            listed.SerializeToString(),
        ),
        Page(
            "a job",
            f"/jobs/{job_id}",
            method("JobService", "GetJob"),
            jobs_pb2.GetJobRequest(job_id=job_id).SerializeToString(),
        ),
    ]


def console(bench: Bench, store: str, with_peers: bool) -> list[Row]:
    """p99 of each console page over HTTP beside the p99 of the gRPC call it makes."""
    sizes = sizes_of(bench)
    samples = SAMPLES[bench.mode.name]
    with servers.store_url(store) as url:
        filled, job_id = bench.generators.run(fill, url=url, sizes=sizes)
        http_port = servers.free_port()
        server = servers.statekeeper_server(url, "--http-listen", f"127.0.0.1:{http_port}")
        with server:
            pages = pages_of(sizes, job_id)
            best: dict[str, tuple[list[float], list[float]]] = {}
            for _ in range(bench.mode.repeats):
                measured = bench.generators.run(
                    probe_pages,
                    http=f"http://127.0.0.1:{http_port}",
                    target=server.target,
                    pages=pages,
                    samples=samples,
                )
                for name, result in measured.items():
                    if name not in best or percentile(result[0], 0.99) < percentile(
                        best[name][0], 0.99
                    ):
                        best[name] = result
    rows = []
    for page in pages:
        pages_ms, calls_ms = best[page.name]
        rows.append(
            Row(
                f"console: {page.name} {store_label(store)}",
                figure=percentile(pages_ms, 0.99),
                unit="ms",
                reference="its gRPC call",
                reference_figure=percentile(calls_ms, 0.99),
                targets=[Target(TARGET_MS, at_least=False)],
                lower_is_better=True,
                note=f"p99; p50 {percentile(pages_ms, 0.5):.1f} vs "
                f"{percentile(calls_ms, 0.5):.1f} ms; {samples} requests each; "
                f"{sizes.describe()} filled in {filled:.0f} s",
            )
        )
    return rows
