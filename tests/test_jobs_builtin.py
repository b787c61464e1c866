"""Built-in jobs the server runs itself: `statekeeper.append_event`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import statekeeper
from statekeeper.events import custom_event, expect_last_seq
from statekeeper.jobs import append_event_spec
from statekeeper.v1 import events_pb2, jobs_pb2
from statekeeper_server.app import Application
from tests.harness import data_file, running_app

RUN = "run-1"
STARTED = events_pb2.AgentEvent(run_started=events_pb2.RunStarted(session_id="session-1"))


@pytest.fixture
async def app(store_url: str) -> AsyncIterator[Application]:
    async with running_app(store_url, job_sweep_interval=0.05) as running:
        yield running


@pytest.fixture
async def client(app: Application) -> AsyncIterator[statekeeper.AsyncClient]:
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as connected:
        yield connected


async def finished(client: statekeeper.AsyncClient, job_id: str) -> jobs_pb2.Job:
    """The job once it reached SUCCEEDED, DEAD or CANCELLED (from its change stream)."""
    finished_states = (
        jobs_pb2.JOB_STATE_SUCCEEDED,
        jobs_pb2.JOB_STATE_DEAD,
        jobs_pb2.JOB_STATE_CANCELLED,
    )
    async for change in client.jobs.watch(job_ids=[job_id], after_change_id=0):
        if change.state in finished_states:
            return await client.jobs.get(job_id)
    raise AssertionError("the stream ended")


async def test_a_delayed_event_lands_in_the_log_after_its_delay(
    client: statekeeper.AsyncClient,
) -> None:
    await client.events.append(RUN, STARTED)
    job = await client.jobs.append_event_later(RUN, custom_event("run.timeout"), delay=1.0)
    assert (job.queue, job.state) == ("statekeeper.builtin", jobs_pb2.JOB_STATE_SCHEDULED)
    assert [e.seq for e in await client.events.list(RUN)] == [1]
    done = await finished(client, job.job_id)
    [_, timeout] = await client.events.list(RUN)
    assert (timeout.seq, timeout.event_id, timeout.event.custom.type) == (
        2,
        job.job_id,
        "run.timeout",
    )
    assert timeout.emitted_at.ToMicroseconds() >= job.run_after.ToMicroseconds()
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED
    envelope = done.result["envelope"]
    assert (envelope["seq"], envelope["eventId"], envelope["runId"]) == ("2", job.job_id, RUN)


async def test_an_event_id_in_the_payload_names_the_appended_event(
    client: statekeeper.AsyncClient,
) -> None:
    job = await client.jobs.append_event_later(RUN, STARTED, event_id="start-1")
    await finished(client, job.job_id)
    [envelope] = await client.events.list(RUN)
    assert envelope.event_id == "start-1"


async def test_an_append_that_can_never_succeed_makes_the_job_dead_at_once(
    client: statekeeper.AsyncClient,
) -> None:
    await client.events.append(RUN, STARTED)
    job = await client.jobs.append_event_later(
        RUN, custom_event("late"), expectation=expect_last_seq(7)
    )
    dead = await finished(client, job.job_id)
    assert (dead.state, dead.attempt) == (jobs_pb2.JOB_STATE_DEAD, 1)
    assert "last seq 1" in dead.errors[0].message
    assert [e.seq for e in await client.events.list(RUN)] == [1]


async def test_builtin_jobs_in_flight_at_shutdown_finish_or_come_back_and_append_once(
    tmp_path: Path,
) -> None:
    url = data_file(tmp_path)
    async with (
        running_app(url, grace_period=0) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        await client.events.append(RUN, STARTED)
        specs = [append_event_spec(RUN, custom_event("step", {"n": n})) for n in range(200)]
        jobs = await client.jobs.enqueue_many(specs)
    async with (
        running_app(url, job_sweep_interval=0.05) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        done = [await finished(client, job.job_id) for job in jobs]
        envelopes = await client.events.list(RUN, limit=1000)
    assert {job.state for job in done} == {jobs_pb2.JOB_STATE_SUCCEEDED}
    # A job left leased by the stopped server would have come back only when its
    # lease expired: as a second attempt, with a "lease expired" error.
    assert [(job.attempt, list(job.errors)) for job in done] == [(1, [])] * len(done)
    assert sorted(e.event.custom.data["n"] for e in envelopes[1:]) == list(range(200))
    assert [e.event_id for e in envelopes[1:]] == [
        job.job_id for job in sorted(done, key=lambda job: int(job.result["envelope"]["seq"]))
    ]
