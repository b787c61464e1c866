"""The job queue across real server processes: SIGKILL and SIGTERM lose nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

import statekeeper
from statekeeper.v1 import jobs_pb2
from tests.harness import ServerProcess, data_file

SCHEDULED = jobs_pb2.JOB_STATE_SCHEDULED
AVAILABLE = jobs_pb2.JOB_STATE_AVAILABLE
RUNNING = jobs_pb2.JOB_STATE_RUNNING


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(data_file(tmp_path), "--job-sweep-interval", "0.05").start()
    yield process
    process.stop()


async def restart(server: ServerProcess, stop: str) -> None:
    await asyncio.to_thread(getattr(server, stop))
    await asyncio.to_thread(server.start, server.port)


@pytest.mark.parametrize("stop", ["kill", "terminate"])
async def test_available_running_and_scheduled_jobs_survive_the_server(
    server: ServerProcess, stop: str
) -> None:
    async with statekeeper.AsyncClient(server.target) as client:
        available = await client.jobs.enqueue("k", {"n": 1}, priority="low")
        running = await client.jobs.enqueue("k", {"n": 2}, priority="high")
        scheduled = await client.jobs.enqueue("k", {"n": 3}, delay=60)
        [leased] = await client.jobs.lease(worker_id="w1", lease_duration=3.0)
        assert leased.job_id == running.job_id
    await restart(server, stop)
    async with statekeeper.AsyncClient(server.target) as client:
        await asyncio.wait_for(client.channel.channel_ready(), 30)
        kept = {job.job_id: job async for job in client.jobs.list()}
        assert [
            (kept[job.job_id].state, kept[job.job_id].payload["n"])
            for job in (
                available,
                running,
                scheduled,
            )
        ] == [(AVAILABLE, 1), (RUNNING, 2), (SCHEDULED, 3)]
        assert kept[running.job_id].lease == leased.lease
        redelivered = await client.jobs.lease(worker_id="w2", max_jobs=5, wait=30)
        assert [job.job_id for job in redelivered] == [available.job_id]
        [again] = await client.jobs.lease(worker_id="w2", wait=30)
        assert (again.job_id, again.attempt) == (running.job_id, 2)
        assert [e.message for e in again.errors] == ["lease expired"]
