"""The job queue across replicas: two stores (or two servers) on one PostgreSQL schema."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from google.protobuf import struct_pb2

import statekeeper
from statekeeper.v1 import jobs_pb2
from statekeeper_server.errors import FailedPrecondition
from statekeeper_server.services import jobs as job_service
from statekeeper_server.stores import Store, open_store
from statekeeper_server.stores.jobs import (
    BUILTIN_QUEUE,
    UNFINISHED_STATES,
    ChangeFilter,
    Enqueued,
    JobFilter,
    NewJob,
    changes_key,
    queue_key,
)
from statekeeper_server.stores.postgres.jobs import APPEND_CHANGES, Scope, claim_query
from statekeeper_server.timestamps import now_us
from tests.harness import running_app
from tests.postgres_harness import open_engine

NS = "default"
QUEUE = "default"
LOW = jobs_pb2.JOB_PRIORITY_LOW
NORMAL = jobs_pb2.JOB_PRIORITY_NORMAL
HIGH = jobs_pb2.JOB_PRIORITY_HIGH
SCHEDULED = jobs_pb2.JOB_STATE_SCHEDULED
AVAILABLE = jobs_pb2.JOB_STATE_AVAILABLE
RUNNING = jobs_pb2.JOB_STATE_RUNNING
SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED
UNSPECIFIED = jobs_pb2.JOB_STATE_UNSPECIFIED
LONG_LEASE = 30_000_000
WAKE_TIMEOUT = 10.0
"""Seconds a test waits for a wake-up before failing (only reached when one is lost)."""


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[Store, Store]]:
    first = await open_store(postgres_url)
    second = await open_store(postgres_url)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


def spec(
    kind: str = "work",
    *,
    queue: str = QUEUE,
    priority: int = NORMAL,
    delay_us: int = 0,
    key: str = "",
) -> NewJob:
    return NewJob(
        queue=queue,
        kind=kind,
        payload=struct_pb2.Struct(),
        priority=priority,
        run_after_us=None,
        delay_us=delay_us,
        max_retries=3,
        idempotency_key=key,
        backoff_base_us=10_000,
        backoff_cap_us=10_000,
    )


async def enqueue(store: Store, *specs: NewJob) -> list[jobs_pb2.Job]:
    return [item.job for item in await store.jobs.enqueue(NS, specs)]


async def lease(store: Store, count: int = 1, *, worker: str = "w1") -> list[jobs_pb2.Job]:
    result = await store.jobs.lease(NS, QUEUE, [], worker, count, LONG_LEASE)
    return [item.job for item in result.jobs]


# -- claiming ----------------------------------------------------------------------------


async def test_eight_workers_over_two_replicas_complete_two_thousand_jobs_exactly_once(
    replicas: tuple[Store, Store],
) -> None:
    total = 2000
    for start in range(0, total, 500):
        await enqueue(replicas[start // 500 % 2], *(spec() for _ in range(500)))
    leases: Counter[str] = Counter()

    async def worker(store: Store, name: str) -> None:
        while leased := await lease(store, 25, worker=name):
            for job in leased:
                leases[job.job_id] += 1
                await store.jobs.complete(NS, job.job_id, job.lease.lease_id, struct_pb2.Struct())

    await asyncio.gather(*(worker(replicas[i % 2], f"worker-{i}") for i in range(8)))
    assert len(leases) == total
    assert set(leases.values()) == {1}
    [stats] = (await replicas[1].jobs.stats(NS, QUEUE, 10, "")).queues
    assert [(c.state, c.count) for c in stats.counts] == [(SUCCEEDED, total)]


async def test_priority_and_enqueue_order_hold_across_replicas(
    replicas: tuple[Store, Store],
) -> None:
    priorities = [LOW, HIGH, NORMAL]
    enqueued = [
        (await enqueue(replicas[n % 2], spec(priority=priorities[n % 3])))[0] for n in range(12)
    ]
    leased = [(await lease(replicas[n % 2]))[0] for n in range(12)]
    expected = sorted(enqueued, key=lambda job: -job.priority)  # stable: enqueue order kept
    assert [job.job_id for job in leased] == [job.job_id for job in expected]


async def test_a_job_delayed_through_one_replica_never_blocks_the_other(
    replicas: tuple[Store, Store],
) -> None:
    await enqueue(replicas[0], spec(priority=HIGH, delay_us=60_000_000))
    [runnable] = await enqueue(replicas[0], spec(priority=LOW))
    result = await replicas[1].jobs.lease(NS, QUEUE, [], "w1", 5, LONG_LEASE)
    assert [item.job.job_id for item in result.jobs] == [runnable.job_id]


async def test_claiming_is_an_index_scan_of_a_large_table(postgres_url: str) -> None:
    store = await open_store(postgres_url)
    try:
        for batch in range(5):
            await enqueue(
                store,
                *(spec(f"kind-{n % 3}", queue=f"queue-{n % 5}") for n in range(1000)),
                *(spec("statekeeper.append_event", queue=BUILTIN_QUEUE) for _ in range(batch)),
            )
    finally:
        await store.close()
    claims = {
        "jobs_available": [Scope(NS, "queue-3"), Scope(NS, "queue-3", ("kind-1",))],
        "jobs_builtin_available": [Scope(None, BUILTIN_QUEUE)],
    }
    async with open_engine(postgres_url) as engine:
        await engine.execute("ANALYZE jobs")
        for index, scopes in claims.items():
            for scope in scopes:
                sql, params = claim_query(scope, 25)
                plan = "\n".join(row[0] for row in await engine.fetch(f"EXPLAIN {sql}", *params))
                assert f"Index Scan using {index} on jobs" in plan
                assert "Seq Scan" not in plan
                # Only the claimed rows may be sorted (to count their bytes), never the table.
                assert "Sort" not in plan[plan.index("Limit") :]


# -- idempotency keys ----------------------------------------------------------------------


async def test_racing_enqueues_of_one_key_through_two_replicas_create_one_job(
    replicas: tuple[Store, Store],
) -> None:
    results = await asyncio.gather(
        *(replicas[n % 2].jobs.enqueue(NS, [spec(key="report-7")]) for n in range(20))
    )
    outcomes = [items[0] for items in results]
    [created] = [outcome for outcome in outcomes if outcome.created]
    assert {outcome.job.job_id for outcome in outcomes} == {created.job.job_id}


async def test_a_retry_racing_an_enqueue_of_its_key_leaves_one_holder(
    replicas: tuple[Store, Store],
) -> None:
    first, second = replicas
    for round_ in range(10):
        key = f"key-{round_}"
        [job] = await enqueue(first, spec(key=key))
        await first.jobs.cancel(NS, job.job_id)
        retried, enqueued = await asyncio.gather(
            first.jobs.retry(NS, job.job_id, 0),
            second.jobs.enqueue(NS, [spec(key=key)]),
            return_exceptions=True,
        )
        assert isinstance(enqueued, list)
        [outcome] = enqueued
        assert isinstance(outcome, Enqueued)
        if isinstance(retried, FailedPrecondition):
            assert retried.reason == "IDEMPOTENCY_KEY_IN_USE"
            assert outcome.created
        else:
            assert isinstance(retried, jobs_pb2.Job)
            assert (outcome.created, outcome.job.job_id) == (False, job.job_id)
    listed = await second.jobs.list(NS, JobFilter(), 100, "")
    holders = Counter(job.idempotency_key for job in listed.jobs if job.state in UNFINISHED_STATES)
    assert holders == {f"key-{round_}": 1 for round_ in range(10)}


# -- wake-ups and the change log ---------------------------------------------------------


async def test_an_enqueue_through_one_replica_wakes_a_lease_waiting_on_the_other(
    replicas: tuple[Store, Store],
) -> None:
    first, second = replicas
    woken = second.notifier.watch(queue_key(NS, QUEUE))
    assert await lease(second) == []
    [job] = await enqueue(first, spec())
    await asyncio.wait_for(woken.wait(), WAKE_TIMEOUT)
    [leased] = await lease(second)
    assert leased.job_id == job.job_id


async def test_the_change_log_read_through_one_replica_holds_the_other_s_transitions_in_order(
    replicas: tuple[Store, Store],
) -> None:
    first, second = replicas
    start = await second.jobs.change_position()
    woken = second.notifier.watch(changes_key(NS))
    [job] = await enqueue(first, spec())
    await asyncio.wait_for(woken.wait(), WAKE_TIMEOUT)
    [leased] = await lease(first)
    await first.jobs.fail(NS, job.job_id, leased.lease.lease_id, "boom", True, 0)
    [again] = await lease(second)
    await first.jobs.complete(NS, job.job_id, again.lease.lease_id, struct_pb2.Struct())
    page = await second.jobs.changes(NS, ChangeFilter(), start, 100)
    assert [(c.previous_state, c.state, c.attempt) for c in page.changes] == [
        (UNSPECIFIED, AVAILABLE, 0),
        (AVAILABLE, RUNNING, 1),
        (RUNNING, AVAILABLE, 1),
        (AVAILABLE, RUNNING, 2),
        (RUNNING, SUCCEEDED, 2),
    ]
    assert [c.change_id for c in page.changes] == list(range(start + 1, start + 6))
    assert page.through == await first.jobs.change_position()


async def test_a_follower_misses_no_change_while_both_replicas_write(
    replicas: tuple[Store, Store],
) -> None:
    start = await replicas[1].jobs.change_position()
    seen: list[int] = []
    final = asyncio.get_running_loop().create_future()

    async def follow() -> None:
        position = start
        while not final.done() or position < final.result():
            page = await replicas[1].jobs.changes(NS, ChangeFilter(), position, 7)
            seen.extend(change.change_id for change in page.changes)
            position = page.through

    async def write(store: Store, name: str) -> None:
        for size in (1, 5, 2, 9, 3):
            await enqueue(store, *(spec() for _ in range(size)))
            for job in await lease(store, 3, worker=name):
                await store.jobs.complete(NS, job.job_id, job.lease.lease_id, struct_pb2.Struct())

    follower = asyncio.ensure_future(follow())
    await asyncio.gather(*(write(replicas[n % 2], f"writer-{n}") for n in range(6)))
    final.set_result(await replicas[0].jobs.change_position())
    await follower
    assert seen == list(range(start + 1, final.result() + 1))


async def test_a_change_committed_late_is_never_passed_by_a_reader(
    replicas: tuple[Store, Store], postgres_url: str
) -> None:
    first, second = replicas
    [job] = await enqueue(first, spec())
    start = await second.jobs.change_position()
    async with open_engine(postgres_url) as engine, engine.transaction() as slow:
        # A writer that took the next change id and has not committed yet.
        columns = [NS, job.job_id, QUEUE, job.kind, AVAILABLE, RUNNING, 1, now_us()]
        await slow.conn.execute(APPEND_CHANGES, *([value] for value in columns), *[[None]] * 4)
        later = asyncio.ensure_future(enqueue(second, spec()))
        done, _ = await asyncio.wait({later}, timeout=0.3)
        assert not done
        page = await second.jobs.changes(NS, ChangeFilter(), start, 100)
        assert (page.changes, page.through) == ([], start)
    [enqueued] = await later
    page = await second.jobs.changes(NS, ChangeFilter(), start, 100)
    assert [(c.change_id, c.job_id) for c in page.changes] == [
        (start + 1, job.job_id),
        (start + 2, enqueued.job_id),
    ]


# -- servers ---------------------------------------------------------------------------------


@pytest.fixture
async def clients(
    postgres_url: str,
) -> AsyncIterator[tuple[statekeeper.AsyncClient, statekeeper.AsyncClient]]:
    """Clients of two servers on one schema that re-read only when woken or by the
    periodic safety re-read (no idle heartbeats, no sweeps while a test runs)."""
    async with contextlib.AsyncExitStack() as stack:
        opened = []
        for _ in range(2):
            app = await stack.enter_async_context(
                running_app(postgres_url, heartbeat_interval=60, job_sweep_interval=60)
            )
            client = statekeeper.AsyncClient(f"127.0.0.1:{app.port}")
            opened.append(await stack.enter_async_context(client))
        yield opened[0], opened[1]


async def test_a_long_poll_on_one_server_wakes_on_an_enqueue_through_the_other(
    clients: tuple[statekeeper.AsyncClient, statekeeper.AsyncClient],
) -> None:
    first, second = clients
    poll = asyncio.ensure_future(second.jobs.lease(worker_id="w1", wait=30))
    await asyncio.sleep(0.1)
    assert not poll.done()
    job = await first.jobs.enqueue("k")
    [leased] = await asyncio.wait_for(poll, WAKE_TIMEOUT)
    assert leased.job_id == job.job_id


async def test_a_watch_on_one_server_sees_transitions_made_through_the_other(
    clients: tuple[statekeeper.AsyncClient, statekeeper.AsyncClient],
) -> None:
    first, second = clients
    job = await first.jobs.enqueue("k")

    async def transitions() -> list[tuple[int, int]]:
        seen: list[tuple[int, int]] = []
        async for change in second.jobs.watch(job_ids=[job.job_id], after_change_id=0):
            seen.append((change.previous_state, change.state))
            if change.state == SUCCEEDED:
                return seen
        raise AssertionError("the stream ended")

    watching = asyncio.ensure_future(transitions())
    [leased] = await first.jobs.lease(worker_id="w1")
    await first.jobs.complete(job.job_id, leased.lease.lease_id)
    assert await asyncio.wait_for(watching, WAKE_TIMEOUT) == [
        (UNSPECIFIED, AVAILABLE),
        (AVAILABLE, RUNNING),
        (RUNNING, SUCCEEDED),
    ]


async def test_a_long_poll_re_reads_the_store_without_a_notification(
    clients: tuple[statekeeper.AsyncClient, statekeeper.AsyncClient],
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(job_service, "REREAD_INTERVAL", 0.1)
    first, second = clients
    job = await first.jobs.enqueue("k", delay=60)
    poll = asyncio.ensure_future(second.jobs.lease(worker_id="w1", wait=30))
    await asyncio.sleep(0.2)
    async with open_engine(postgres_url) as engine:
        # Due now, but nothing notifies: as if the wake-up had been lost.
        await engine.execute("UPDATE jobs SET run_after = 0 WHERE job_id = $1", job.job_id)
    [leased] = await asyncio.wait_for(poll, WAKE_TIMEOUT)
    assert leased.job_id == job.job_id


async def test_a_watch_re_reads_the_store_without_a_notification(
    clients: tuple[statekeeper.AsyncClient, statekeeper.AsyncClient],
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(job_service, "REREAD_INTERVAL", 0.1)
    first, second = clients
    job = await first.jobs.enqueue("k")
    changes = aiter(second.jobs.watch(job_ids=[job.job_id], after_change_id=0))
    assert (await anext(changes)).state == AVAILABLE
    async with open_engine(postgres_url) as engine, engine.transaction() as tx:
        # A change committed with no NOTIFY: as if the wake-up had been lost.
        columns = [NS, job.job_id, QUEUE, job.kind, AVAILABLE, SCHEDULED, 0, now_us()]
        await tx.conn.execute(APPEND_CHANGES, *([value] for value in columns), *[[None]] * 4)
    change = await asyncio.wait_for(anext(changes), WAKE_TIMEOUT)
    assert (change.job_id, change.previous_state, change.state) == (
        job.job_id,
        AVAILABLE,
        SCHEDULED,
    )
