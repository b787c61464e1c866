"""Pages, lease batches and change batches of large records, end to end on every store.

Every response holds records whose encoded size (with each record's field
framing) is at most PAGE_BUDGET_BYTES: with large records a page simply
holds fewer and the next one continues; nothing fails for being too big.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import Message

import statekeeper
from statekeeper.v1 import (
    checkpoints_pb2,
    checkpoints_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    snapshots_pb2,
    snapshots_pb2_grpc,
)
from statekeeper_server.limits import PAGE_BUDGET_BYTES
from tests.harness import running_app

LARGE = 900_000
"""Characters of the text that makes a record large: four fit in a page, five do not."""
RECORDS = 6
AVAILABLE = jobs_pb2.JOB_STATE_AVAILABLE
RUNNING = jobs_pb2.JOB_STATE_RUNNING
SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED


@pytest.fixture
async def channel(store_url: str) -> AsyncIterator[grpc.aio.Channel]:
    async with (
        running_app(store_url) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        yield client.channel


def large(size: int = LARGE, **fields: object) -> struct_pb2.Struct:
    data = struct_pb2.Struct()
    data.update({"text": "x" * size, **fields})
    return data


def records_size(response: Message, field: str) -> int:
    """The encoded size of `response`'s records in `field`, with their field framing."""
    only_records = type(response)()
    getattr(only_records, field).extend(getattr(response, field))
    return only_records.ByteSize()


async def every_page(list_page: Callable[[str], Awaitable[Any]], field: str) -> list[list[Any]]:
    """The records of each page, following `next_page_token` to the last page; each
    page is checked to hold at least one record and to fit the budget."""
    pages: list[list[Any]] = []
    token = ""
    while True:
        response = await list_page(token)
        assert getattr(response, field), "a page holds at least one record"
        assert records_size(response, field) <= PAGE_BUDGET_BYTES
        pages.append(list(getattr(response, field)))
        token = response.next_page_token
        if not token:
            return pages


# -- lists ------------------------------------------------------------------------------------


async def test_a_page_of_large_snapshots_holds_fewer_and_continues(
    channel: grpc.aio.Channel,
) -> None:
    stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
    for n in range(RECORDS):
        snapshot = snapshots_pb2.Snapshot(
            run_id=f"run-{n}", session_id="session-1", status=snapshots_pb2.RUN_STATUS_RUNNING
        )
        snapshot.request.tools.add(name="search").parameters.CopyFrom(large())
        await stub.SaveSnapshot(snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot))
    pages = await every_page(
        lambda token: stub.ListSnapshots(snapshots_pb2.ListSnapshotsRequest(page_token=token)),
        "snapshots",
    )
    assert len(pages) > 1
    assert [s.run_id for page in pages for s in page] == [f"run-{n}" for n in range(RECORDS)]


async def test_a_page_of_large_events_holds_fewer_and_the_caller_continues_after_its_last_seq(
    channel: grpc.aio.Channel,
) -> None:
    stub = events_pb2_grpc.EventLogServiceStub(channel)
    for _ in range(RECORDS):
        event = events_pb2.AgentEvent(custom=events_pb2.CustomEvent(type="blob", data=large()))
        await stub.AppendEvent(
            events_pb2.AppendEventRequest(run_id="run-1", input=events_pb2.EventInput(event=event))
        )
    seqs: list[int] = []
    while not seqs or seqs[-1] < RECORDS:
        page = await stub.ListEvents(
            events_pb2.ListEventsRequest(run_id="run-1", after_seq=seqs[-1] if seqs else 0)
        )
        assert 0 < len(page.envelopes) < RECORDS
        assert records_size(page, "envelopes") <= PAGE_BUDGET_BYTES
        seqs += [envelope.seq for envelope in page.envelopes]
    assert seqs == list(range(1, RECORDS + 1))


