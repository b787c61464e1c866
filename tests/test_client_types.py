"""Every method of both clients, called as a user would call it, against a real server
(with a Redis sink for the relays).

mypy checks this file (pyproject's `[tool.mypy] files`): each `assert_type`
states the type a user's editor and type checker see for an answer, for the
asyncio client and for the blocking one alike, so a method whose declared
type drifts, or that one client lacks, fails the type check; running it
proves the declared types are the answers' real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Generator

from typing_extensions import assert_type

import statekeeper
from statekeeper.events import custom_event
from statekeeper.jobs import BlockingWorkItem, WorkItem, job_spec
from statekeeper.v1 import (
    checkpoints_pb2,
    events_pb2,
    jobs_pb2,
    relays_pb2,
    snapshots_pb2,
    thread_checkpoints_pb2,
)
from tests.brokers import REDIS_URL, redis_keys
from tests.harness import running_app

SNAPSHOT = snapshots_pb2.Snapshot(
    run_id="run-1", session_id="session-1", status=snapshots_pb2.RUN_STATUS_RUNNING
)
STARTED = events_pb2.AgentEvent(run_started=events_pb2.RunStarted(session_id="session-1"))
COMPLETED = events_pb2.AgentEvent(run_completed=events_pb2.RunCompleted())


async def use_every_async_method(client: statekeeper.AsyncClient) -> None:
    """Call each method of the asyncio client once, checking its answer's type."""
    # snapshots
    saved = assert_type(
        await client.snapshots.save(SNAPSHOT, expected_version=0), snapshots_pb2.Snapshot
    )
    assert_type(await client.snapshots.load("run-1"), snapshots_pb2.Snapshot)
    listing = assert_type(
        client.snapshots.list(session_id="session-1", page_size=10),
        AsyncGenerator[snapshots_pb2.Snapshot, None],
    )
    assert [s.run_id async for s in listing] == [saved.run_id]
    assert assert_type(await client.snapshots.delete("run-1"), bool)

    # checkpoints
    workflow = assert_type(
        await client.checkpoints.save_workflow(
            "run-1", "wf", step=1, scope_snapshot={"x": 1}, metadata={"team": "a"}, keep_last=5
        ),
        checkpoints_pb2.WorkflowCheckpoint,
    )
    loaded = assert_type(
        await client.checkpoints.load_workflow("run-1", fallback_to_readable=True),
        checkpoints_pb2.LoadWorkflowCheckpointResponse,
    )
    assert loaded.checkpoint == workflow
    workflows = assert_type(
        client.checkpoints.list_workflow("run-1", workflow_name="wf"),
        AsyncGenerator[checkpoints_pb2.WorkflowCheckpoint, None],
    )
    assert [c.step async for c in workflows] == [1]
    assert assert_type(await client.checkpoints.delete_workflow("run-1"), int) == 1
    agent = assert_type(
        await client.checkpoints.persist_agent(
            "agent-1", checkpoints_pb2.AGENT_STATE_READY, app_state={"k": "v"}, custom=[1]
        ),
        checkpoints_pb2.AgentCheckpoint,
    )
    recovered = assert_type(
        await client.checkpoints.recover_agent("agent-1"),
        checkpoints_pb2.RecoverAgentCheckpointResponse,
    )
    assert recovered.checkpoint == agent
    agents = assert_type(
        client.checkpoints.list_agent("agent-1", page_size=5),
        AsyncGenerator[checkpoints_pb2.AgentCheckpoint, None],
    )
    assert [a.agent_id async for a in agents] == ["agent-1"]
    newest = assert_type(
        client.checkpoints.list_agents("agent-", page_size=5),
        AsyncGenerator[checkpoints_pb2.AgentCheckpoint, None],
    )
    assert [a async for a in newest] == [agent]
    assert assert_type(await client.checkpoints.delete_agent("agent-1"), int) == 1

    # events
    first = assert_type(
        await client.events.append("run-1", STARTED, event_id="e-1"), events_pb2.EventEnvelope
    )
    batch = assert_type(
        await client.events.append_many(
            "run-1", [custom_event("step", {"n": 1}), COMPLETED], expectation=None
        ),
        list[events_pb2.EventEnvelope],
    )
    listed = assert_type(
        await client.events.list("run-1", after_seq=0), list[events_pb2.EventEnvelope]
    )
    assert listed == [first, *batch]
    replay = assert_type(
        client.events.replay("run-1"), AsyncGenerator[events_pb2.EventEnvelope, None]
    )
    assert [e.seq async for e in replay] == [1, 2, 3]
    runs = assert_type(
        client.events.list_runs(page_size=10), AsyncGenerator[events_pb2.RunInfo, None]
    )
    assert [r.run_id async for r in runs] == ["run-1"]
    truncated = assert_type(
        await client.events.truncate("run-1", 1), events_pb2.TruncateRunResponse
    )
    assert truncated.dropped == 1
    assert assert_type(await client.events.delete_run("run-1"), bool)

    # jobs
    job = assert_type(
        await client.jobs.enqueue("email.send", {"to": "a"}, queue="q", priority="high"),
        jobs_pb2.Job,
    )
    assert_type(
        await client.jobs.enqueue_many([job_spec("email.send", queue="q")]), list[jobs_pb2.Job]
    )
    later = assert_type(
        await client.jobs.append_event_later("run-2", STARTED, delay=60), jobs_pb2.Job
    )
    assert_type(
        await client.jobs.publish_event("audit", "run-2", event=STARTED, delay=60), jobs_pb2.Job
    )
    assert assert_type(await client.jobs.get(job.job_id), jobs_pb2.Job) == job
    jobs = assert_type(client.jobs.list(queue="q"), AsyncGenerator[jobs_pb2.Job, None])
    assert len([j async for j in jobs]) == 2
    assert_type(await client.jobs.cancel(later.job_id), jobs_pb2.Job)
    assert_type(await client.jobs.retry(later.job_id, delay=60), jobs_pb2.Job)
    stats = assert_type(await client.jobs.stats("q"), list[jobs_pb2.QueueStats])
    assert [s.queue for s in stats] == ["q"]
    changes = assert_type(
        client.jobs.watch(job_ids=[job.job_id], after_change_id=0),
        AsyncGenerator[jobs_pb2.JobChange, None],
    )
    async with contextlib.aclosing(changes):
        assert (await anext(changes)).job_id == job.job_id
    leased = assert_type(
        await client.jobs.lease("q", ["email.send"], worker_id="w-1", max_jobs=2),
        list[jobs_pb2.Job],
    )
    one, two = leased
    beat = assert_type(
        await client.jobs.heartbeat(one.job_id, one.lease.lease_id, lease_duration=30),
        jobs_pb2.HeartbeatJobResponse,
    )
    assert not beat.cancelled
    assert_type(await client.jobs.complete(one.job_id, one.lease.lease_id, {"ok": 1}), jobs_pb2.Job)
    assert_type(
        await client.jobs.fail(two.job_id, two.lease.lease_id, "boom", retryable=False),
        jobs_pb2.Job,
    )
    await client.jobs.enqueue("email.send", queue="w")
    work = assert_type(client.jobs.work("w", wait=1), AsyncGenerator[WorkItem, None])
    async with contextlib.aclosing(work):
        async for item in work:
            async with item:
                item.result = {"sent": True}
            break

    # relays
    relay = assert_type(
        await client.relays.create("audit", "audit", run_id_prefix="none-"), relays_pb2.Relay
    )
    assert assert_type(await client.relays.get("audit"), relays_pb2.Relay).name == relay.name
    relays = assert_type(client.relays.list(page_size=10), AsyncGenerator[relays_pb2.Relay, None])
    assert [r.name async for r in relays] == ["audit"]
    assert assert_type(await client.relays.names(), list[str]) == ["audit"]
    assert assert_type(await client.relays.delete("audit"), bool)

    # threads
    blob = ("json", b"{}")
    assert_type(
        await client.threads.put_checkpoint(
            "t-1",
            "cp-1",
            blob,
            blob,
            channel_versions={"a": "1"},
            new_channel_values={("a", "1"): blob},
        ),
        None,
    )
    assert_type(await client.threads.put_writes("t-1", "cp-1", "task", [("a", 0, blob)]), None)
    got = assert_type(
        await client.threads.get_checkpoint("t-1"), thread_checkpoints_pb2.ThreadCheckpoint
    )
    assert got.checkpoint_id == "cp-1"
    history = assert_type(
        client.threads.list_checkpoints("t-1", limit=5),
        AsyncGenerator[thread_checkpoints_pb2.ThreadCheckpoint, None],
    )
    assert [c.checkpoint_id async for c in history] == ["cp-1"]
    assert assert_type(await client.threads.copy_thread("t-1", "t-2"), int) == 1
    assert assert_type(await client.threads.prune(["t-2"]), int) == 0
    assert assert_type(await client.threads.delete_runs(["none"]), int) == 0
    assert assert_type(await client.threads.delete_thread("t-2"), int) == 1


