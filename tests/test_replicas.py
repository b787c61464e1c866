"""Two real server processes over one PostgreSQL database behave as one service."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import statekeeper
from statekeeper.events import custom_event
from statekeeper.jobs import job_spec
from statekeeper.v1 import events_pb2, jobs_pb2, snapshots_pb2
from tests.harness import ServerProcess
from tests.private_postgres import PrivatePostgres, private_postgres

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def replicas(postgres_url: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two `statekeeper serve` processes on one PostgreSQL schema."""
    first = ServerProcess(postgres_url, "--health-check-interval", "0.2").start()
    second = ServerProcess(postgres_url, "--health-check-interval", "0.2").start()
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


@contextlib.asynccontextmanager
async def clients(
    *servers: ServerProcess,
) -> AsyncIterator[list[statekeeper.AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(statekeeper.AsyncClient(s.target, timeout=20))
            for s in servers
        ]


def started() -> events_pb2.AgentEvent:
    return events_pb2.AgentEvent(run_started=events_pb2.RunStarted(session_id="session-1"))


def completed() -> events_pb2.AgentEvent:
    return events_pb2.AgentEvent(run_completed=events_pb2.RunCompleted(iterations=1))


async def test_concurrent_appends_through_both_replicas_get_seqs_one_to_n(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    async with clients(*replicas) as (a, b):
        await a.events.append("run-1", started())
        envelopes = await asyncio.gather(
            *(
                (a, b)[n % 2].events.append("run-1", custom_event("step", {"n": n}))
                for n in range(200)
            )
        )
        listed = [e.seq async for e in _all_events(a, "run-1")]
    assert sorted(e.seq for e in envelopes) == list(range(2, 202))
    assert listed == list(range(1, 202))


async def _all_events(
    client: statekeeper.AsyncClient, run_id: str
) -> AsyncIterator[events_pb2.EventEnvelope]:
    async for envelope in client.events.replay(run_id, follow=False):
        yield envelope


async def test_follower_on_one_replica_sees_appends_made_through_the_other(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    async with clients(*replicas) as (a, b):

        async def follow() -> list[int]:
            return [e.seq async for e in b.events.replay("run-2", follow=True)]

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.3)  # let the follower subscribe before the run starts
        await a.events.append("run-2", started())
        for n in range(50):
            await a.events.append("run-2", custom_event("step", {"n": n}))
        await a.events.append("run-2", completed())
        seqs = await asyncio.wait_for(follower, 30)
    assert seqs == list(range(1, 53))


async def test_jobs_enqueued_through_one_are_leased_exactly_once_by_workers_on_both(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    total = 400
    async with clients(*replicas) as (a, b):
        for start in range(0, total, 100):
            await a.jobs.enqueue_many(
                [job_spec("resize", {"n": n}) for n in range(start, start + 100)]
            )
        completions: Counter[str] = Counter()

        async def worker(client: statekeeper.AsyncClient, name: str) -> None:
            while True:
                jobs = await client.jobs.lease("default", worker_id=name, max_jobs=10, wait=0.5)
                if not jobs:
                    return
                for job in jobs:
                    await client.jobs.complete(job.job_id, job.lease.lease_id)
                    completions[job.job_id] += 1

        await asyncio.gather(*(worker((a, b)[i % 2], f"worker-{i}") for i in range(8)))
        stats = await b.jobs.stats("default")
    assert len(completions) == total
    assert set(completions.values()) == {1}
    succeeded = sum(
        count.count
        for queue in stats
        for count in queue.counts
        if count.state == jobs_pb2.JOB_STATE_SUCCEEDED
    )
    assert succeeded == total


async def health(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status


async def wait_for_health(target: str, status: int, within: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while await health(target) != status:
        assert loop.time() < deadline, f"health never became {status}"
        await asyncio.sleep(0.1)


@pytest.fixture
def own_replicas() -> Iterator[tuple[ServerProcess, ServerProcess, PrivatePostgres]]:
    """Two replicas on a PostgreSQL of this test's own: stopping the shared one would
    fail the tests running beside it."""
    with private_postgres() as server:
        url = server.url("sk_replicas")
        first = ServerProcess(url, "--health-check-interval", "0.2").start()
        second = ServerProcess(url, "--health-check-interval", "0.2").start()
        try:
            yield first, second, server
        finally:
            first.stop()
            second.stop()


async def test_restart_of_postgresql_mid_run_is_survived(
    own_replicas: tuple[ServerProcess, ServerProcess, PrivatePostgres],
) -> None:
    *replicas, postgres = own_replicas
    async with clients(*replicas) as (a, b):
        await a.events.append("run-3", started())
        received: list[int] = []

        async def follow() -> None:
            async for envelope in b.events.replay("run-3", follow=True, reconnect_timeout=60):
                received.append(envelope.seq)

        follower = asyncio.create_task(follow())
        await a.events.append("run-3", custom_event("before", {}))
        postgres.stop()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await a.snapshots.save(
                    snapshots_pb2.Snapshot(run_id="run-3", session_id="session-1", status=2)
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            await wait_for_health(replicas[0].target, NOT_SERVING)
        finally:
            postgres.start()
        await wait_for_health(replicas[0].target, SERVING)
        await wait_for_health(replicas[1].target, SERVING)
        await a.events.append("run-3", custom_event("after", {}))
        await b.events.append("run-3", completed())
        await asyncio.wait_for(follower, 60)
    assert received == [1, 2, 3, 4]
