"""The client's worker loop, `client.jobs.work`, against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest

import statekeeper
from statekeeper.jobs import job_spec
from statekeeper.v1 import jobs_pb2
from statekeeper_server.app import Application
from tests.harness import running_app

SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED
CANCELLED = jobs_pb2.JOB_STATE_CANCELLED


@pytest.fixture
async def app(store_url: str) -> AsyncIterator[Application]:
    async with running_app(store_url, job_sweep_interval=0.05) as running:
        yield running


@pytest.fixture
async def client(app: Application) -> AsyncIterator[statekeeper.AsyncClient]:
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as connected:
        yield connected


async def settled(client: statekeeper.AsyncClient, job_id: str) -> jobs_pb2.Job:
    """The job once it reached SUCCEEDED, DEAD or CANCELLED (from its change stream)."""
    async for change in client.jobs.watch(job_ids=[job_id], after_change_id=0):
        if change.state in (SUCCEEDED, jobs_pb2.JOB_STATE_DEAD, CANCELLED):
            return await client.jobs.get(job_id)
    raise AssertionError("the stream ended")


async def test_the_body_completes_the_job_with_the_result_it_sets(
    client: statekeeper.AsyncClient,
) -> None:
    job = await client.jobs.enqueue("add", {"a": 2, "b": 3})
    async with contextlib.aclosing(client.jobs.work(kinds=["add"], wait=5)) as work:
        async for item in work:
            async with item:
                item.result = {"sum": item.payload["a"] + item.payload["b"]}
            break
    done = await client.jobs.get(job.job_id)
    assert (done.state, done.result["sum"], done.attempt) == (SUCCEEDED, 5, 1)


async def test_an_exception_fails_the_job_retryably_and_the_loop_goes_on(
    client: statekeeper.AsyncClient,
) -> None:
    flaky = await client.jobs.enqueue("flaky", retry_backoff_base=0.05, retry_backoff_cap=0.05)
    attempts: list[int] = []
    async with contextlib.aclosing(client.jobs.work(wait=5)) as work:
        async for item in work:
            async with item:
                attempts.append(item.attempt)
                if item.attempt == 1:
                    raise ValueError("first attempt breaks")
            if item.attempt == 2:
                break
    done = await client.jobs.get(flaky.job_id)
    assert attempts == [1, 2]
    assert (done.state, done.attempt) == (SUCCEEDED, 2)
    assert [e.message for e in done.errors] == ["ValueError: first attempt breaks"]


async def test_heartbeats_keep_a_long_job_leased(client: statekeeper.AsyncClient) -> None:
    job = await client.jobs.enqueue("slow")
    async with contextlib.aclosing(client.jobs.work(lease_duration=0.3, wait=5)) as work:
        async for item in work:
            async with item:
                await asyncio.sleep(0.7)
            break
    done = await client.jobs.get(job.job_id)
    assert (done.state, done.attempt, list(done.errors)) == (SUCCEEDED, 1, [])


async def test_a_cancelled_job_is_flagged_while_its_body_runs(
    client: statekeeper.AsyncClient,
) -> None:
    job = await client.jobs.enqueue("long")
    async with contextlib.aclosing(client.jobs.work(lease_duration=0.3, wait=5)) as work:
        async for item in work:
            async with item:
                await client.jobs.cancel(item.id)
                for _ in range(100):
                    if item.cancelled:
                        break
                    await asyncio.sleep(0.02)
            break
    assert item.cancelled
    assert (await client.jobs.get(job.job_id)).state == CANCELLED


async def test_a_body_without_async_with_completes_when_the_loop_moves_on(
    client: statekeeper.AsyncClient,
) -> None:
    first = await client.jobs.enqueue("plain")
    second = await client.jobs.enqueue("plain")
    seen: list[str] = []
    async with contextlib.aclosing(client.jobs.work(max_jobs=2, wait=5)) as work:
        async for item in work:
            seen.append(item.id)
            item.result = {"n": len(seen)}
            if len(seen) == 2:
                await item.complete()
                break
    assert seen == [first.job_id, second.job_id]
    assert (await client.jobs.get(first.job_id)).result["n"] == 1
    assert (await client.jobs.get(second.job_id)).state == SUCCEEDED


# -- the blocking client's loop: heartbeats on its own thread --------------------------


async def test_the_blocking_loops_heartbeats_keep_a_long_job_leased(
    app: Application, client: statekeeper.AsyncClient
) -> None:
    job = await client.jobs.enqueue("slow")

    def work_one() -> None:
        with (
            statekeeper.Client(f"127.0.0.1:{app.port}") as blocking,
            contextlib.closing(blocking.jobs.work(lease_duration=0.6, wait=5)) as work,
        ):
            for item in work:
                with item:
                    time.sleep(1.5)  # well past the lease: only heartbeats keep it
                break

    await asyncio.to_thread(work_one)
    done = await client.jobs.get(job.job_id)
    assert (done.state, done.attempt, list(done.errors)) == (SUCCEEDED, 1, [])


async def test_the_blocking_loop_fails_an_attempt_that_raises_and_goes_on(
    app: Application, client: statekeeper.AsyncClient
) -> None:
    flaky = await client.jobs.enqueue("flaky", retry_backoff_base=0.05, retry_backoff_cap=0.05)

    def work_twice() -> list[int]:
        attempts: list[int] = []
        with (
            statekeeper.Client(f"127.0.0.1:{app.port}") as blocking,
            contextlib.closing(blocking.jobs.work(wait=5)) as work,
        ):
            for item in work:
                with item:
                    attempts.append(item.attempt)
                    if item.attempt == 1:
                        raise ValueError("first attempt breaks")
                if item.attempt == 2:
                    break
        return attempts

    assert await asyncio.to_thread(work_twice) == [1, 2]
    done = await client.jobs.get(flaky.job_id)
    assert (done.state, done.attempt) == (SUCCEEDED, 2)
    assert [e.message for e in done.errors] == ["ValueError: first attempt breaks"]


async def test_the_blocking_loop_flags_a_job_cancelled_while_its_body_runs(
    app: Application, client: statekeeper.AsyncClient
) -> None:
    job = await client.jobs.enqueue("long")

    def work_one() -> bool:
        with (
            statekeeper.Client(f"127.0.0.1:{app.port}") as blocking,
            contextlib.closing(blocking.jobs.work(lease_duration=0.3, wait=5)) as work,
        ):
            for item in work:
                with item:
                    blocking.jobs.cancel(item.id)
                    for _ in range(100):
                        if item.cancelled:
                            break
                        time.sleep(0.02)
                return item.cancelled
        raise AssertionError("the loop ended")

    assert await asyncio.to_thread(work_one)
    assert (await client.jobs.get(job.job_id)).state == CANCELLED


async def test_eight_workers_complete_two_thousand_jobs_exactly_once(
    client: statekeeper.AsyncClient,
) -> None:
    total = 2000
    for start in range(0, total, 500):
        await client.jobs.enqueue_many(
            job_spec("bulk", {"n": n}, queue="bulk") for n in range(start, start + 500)
        )
    runs: Counter[str] = Counter()
    completed = 0
    all_done = asyncio.Event()

    async def worker(name: str) -> None:
        nonlocal completed
        async for item in client.jobs.work("bulk", worker_id=name, max_jobs=25, wait=5):
            async with item:
                runs[item.id] += 1
            completed += 1
            if completed == total:
                all_done.set()

    workers = [asyncio.ensure_future(worker(f"worker-{i}")) for i in range(8)]
    try:
        await all_done.wait()
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    assert len(runs) == total
    assert set(runs.values()) == {1}
    [stats] = await client.jobs.stats("bulk")
    assert [(c.state, c.count) for c in stats.counts] == [(SUCCEEDED, total)]