async def test_a_page_of_large_jobs_holds_fewer_and_continues(channel: grpc.aio.Channel) -> None:
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    enqueued = [
        (await stub.EnqueueJob(jobs_pb2.EnqueueJobRequest(job=job(large())))).job.job_id
        for _ in range(RECORDS)
    ]
    pages = await every_page(
        lambda token: stub.ListJobs(jobs_pb2.ListJobsRequest(page_token=token)), "jobs"
    )
    assert len(pages) > 1
    assert [j.job_id for page in pages for j in page] == enqueued


async def test_a_page_of_a_runs_large_workflow_checkpoints_holds_fewer_and_continues(
    channel: grpc.aio.Channel,
) -> None:
    stub = checkpoints_pb2_grpc.CheckpointServiceStub(channel)
    saved = [
        (await stub.SaveWorkflowCheckpoint(workflow_checkpoint("run-1"))).checkpoint.checkpoint_id
        for _ in range(RECORDS)
    ]
    pages = await every_page(
        lambda token: stub.ListWorkflowCheckpoints(
            checkpoints_pb2.ListWorkflowCheckpointsRequest(run_id="run-1", page_token=token)
        ),
        "checkpoints",
    )
    assert len(pages) > 1
    assert [c.checkpoint_id for page in pages for c in page] == saved[::-1]


async def test_a_page_of_every_runs_large_newest_checkpoint_holds_fewer_and_continues(
    channel: grpc.aio.Channel,
) -> None:
    stub = checkpoints_pb2_grpc.CheckpointServiceStub(channel)
    for n in range(RECORDS):
        await stub.SaveWorkflowCheckpoint(workflow_checkpoint(f"run-{n}"))
    pages = await every_page(
        lambda token: stub.ListWorkflowCheckpoints(
            checkpoints_pb2.ListWorkflowCheckpointsRequest(page_token=token)
        ),
        "checkpoints",
    )
    assert len(pages) > 1
    assert [c.run_id for page in pages for c in page] == [f"run-{n}" for n in range(RECORDS)]


async def test_a_page_of_large_agent_checkpoints_holds_fewer_and_continues(
    channel: grpc.aio.Channel,
) -> None:
    stub = checkpoints_pb2_grpc.CheckpointServiceStub(channel)
    saved = []
    for _ in range(RECORDS):
        checkpoint = checkpoints_pb2.AgentCheckpoint(
            agent_id="agent-1", agent_state=checkpoints_pb2.AGENT_STATE_ACTIVE, app_state=large()
        )
        response = await stub.PersistAgentCheckpoint(
            checkpoints_pb2.PersistAgentCheckpointRequest(checkpoint=checkpoint)
        )
        saved.append(response.checkpoint.checkpoint_id)
    pages = await every_page(
        lambda token: stub.ListAgentCheckpoints(
            checkpoints_pb2.ListAgentCheckpointsRequest(agent_id="agent-1", page_token=token)
        ),
        "checkpoints",
    )
    assert len(pages) > 1
    assert [c.checkpoint_id for page in pages for c in page] == saved[::-1]


async def test_a_page_of_every_agents_large_newest_checkpoint_holds_fewer_and_continues(
    channel: grpc.aio.Channel,
) -> None:
    stub = checkpoints_pb2_grpc.CheckpointServiceStub(channel)
    for n in range(RECORDS):
        checkpoint = checkpoints_pb2.AgentCheckpoint(
            agent_id=f"agent-{n:02}",
            agent_state=checkpoints_pb2.AGENT_STATE_ACTIVE,
            app_state=large(),
        )
        await stub.PersistAgentCheckpoint(
            checkpoints_pb2.PersistAgentCheckpointRequest(checkpoint=checkpoint)
        )
    pages = await every_page(
        lambda token: stub.ListAgents(checkpoints_pb2.ListAgentsRequest(page_token=token)),
        "checkpoints",
    )
    assert len(pages) > 1
    assert [c.agent_id for page in pages for c in page] == [f"agent-{n:02}" for n in range(RECORDS)]


# -- jobs: leases, watches, statistics -------------------------------------------------------