def use_every_blocking_method(client: statekeeper.Client) -> None:
    """Call each method of the blocking client once, checking its answer's type."""
    # snapshots
    saved = assert_type(client.snapshots.save(SNAPSHOT, expected_version=0), snapshots_pb2.Snapshot)
    assert_type(client.snapshots.load("run-1"), snapshots_pb2.Snapshot)
    listing = assert_type(
        client.snapshots.list(session_id="session-1", page_size=10),
        Generator[snapshots_pb2.Snapshot, None, None],
    )
    assert [s.run_id for s in listing] == [saved.run_id]
    assert assert_type(client.snapshots.delete("run-1"), bool)

    # checkpoints
    workflow = assert_type(
        client.checkpoints.save_workflow(
            "run-1", "wf", step=1, scope_snapshot={"x": 1}, metadata={"team": "a"}, keep_last=5
        ),
        checkpoints_pb2.WorkflowCheckpoint,
    )
    loaded = assert_type(
        client.checkpoints.load_workflow("run-1", fallback_to_readable=True),
        checkpoints_pb2.LoadWorkflowCheckpointResponse,
    )
    assert loaded.checkpoint == workflow
    workflows = assert_type(
        client.checkpoints.list_workflow("run-1", workflow_name="wf"),
        Generator[checkpoints_pb2.WorkflowCheckpoint, None, None],
    )
    assert [c.step for c in workflows] == [1]
    assert assert_type(client.checkpoints.delete_workflow("run-1"), int) == 1
    agent = assert_type(
        client.checkpoints.persist_agent(
            "agent-1", checkpoints_pb2.AGENT_STATE_READY, app_state={"k": "v"}, custom=[1]
        ),
        checkpoints_pb2.AgentCheckpoint,
    )
    recovered = assert_type(
        client.checkpoints.recover_agent("agent-1"),
        checkpoints_pb2.RecoverAgentCheckpointResponse,
    )
    assert recovered.checkpoint == agent
    agents = assert_type(
        client.checkpoints.list_agent("agent-1", page_size=5),
        Generator[checkpoints_pb2.AgentCheckpoint, None, None],
    )
    assert [a.agent_id for a in agents] == ["agent-1"]
    newest = assert_type(
        client.checkpoints.list_agents("agent-", page_size=5),
        Generator[checkpoints_pb2.AgentCheckpoint, None, None],
    )
    assert list(newest) == [agent]
    assert assert_type(client.checkpoints.delete_agent("agent-1"), int) == 1

    # events
    first = assert_type(
        client.events.append("run-1", STARTED, event_id="e-1"), events_pb2.EventEnvelope
    )
    batch = assert_type(
        client.events.append_many(
            "run-1", [custom_event("step", {"n": 1}), COMPLETED], expectation=None
        ),
        list[events_pb2.EventEnvelope],
    )
    listed = assert_type(client.events.list("run-1", after_seq=0), list[events_pb2.EventEnvelope])
    assert listed == [first, *batch]
    replay = assert_type(
        client.events.replay("run-1"), Generator[events_pb2.EventEnvelope, None, None]
    )
    assert [e.seq for e in replay] == [1, 2, 3]
    runs = assert_type(
        client.events.list_runs(page_size=10), Generator[events_pb2.RunInfo, None, None]
    )
    assert [r.run_id for r in runs] == ["run-1"]
    truncated = assert_type(client.events.truncate("run-1", 1), events_pb2.TruncateRunResponse)
    assert truncated.dropped == 1
    assert assert_type(client.events.delete_run("run-1"), bool)

    # jobs
    job = assert_type(
        client.jobs.enqueue("email.send", {"to": "a"}, queue="q", priority="high"), jobs_pb2.Job
    )
    assert_type(client.jobs.enqueue_many([job_spec("email.send", queue="q")]), list[jobs_pb2.Job])
    later = assert_type(client.jobs.append_event_later("run-2", STARTED, delay=60), jobs_pb2.Job)
    assert_type(client.jobs.publish_event("audit", "run-2", event=STARTED, delay=60), jobs_pb2.Job)
    assert assert_type(client.jobs.get(job.job_id), jobs_pb2.Job) == job
    jobs = assert_type(client.jobs.list(queue="q"), Generator[jobs_pb2.Job, None, None])
    assert len(list(jobs)) == 2
    assert_type(client.jobs.cancel(later.job_id), jobs_pb2.Job)
    assert_type(client.jobs.retry(later.job_id, delay=60), jobs_pb2.Job)
    stats = assert_type(client.jobs.stats("q"), list[jobs_pb2.QueueStats])
    assert [s.queue for s in stats] == ["q"]
    changes = assert_type(
        client.jobs.watch(job_ids=[job.job_id], after_change_id=0),
        Generator[jobs_pb2.JobChange, None, None],
    )
    with contextlib.closing(changes):
        assert next(changes).job_id == job.job_id
    leased = assert_type(
        client.jobs.lease("q", ["email.send"], worker_id="w-1", max_jobs=2), list[jobs_pb2.Job]
    )
    one, two = leased
    beat = assert_type(
        client.jobs.heartbeat(one.job_id, one.lease.lease_id, lease_duration=30),
        jobs_pb2.HeartbeatJobResponse,
    )
    assert not beat.cancelled
    assert_type(client.jobs.complete(one.job_id, one.lease.lease_id, {"ok": 1}), jobs_pb2.Job)
    assert_type(
        client.jobs.fail(two.job_id, two.lease.lease_id, "boom", retryable=False), jobs_pb2.Job
    )
    client.jobs.enqueue("email.send", queue="w")
    work = assert_type(client.jobs.work("w", wait=1), Generator[BlockingWorkItem, None, None])
    with contextlib.closing(work):
        for item in work:
            with item:
                item.result = {"sent": True}
            break

    # relays
    relay = assert_type(
        client.relays.create("audit", "audit", run_id_prefix="none-"), relays_pb2.Relay
    )
    assert assert_type(client.relays.get("audit"), relays_pb2.Relay).name == relay.name
    relays = assert_type(client.relays.list(page_size=10), Generator[relays_pb2.Relay, None, None])
    assert [r.name for r in relays] == ["audit"]
    assert assert_type(client.relays.names(), list[str]) == ["audit"]
    assert assert_type(client.relays.delete("audit"), bool)

    # threads
    blob = ("json", b"{}")
    assert_type(
        client.threads.put_checkpoint(
            "t-1",
            "cp-1",
            blob,
            blob,
            channel_versions={"a": "1"},
            new_channel_values={("a", "1"): blob},
        ),
        None,
    )
    assert_type(client.threads.put_writes("t-1", "cp-1", "task", [("a", 0, blob)]), None)
    got = assert_type(client.threads.get_checkpoint("t-1"), thread_checkpoints_pb2.ThreadCheckpoint)
    assert got.checkpoint_id == "cp-1"
    history = assert_type(
        client.threads.list_checkpoints("t-1", limit=5),
        Generator[thread_checkpoints_pb2.ThreadCheckpoint, None, None],
    )
    assert [c.checkpoint_id for c in history] == ["cp-1"]
    assert assert_type(client.threads.copy_thread("t-1", "t-2"), int) == 1
    assert assert_type(client.threads.prune(["t-2"]), int) == 0
    assert assert_type(client.threads.delete_runs(["none"]), int) == 0
    assert assert_type(client.threads.delete_thread("t-2"), int) == 1


async def test_every_method_of_the_asyncio_client_answers_with_its_declared_type() -> None:
    async with (
        redis_keys() as (_, prefix),
        running_app("memory:", sink=[f"audit={REDIS_URL}?stream={prefix}"]) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        await use_every_async_method(client)


async def test_every_method_of_the_blocking_client_answers_with_its_declared_type() -> None:
    async with (
        redis_keys() as (_, prefix),
        running_app("memory:", sink=[f"audit={REDIS_URL}?stream={prefix}"]) as app,
    ):

        def use() -> None:
            with statekeeper.Client(f"127.0.0.1:{app.port}") as client:
                use_every_blocking_method(client)

        await asyncio.to_thread(use)
