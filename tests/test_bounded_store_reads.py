"""Every store reads no more than a page: byte budgets of reads and leases, on every backend.

A read fetches rows only until its byte budget is reached (at most one row
beyond it), so the memory a listing takes is a small multiple of the page
it returns, however many large records match. Leasing decides inside its
transaction which jobs fit the response; the others are not touched.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Awaitable, Callable

import pytest
from google.protobuf import struct_pb2

from statekeeper.v1 import checkpoints_pb2, events_pb2, jobs_pb2, snapshots_pb2
from statekeeper_server.limits import PAGE_BUDGET_BYTES
from statekeeper_server.stores import Store
from statekeeper_server.stores.budget import framed_size
from statekeeper_server.stores.checkpoints import RetentionOverride, RetentionPolicy, WorkflowFilter
from statekeeper_server.stores.event_wire import replay_batch_message
from statekeeper_server.stores.events import EventPage, RunState
from statekeeper_server.stores.jobs import BUILTIN_QUEUE, ChangeFilter, JobFilter, NewJob
from statekeeper_server.stores.recent_commits import RecentCommits
from statekeeper_server.stores.snapshots import SnapshotFilter
from statekeeper_server.timestamps import now_us

NS = "default"
LARGE = 1_000_000
"""Characters of the text that makes a record large (about 1 MB)."""
MANY = 16
"""Large records stored: four times what a page holds."""
PEAK_LIMIT = 3 * PAGE_BUDGET_BYTES
"""Most memory a listing of large records may take: its page, the one row past it, and
the driver's buffers."""
AVAILABLE = jobs_pb2.JOB_STATE_AVAILABLE
RUNNING = jobs_pb2.JOB_STATE_RUNNING
LONG_LEASE = 30_000_000


def large(size: int = LARGE) -> struct_pb2.Struct:
    data = struct_pb2.Struct()
    data.update({"text": "x" * size})
    return data


def job(payload: struct_pb2.Struct | None = None, queue: str = "default") -> NewJob:
    return NewJob(
        queue=queue,
        kind="blob",
        payload=payload or struct_pb2.Struct(),
        priority=jobs_pb2.JOB_PRIORITY_NORMAL,
        run_after_us=None,
        delay_us=0,
        max_retries=3,
        idempotency_key="",
        backoff_base_us=1_000_000,
        backoff_cap_us=1_000_000,
    )


def custom(size: int) -> events_pb2.EventInput:
    return events_pb2.EventInput(
        event=events_pb2.AgentEvent(custom=events_pb2.CustomEvent(type="blob", data=large(size)))
    )


async def peak_bytes_of(read: Callable[[], Awaitable[int]]) -> tuple[int, int]:
    """What `read` returned (a count of records), and the most memory it held at once."""
    tracemalloc.start()
    try:
        count = await read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return count, peak


# -- reads of large records -----------------------------------------------------------------


async def fill_snapshots(store: Store) -> Callable[[], Awaitable[int]]:
    for n in range(MANY):
        snapshot = snapshots_pb2.Snapshot(
            run_id=f"run-{n:02d}", session_id="s", status=snapshots_pb2.RUN_STATUS_RUNNING
        )
        snapshot.request.tools.add(name="tool").parameters.CopyFrom(large())
        await store.snapshots.save(NS, snapshot, None)

    async def read() -> int:
        return len((await store.snapshots.list(NS, SnapshotFilter(), 1000, "")).snapshots)

    return read


async def fill_events(store: Store) -> Callable[[], Awaitable[int]]:
    for _ in range(MANY):
        await store.events.append(NS, "run-1", [custom(LARGE)], None)

    async def read() -> int:
        return len((await store.events.read(NS, "run-1", 0, 1000)).envelopes)

    return read


async def fill_jobs(store: Store) -> Callable[[], Awaitable[int]]:
    for _ in range(MANY):
        await store.jobs.enqueue(NS, [job(large())])

    async def read() -> int:
        return len((await store.jobs.list(NS, JobFilter(), 1000, "")).jobs)

    return read


