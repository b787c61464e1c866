"""A fuzz run against `statekeeper serve` in its own process.

`run_fuzz` starts the server with its stderr captured, seeds a control
namespace, sends `budget` requests from a few concurrent workers (each in
namespaces of its own, renewed every few hundred requests so listings stay
short), reads back every successful write, then checks that the server is
alive and serving, that the control namespace is byte-identical and that
the server's log holds no traceback, raw control character or forged line.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from random import Random
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fuzz.catalog import all_rpcs
from tests.fuzz.checks import Finding, check_log
from tests.fuzz.control import compare_dumps, dump_control, seed_records
from tests.fuzz.generator import RequestBuilder
from tests.fuzz.plan import Planned, plan_request
from tests.fuzz.pool import Pool
from tests.fuzz.readback import read_back
from tests.fuzz.session import READ_BACK, Session, Tally, Violation
from tests.harness import ServerProcess

EPOCH_REQUESTS = 400
"""Requests a worker sends into one pair of namespaces before moving to fresh ones."""


@dataclass(frozen=True)
class FuzzConfig:
    """What to fuzz and how much."""

    store_url: str
    budget: int
    seed: int
    workers: int = 4
    server_args: tuple[str, ...] = ()


@dataclass
class FuzzReport:
    """Everything a run counted and found."""

    config: FuzzConfig
    tally: Tally = field(default_factory=Tally)
    violations: list[Violation] = field(default_factory=list)
    rss_before: int = 0
    rss_after: int = 0
    elapsed: float = 0.0
    log_lines: int = 0

    @property
    def requests(self) -> int:
        """Fuzz requests sent (read-backs not counted)."""
        return sum(n for (_, kind), n in self.tally.sent.items() if kind != READ_BACK)


def request_seeds(seed: int) -> Iterator[int]:
    """The endless sequence of request seeds of a run seed."""
    master = Random(seed)
    while True:
        yield master.getrandbits(62)


class Worker:
    """Sends requests one after another within namespaces of its own."""

    def __init__(self, number: int, run_seed: int, session: Session) -> None:
        self.number = number
        self.session = session
        self.picks = Random(run_seed * 1_000_003 + number)
        self.sent = 0
        self.builder = RequestBuilder(Pool(), self.picks)
        """Builds requests from what this worker's current namespaces revealed."""

    async def fresh_namespace(self) -> None:
        """Start over in new namespaces, seeded with records of every family.

        If the server cannot take the seed records (it has broken down), that is
        recorded and fuzzing goes on in the empty namespaces.
        """
        self.builder = RequestBuilder(Pool(), self.picks)
        try:
            responses = await seed_records(self.session.channel, self.namespaces[0])
        except grpc.aio.AioRpcError as error:
            detail = f"{self.namespaces[0]}: {error.code().name}: {error.details()}"
            self.session.violations.append(
                _violation(Finding("valid records of every family could not be stored", detail))
            )
            return
        for response in responses:
            self.builder.pool.harvest("", response, None)

    @property
    def namespaces(self) -> tuple[str, str]:
        epoch = self.sent // EPOCH_REQUESTS
        return f"fz{self.number}-{epoch}", f"fz{self.number}-{epoch}-b"

    async def run(self, seeds: Iterator[int], remaining: Iterator[int]) -> None:
        for _ in remaining:
            if self.sent % EPOCH_REQUESTS == 0:
                await self.fresh_namespace()
            planned = plan_request(next(seeds), all_rpcs(), self.builder, self.namespaces)
            self.sent += 1
            await exercise(self.session, self.builder.pool, planned)


async def exercise(session: Session, pool: Pool, planned: Planned) -> None:
    """Send one request; remember what it revealed and read back what it wrote."""
    responses = await session.send(planned)
    if responses is None:
        return
    request = planned.message
    if request is None:
        with contextlib.suppress(DecodeError):
            request = planned.rpc.request.FromString(planned.payload)
    for response in responses:
        pool.harvest(planned.rpc.path, response, request)
    if planned.rpc.writes and not planned.headers.must_refuse:
        await read_back(session, planned, responses)


async def _serving(channel: grpc.aio.Channel) -> bool:
    # The published stubs of grpc_health omit the stub's methods.
    stub: Any = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def run_fuzz(config: FuzzConfig) -> FuzzReport:
    """Fuzz a fresh server over `config.store_url`; the report holds every violation."""
    report = FuzzReport(config)
    started = time.perf_counter()
    server = ServerProcess(config.store_url, *config.server_args, capture_log=True)
    await asyncio.to_thread(server.start)
    try:
        await _fuzz_server(server, config, report)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(server.terminate)
        server.stop()
    report.log_lines = len(server.log)
    report.violations += [_violation(f) for f in check_log(server.log)]
    report.elapsed = time.perf_counter() - started
    return report


async def _fuzz_server(server: ServerProcess, config: FuzzConfig, report: FuzzReport) -> None:
    control = f"control-{config.seed % 1_000_000:06d}"
    async with grpc.aio.insecure_channel(server.target) as channel:
        await seed_records(channel, control)
        before = await dump_control(channel, control)
        report.rss_before = server.rss_bytes()
        session = Session(channel)
        seeds = request_seeds(config.seed)
        remaining = iter(range(config.budget))
        workers = [Worker(n, config.seed, session) for n in range(config.workers)]
        await asyncio.gather(*(worker.run(seeds, remaining) for worker in workers))
        report.tally, report.violations = session.tally, session.violations
        if server.process is None or server.process.poll() is not None:
            report.violations.append(_violation(Finding("server process died")))
            return
        report.rss_after = server.rss_bytes()
        try:
            if not await _serving(channel):
                report.violations.append(_violation(Finding("health is not SERVING after")))
            after = await dump_control(channel, control)
        except grpc.aio.AioRpcError as error:
            finding = Finding("server stopped answering", f"{error.code().name}: {error.details()}")
            report.violations.append(_violation(finding))
            return
        changed = compare_dumps(before, after)
        if changed:
            detail = f"{control}: " + ", ".join(changed[:20])
            report.violations.append(_violation(Finding("control namespace changed", detail)))


def _violation(finding: Finding) -> Violation:
    return Violation(rule=finding.rule, detail=finding.detail)


async def replay_seed(store_url: str, seed: int) -> FuzzReport:
    """Send the request of one seed to a fresh server, as a worker's first request, and check it.

    Ids the run reused from earlier responses come out as ids of the freshly
    seeded namespace (or fresh ones): what was drawn from the seed is the same.
    """
    report = FuzzReport(FuzzConfig(store_url, budget=1, seed=seed, workers=1))
    server = ServerProcess(store_url, capture_log=True)
    await asyncio.to_thread(server.start)
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            session = Session(channel)
            worker = Worker(0, seed, session)
            await worker.fresh_namespace()
            planned = plan_request(seed, all_rpcs(), worker.builder, worker.namespaces)
            print(f"seed {seed}: {planned.rpc.short} [{planned.kind}] {planned.note}")
            print(f"  headers: {list(planned.headers.metadata)}")
            print(f"  request: {planned.shown}")
            await exercise(session, worker.builder.pool, planned)
            report.tally, report.violations = session.tally, session.violations
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(server.terminate)
        server.stop()
    report.violations += [_violation(f) for f in check_log(server.log)]
    return report