async def test_lease_leaves_jobs_that_do_not_fit_available(channel: grpc.aio.Channel) -> None:
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    for _ in range(2):
        await stub.EnqueueJobs(
            jobs_pb2.EnqueueJobsRequest(jobs=[job(large(200_000)) for _ in range(15)])
        )
    leased = await stub.LeaseJobs(jobs_pb2.LeaseJobsRequest(worker_id="w-1", max_jobs=60))
    assert 0 < len(leased.jobs) < 30
    assert records_size(leased, "jobs") <= PAGE_BUDGET_BYTES
    assert {(j.state, j.attempt) for j in leased.jobs} == {(RUNNING, 1)}
    left = [
        j
        for page in await every_page(
            lambda token: stub.ListJobs(
                jobs_pb2.ListJobsRequest(state=AVAILABLE, page_token=token)
            ),
            "jobs",
        )
        for j in page
    ]
    assert len(left) == 30 - len(leased.jobs)
    assert {(j.attempt, j.HasField("lease")) for j in left} == {(0, False)}


async def test_a_watch_batch_of_large_changes_holds_fewer_and_continues(
    channel: grpc.aio.Channel,
) -> None:
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    await stub.EnqueueJobs(jobs_pb2.EnqueueJobsRequest(jobs=[job() for _ in range(RECORDS)]))
    leased = await stub.LeaseJobs(jobs_pb2.LeaseJobsRequest(worker_id="w-1", max_jobs=RECORDS))
    for item in leased.jobs:
        await stub.CompleteJob(
            jobs_pb2.CompleteJobRequest(
                job_id=item.job_id, lease_id=item.lease.lease_id, result=large()
            )
        )
    watch = stub.WatchJobs(jobs_pb2.WatchJobsRequest(after_change_id=0))
    batches: list[list[jobs_pb2.JobChange]] = []
    completed = 0
    try:
        while completed < RECORDS:
            message = await asyncio.wait_for(watch.read(), 10)
            if message.HasField("changes"):
                assert records_size(message.changes, "changes") <= PAGE_BUDGET_BYTES
                batches.append(list(message.changes.changes))
                completed += sum(c.state == SUCCEEDED for c in message.changes.changes)
    finally:
        watch.cancel()
    assert len([b for b in batches if any(c.state == SUCCEEDED for c in b)]) > 1
    changes = [change for batch in batches for change in batch]
    assert [c.change_id for c in changes] == sorted(c.change_id for c in changes)


async def test_queue_statistics_page_through_every_queue_in_order(
    channel: grpc.aio.Channel,
) -> None:
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    queues = [f"queue-{n}" for n in range(5)]
    await stub.EnqueueJobs(jobs_pb2.EnqueueJobsRequest(jobs=[job(queue=q) for q in queues]))
    pages = await every_page(
        lambda token: stub.GetQueueStats(
            jobs_pb2.GetQueueStatsRequest(page_size=2, page_token=token)
        ),
        "queues",
    )
    assert [[stats.queue for stats in page] for page in pages] == [
        queues[0:2],
        queues[2:4],
        queues[4:],
    ]


async def test_the_client_gathers_the_statistics_of_every_queue(store_url: str) -> None:
    queues = [f"queue-{n:03d}" for n in range(120)]
    async with (
        running_app(store_url) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        stub = jobs_pb2_grpc.JobServiceStub(client.channel)
        await stub.EnqueueJobs(jobs_pb2.EnqueueJobsRequest(jobs=[job(queue=q) for q in queues]))
        stats = await client.jobs.stats()
    assert [s.queue for s in stats] == queues
    assert {c.count for s in stats for c in s.counts} == {1}


# -- helpers ------------------------------------------------------------------------------


def job(payload: struct_pb2.Struct | None = None, queue: str = "default") -> jobs_pb2.JobSpec:
    return jobs_pb2.JobSpec(kind="blob", queue=queue, payload=payload)


def workflow_checkpoint(run_id: str) -> checkpoints_pb2.SaveWorkflowCheckpointRequest:
    return checkpoints_pb2.SaveWorkflowCheckpointRequest(
        checkpoint=checkpoints_pb2.WorkflowCheckpoint(
            run_id=run_id, workflow_name="ingest", scope_snapshot=large()
        )
    )