async def fill_job_changes(store: Store) -> Callable[[], Awaitable[int]]:
    await store.jobs.enqueue(NS, [job() for _ in range(MANY)])
    leased = await store.jobs.lease(NS, "default", [], "w-1", MANY, LONG_LEASE)
    start = await store.jobs.change_position()
    for item in leased.jobs:
        await store.jobs.complete(NS, item.job.job_id, item.job.lease.lease_id, large())

    async def read() -> int:
        return len((await store.jobs.changes(NS, ChangeFilter(), start, 1000)).changes)

    return read


async def save_workflow(store: Store, run_id: str) -> None:
    await store.checkpoints.save_workflow(
        NS,
        checkpoints_pb2.WorkflowCheckpoint(
            run_id=run_id, workflow_name="wf", scope_snapshot=large()
        ),
        expected_parent=None,
        retention=RetentionOverride(),
        defaults=RetentionPolicy(),
        now_us=now_us(),
    )


async def fill_workflow_history(store: Store) -> Callable[[], Awaitable[int]]:
    for _ in range(MANY):
        await save_workflow(store, "run-1")

    async def read() -> int:
        page = await store.checkpoints.list_workflow_history(
            NS, "run-1", WorkflowFilter(), before="", page_size=1000, page_token=""
        )
        return len(page.checkpoints)

    return read


async def fill_latest_workflows(store: Store) -> Callable[[], Awaitable[int]]:
    for n in range(MANY):
        await save_workflow(store, f"run-{n:02d}")

    async def read() -> int:
        page = await store.checkpoints.list_latest_workflows(
            NS, WorkflowFilter(), page_size=1000, page_token=""
        )
        return len(page.checkpoints)

    return read


async def fill_agent_history(store: Store) -> Callable[[], Awaitable[int]]:
    for _ in range(MANY):
        await store.checkpoints.persist_agent(
            NS,
            checkpoints_pb2.AgentCheckpoint(
                agent_id="agent-1",
                agent_state=checkpoints_pb2.AGENT_STATE_ACTIVE,
                app_state=large(),
            ),
            retention=RetentionOverride(),
            defaults=RetentionPolicy(),
            now_us=now_us(),
        )

    async def read() -> int:
        page = await store.checkpoints.list_agent_history(
            NS, "agent-1", before="", page_size=1000, page_token=""
        )
        return len(page.checkpoints)

    return read


async def fill_latest_agents(store: Store) -> Callable[[], Awaitable[int]]:
    for n in range(MANY):
        await store.checkpoints.persist_agent(
            NS,
            checkpoints_pb2.AgentCheckpoint(
                agent_id=f"agent-{n:02d}",
                agent_state=checkpoints_pb2.AGENT_STATE_ACTIVE,
                app_state=large(),
            ),
            retention=RetentionOverride(),
            defaults=RetentionPolicy(),
            now_us=now_us(),
        )

    async def read() -> int:
        page = await store.checkpoints.list_latest_agents(NS, "", page_size=1000, page_token="")
        return len(page.checkpoints)

    return read


LISTINGS = {
    "snapshots": fill_snapshots,
    "events": fill_events,
    "jobs": fill_jobs,
    "job changes": fill_job_changes,
    "workflow history": fill_workflow_history,
    "newest workflow of every run": fill_latest_workflows,
    "agent history": fill_agent_history,
    "newest checkpoint of every agent": fill_latest_agents,
}


@pytest.mark.parametrize("listing", sorted(LISTINGS))
async def test_a_listing_of_large_records_holds_about_one_page_in_memory(
    store: Store, listing: str
) -> None:
    read = await LISTINGS[listing](store)
    count, peak = await peak_bytes_of(read)
    assert 0 < count < MANY
    assert peak <= PEAK_LIMIT


# -- the byte budget of event reads -----------------------------------------------------------


async def test_a_read_of_events_holds_envelopes_up_to_its_byte_budget(store: Store) -> None:
    envelopes = await store.events.append(NS, "run-1", [custom(10_000) for _ in range(10)], None)
    two = framed_size(len(envelopes[0])) + framed_size(len(envelopes[1]))
    page = await store.events.read(NS, "run-1", 0, 100, two)
    assert (page.envelopes, page.through_seq) == (envelopes[:2], 2)
    page = await store.events.read(NS, "run-1", 2, 100, two + framed_size(len(envelopes[2])) - 1)
    assert (page.envelopes, page.through_seq) == (envelopes[2:4], 4)


async def test_a_read_of_events_holds_at_least_one_envelope_whatever_its_budget(
    store: Store,
) -> None:
    envelopes = await store.events.append(NS, "run-1", [custom(10_000) for _ in range(3)], None)
    page = await store.events.read(NS, "run-1", 0, 100, 1)
    assert (page.envelopes, page.through_seq) == (envelopes[:1], 1)


async def test_a_read_of_events_holds_at_most_its_count_of_envelopes(store: Store) -> None:
    envelopes = await store.events.append(NS, "run-1", [custom(10) for _ in range(5)], None)
    page = await store.events.read(NS, "run-1", 1, 2, PAGE_BUDGET_BYTES)
    assert (page.envelopes, page.through_seq) == (envelopes[1:3], 3)


def test_recent_commits_serve_a_page_within_its_byte_budget() -> None:
    recent = RecentCommits()
    run = RunState("run-1", "s", 1, 4, False, 1, 1)
    envelopes = [b"a" * 1000, b"b" * 1000, b"c" * 1000, b"d" * 1000]
    recent.publish("key", 0, run, envelopes)
    page = recent.page_after("key", 1, 100, 2 * framed_size(1000))
    assert page == EventPage(run, envelopes[1:3], 3)
    assert recent.page_after("key", 1, 100, 1) == EventPage(run, envelopes[1:2], 2)
    assert recent.page_after("key", 1, 1, PAGE_BUDGET_BYTES) == EventPage(run, envelopes[1:2], 2)


def test_a_replay_batch_of_a_page_is_its_envelopes_with_their_framing() -> None:
    envelopes = [b"x" * 100, b"y" * 200_000]
    message = replay_batch_message(envelopes)
    content = sum(framed_size(len(envelope)) for envelope in envelopes)
    assert len(message) == framed_size(content)


# -- leases -------------------------------------------------------------------------------


async def available_jobs(store: Store) -> list[jobs_pb2.Job]:
    jobs: list[jobs_pb2.Job] = []
    token = None
    while token != "":
        page = await store.jobs.list(NS, JobFilter(state=AVAILABLE), 1000, token or "")
        jobs += page.jobs
        token = page.next_page_token
    return jobs


async def test_lease_leaves_jobs_that_do_not_fit_available(store: Store) -> None:
    for _ in range(8):
        await store.jobs.enqueue(NS, [job(large())])
    leased = await store.jobs.lease(NS, "default", [], "w-1", 8, LONG_LEASE)
    batch = [item.job for item in leased.jobs]
    assert 0 < len(batch) < 8
    assert sum(framed_size(j.ByteSize()) for j in batch) <= PAGE_BUDGET_BYTES
    assert {(j.state, j.attempt) for j in batch} == {(RUNNING, 1)}
    left = await available_jobs(store)
    assert len(left) == 8 - len(batch)
    assert {(j.attempt, j.HasField("lease")) for j in left} == {(0, False)}
    again = await store.jobs.lease(NS, "default", [], "w-2", 8, LONG_LEASE)
    assert {item.job.job_id for item in again.jobs} <= {j.job_id for j in left}


async def test_the_builtin_lease_leaves_jobs_that_do_not_fit_available(store: Store) -> None:
    builtin = NewJob(**{**job(large()).__dict__, "queue": BUILTIN_QUEUE})
    for _ in range(8):
        await store.jobs.enqueue(NS, [builtin])
    leased = await store.jobs.lease_builtin("server", 32, LONG_LEASE)
    batch = [item.job for item in leased.jobs]
    assert 0 < len(batch) < 8
    assert sum(framed_size(j.ByteSize()) for j in batch) <= PAGE_BUDGET_BYTES
    assert len(await available_jobs(store)) == 8 - len(batch)
