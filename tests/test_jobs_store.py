"""Conformance of every JobStore backend: order, leases, retries, cancellation, changes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from google.protobuf import struct_pb2

from statekeeper.v1 import jobs_pb2
from statekeeper_server.errors import FailedPrecondition, NotFound, OutOfRange, TooLarge
from statekeeper_server.limits import MAX_JOB_ERROR_BYTES
from statekeeper_server.stores import Store
from statekeeper_server.stores.jobs import (
    BUILTIN_QUEUE,
    TIMERS_KEY,
    ChangeFilter,
    JobFilter,
    NewJob,
    changes_key,
    queue_key,
)
from statekeeper_server.timestamps import from_timestamp, now_us

NS = "default"
QUEUE = "default"
LOW = jobs_pb2.JOB_PRIORITY_LOW
NORMAL = jobs_pb2.JOB_PRIORITY_NORMAL
HIGH = jobs_pb2.JOB_PRIORITY_HIGH
CRITICAL = jobs_pb2.JOB_PRIORITY_CRITICAL
SCHEDULED = jobs_pb2.JOB_STATE_SCHEDULED
AVAILABLE = jobs_pb2.JOB_STATE_AVAILABLE
RUNNING = jobs_pb2.JOB_STATE_RUNNING
SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED
DEAD = jobs_pb2.JOB_STATE_DEAD
CANCELLED = jobs_pb2.JOB_STATE_CANCELLED
LONG_LEASE = 30_000_000
SHORT_LEASE = 40_000
HEARTBEAT_LEASE = 300_000
"""A lease short enough to outlive in a test, long enough for a heartbeat on any backend."""


def spec(
    kind: str = "work",
    *,
    queue: str = QUEUE,
    priority: int = NORMAL,
    delay_us: int = 0,
    max_retries: int = 3,
    key: str = "",
    base_us: int = 20_000,
    cap_us: int = 1_000_000,
    payload: dict[str, object] | None = None,
) -> NewJob:
    data = struct_pb2.Struct()
    data.update(payload or {})
    return NewJob(
        queue=queue,
        kind=kind,
        payload=data,
        priority=priority,
        run_after_us=None,
        delay_us=delay_us,
        max_retries=max_retries,
        idempotency_key=key,
        backoff_base_us=base_us,
        backoff_cap_us=cap_us,
    )


async def enqueue(store: Store, *specs: NewJob, namespace: str = NS) -> list[jobs_pb2.Job]:
    return [item.job for item in await store.jobs.enqueue(namespace, specs)]


async def lease(
    store: Store,
    count: int = 1,
    *,
    lease_us: int = LONG_LEASE,
    worker: str = "w1",
    kinds: Sequence[str] = (),
    queue: str = QUEUE,
    namespace: str = NS,
) -> list[jobs_pb2.Job]:
    result = await store.jobs.lease(namespace, queue, kinds, worker, count, lease_us)
    return [item.job for item in result.jobs]


async def sleep_past(micros: int) -> None:
    """Sleep until the wall clock has passed `micros`."""
    await asyncio.sleep(max(0, micros - now_us()) / 1_000_000 + 0.002)


async def expire(job: jobs_pb2.Job) -> None:
    await sleep_past(from_timestamp(job.lease.expire_time))


# -- order --------------------------------------------------------------------------


async def test_jobs_are_leased_highest_priority_first(store: Store) -> None:
    await enqueue(store, spec(priority=LOW), spec(priority=NORMAL), spec(priority=CRITICAL))
    await enqueue(store, spec(priority=HIGH))
    leased = [(await lease(store))[0].priority for _ in range(4)]
    assert leased == [CRITICAL, HIGH, NORMAL, LOW]


async def test_jobs_of_one_priority_are_leased_in_enqueue_order(store: Store) -> None:
    first = await enqueue(store, *(spec(payload={"n": n}) for n in range(10)))
    second = await enqueue(store, *(spec(payload={"n": n}) for n in range(10, 20)))
    leased = await lease(store, 15) + [(await lease(store))[0] for _ in range(5)]
    assert [job.job_id for job in leased] == [job.job_id for job in first + second]


async def test_a_delayed_critical_job_does_not_block_a_runnable_low_one(store: Store) -> None:
    [critical] = await enqueue(store, spec(priority=CRITICAL, delay_us=60_000_000))
    [low] = await enqueue(store, spec(priority=LOW))
    leased = await lease(store, 2)
    assert [job.job_id for job in leased] == [low.job_id]
    assert (await store.jobs.get(NS, critical.job_id)).state == SCHEDULED


async def test_a_delayed_job_is_leased_once_its_run_after_has_passed(store: Store) -> None:
    [job] = await enqueue(store, spec(delay_us=300_000))
    result = await store.jobs.lease(NS, QUEUE, [], "w1", 1, LONG_LEASE)
    assert result.jobs == []
    assert result.next_due_us == from_timestamp(job.run_after)
    assert (await store.jobs.get(NS, job.job_id)).state == SCHEDULED
    await sleep_past(from_timestamp(job.run_after))
    assert (await store.jobs.get(NS, job.job_id)).state == AVAILABLE
    [leased] = await lease(store)
    assert (leased.job_id, leased.state, leased.attempt) == (job.job_id, RUNNING, 1)


async def test_concurrent_leases_never_hand_out_a_job_twice(store: Store) -> None:
    jobs = await enqueue(store, *(spec() for _ in range(60)))
    batches = await asyncio.gather(*(lease(store, 4, worker=f"w{i}") for i in range(20)))
    leased = [job.job_id for batch in batches for job in batch]
    assert sorted(leased) == sorted(job.job_id for job in jobs)


async def test_leases_can_be_limited_to_kinds(store: Store) -> None:
    await enqueue(store, spec("a", priority=HIGH), spec("b"), spec("c"))
    leased = await lease(store, 5, kinds=["b", "c"])
    assert [job.kind for job in leased] == ["b", "c"]


async def test_namespaces_and_queues_do_not_share_jobs(store: Store) -> None:
    await enqueue(store, spec(queue="other"))
    await enqueue(store, spec(), namespace="tenant-b")
    assert await lease(store, 5) == []
    assert len(await lease(store, 5, queue="other")) == 1
    assert len(await lease(store, 5, namespace="tenant-b")) == 1


# -- leases -------------------------------------------------------------------------


async def test_an_expired_lease_puts_the_job_back_with_the_next_attempt(store: Store) -> None:
    [job] = await enqueue(store, spec())
    [first] = await lease(store, lease_us=SHORT_LEASE, worker="crashed")
    await expire(first)
    [again] = await lease(store, worker="w2")
    assert (again.job_id, again.attempt, again.lease.worker_id) == (job.job_id, 2, "w2")
    assert [(e.attempt, e.message, e.worker_id) for e in again.errors] == [
        (1, "lease expired", "crashed")
    ]


async def test_an_expired_lease_on_the_last_attempt_makes_the_job_dead(store: Store) -> None:
    [job] = await enqueue(store, spec(max_retries=0))
    [first] = await lease(store, lease_us=SHORT_LEASE)
    await expire(first)
    dead = await store.jobs.get(NS, job.job_id)
    assert (dead.state, dead.errors[0].message) == (DEAD, "lease expired")
    assert dead.HasField("finish_time")


async def test_a_stale_lease_can_neither_complete_fail_nor_heartbeat(store: Store) -> None:
    await enqueue(store, spec())
    [old] = await lease(store, lease_us=SHORT_LEASE)
    await expire(old)
    [current] = await lease(store, worker="w2")
    stale = old.lease.lease_id
    calls = [
        store.jobs.complete(NS, old.job_id, stale, struct_pb2.Struct()),
        store.jobs.fail(NS, old.job_id, stale, "late", True, None),
        store.jobs.heartbeat(NS, old.job_id, stale, LONG_LEASE),
    ]
    for call in calls:
        with pytest.raises(FailedPrecondition) as caught:
            await call
        assert caught.value.reason == "LEASE_STALE"
        assert caught.value.metadata["state"] == "RUNNING"
    unchanged = await store.jobs.get(NS, old.job_id)
    assert unchanged.lease == current.lease
    assert (unchanged.state, unchanged.attempt, len(unchanged.errors)) == (RUNNING, 2, 1)


async def test_a_lease_past_its_expiry_cannot_complete_the_job(store: Store) -> None:
    await enqueue(store, spec())
    [job] = await lease(store, lease_us=SHORT_LEASE)
    await expire(job)
    with pytest.raises(FailedPrecondition, match="expired"):
        await store.jobs.complete(NS, job.job_id, job.lease.lease_id, struct_pb2.Struct())
    back = await store.jobs.get(NS, job.job_id)
    assert (back.state, back.attempt, back.HasField("lease")) == (AVAILABLE, 1, False)


async def test_a_heartbeat_extends_the_lease(store: Store) -> None:
    await enqueue(store, spec())
    [job] = await lease(store, lease_us=HEARTBEAT_LEASE)
    beat = await store.jobs.heartbeat(NS, job.job_id, job.lease.lease_id, LONG_LEASE)
    assert not beat.cancelled
    assert from_timestamp(beat.lease.expire_time) > from_timestamp(job.lease.expire_time)
    await expire(job)
    done = await store.jobs.complete(NS, job.job_id, job.lease.lease_id, struct_pb2.Struct())
    assert done.state == SUCCEEDED


async def test_completion_stores_the_result_and_may_be_repeated_with_its_lease(
    store: Store,
) -> None:
    await enqueue(store, spec())
    [job] = await lease(store)
    result = struct_pb2.Struct()
    result.update({"answer": 42})
    done = await store.jobs.complete(NS, job.job_id, job.lease.lease_id, result)
    again = await store.jobs.complete(NS, job.job_id, job.lease.lease_id, struct_pb2.Struct())
    assert (done.state, done.result["answer"], done.HasField("lease")) == (SUCCEEDED, 42, False)
    assert again == done
    with pytest.raises(FailedPrecondition):
        await store.jobs.fail(NS, job.job_id, job.lease.lease_id, "late", True, None)


async def test_operations_on_an_unknown_job_are_not_found(store: Store) -> None:
    with pytest.raises(NotFound) as caught:
        await store.jobs.get(NS, "missing")
    assert caught.value.reason == "JOB_NOT_FOUND"
    with pytest.raises(NotFound):
        await store.jobs.complete(NS, "missing", "lease", struct_pb2.Struct())


# -- retries --------------------------------------------------------------------------


async def test_retryable_failures_back_off_longer_each_time_and_end_dead(store: Store) -> None:
    [job] = await enqueue(store, spec(max_retries=3, base_us=20_000, cap_us=1_000_000))
    delays = []
    for attempt in range(1, 5):
        await sleep_past(from_timestamp((await store.jobs.get(NS, job.job_id)).run_after))
        [leased] = await lease(store)
        assert leased.attempt == attempt
        failed = await store.jobs.fail(
            NS, job.job_id, leased.lease.lease_id, f"e{attempt}", True, None
        )
        if attempt < 4:
            assert failed.state == SCHEDULED
            step = 20_000 * 2 ** (attempt - 1)
            delay = from_timestamp(failed.run_after) - from_timestamp(failed.errors[-1].fail_time)
            assert step // 2 <= delay <= step
            delays.append(delay)
    assert delays == sorted(delays)
    assert failed.state == DEAD
    assert [(e.attempt, e.message) for e in failed.errors] == [
        (1, "e1"),
        (2, "e2"),
        (3, "e3"),
        (4, "e4"),
    ]


async def test_a_non_retryable_failure_makes_the_job_dead_at_once(store: Store) -> None:
    await enqueue(store, spec(max_retries=5))
    [job] = await lease(store)
    dead = await store.jobs.fail(NS, job.job_id, job.lease.lease_id, "bad input", False, None)
    assert (dead.state, dead.attempt, dead.errors[0].message) == (DEAD, 1, "bad input")


async def test_a_retry_delay_replaces_the_backoff(store: Store) -> None:
    await enqueue(store, spec())
    [job] = await lease(store)
    failed = await store.jobs.fail(
        NS, job.job_id, job.lease.lease_id, "rate limited", True, 5_000_000
    )
    assert failed.state == SCHEDULED
    assert (
        from_timestamp(failed.run_after) == from_timestamp(failed.errors[0].fail_time) + 5_000_000
    )


async def test_retry_puts_a_dead_job_back_with_a_fresh_budget(store: Store) -> None:
    await enqueue(store, spec(max_retries=0))
    [job] = await lease(store)
    await store.jobs.fail(NS, job.job_id, job.lease.lease_id, "boom", True, None)
    revived = await store.jobs.retry(NS, job.job_id, 0)
    assert (revived.state, revived.attempt, len(revived.errors)) == (AVAILABLE, 0, 1)
    assert not revived.HasField("finish_time")
    [again] = await lease(store)
    assert (again.job_id, again.attempt) == (job.job_id, 1)


async def test_retry_refuses_jobs_that_are_not_dead_or_cancelled(store: Store) -> None:
    [job] = await enqueue(store, spec())
    with pytest.raises(FailedPrecondition) as caught:
        await store.jobs.retry(NS, job.job_id, 0)
    assert (caught.value.reason, caught.value.metadata["state"]) == (
        "JOB_NOT_RETRYABLE",
        "AVAILABLE",
    )


# -- cancellation ---------------------------------------------------------------------


async def test_a_cancelled_available_job_is_never_leased(store: Store) -> None:
    [job] = await enqueue(store, spec())
    cancelled = await store.jobs.cancel(NS, job.job_id)
    assert cancelled.state == CANCELLED
    assert await lease(store) == []
    assert await store.jobs.cancel(NS, job.job_id) == cancelled


async def test_cancelling_a_running_job_is_seen_at_heartbeat_and_refuses_completion(
    store: Store,
) -> None:
    await enqueue(store, spec())
    [job] = await lease(store)
    await store.jobs.cancel(NS, job.job_id)
    beat = await store.jobs.heartbeat(NS, job.job_id, job.lease.lease_id, LONG_LEASE)
    assert beat.cancelled
    with pytest.raises(FailedPrecondition) as caught:
        await store.jobs.complete(NS, job.job_id, job.lease.lease_id, struct_pb2.Struct())
    assert (caught.value.reason, caught.value.metadata["state"]) == ("LEASE_STALE", "CANCELLED")
    assert (await store.jobs.get(NS, job.job_id)).state == CANCELLED


async def test_a_finished_job_cannot_be_cancelled(store: Store) -> None:
    await enqueue(store, spec())
    [job] = await lease(store)
    await store.jobs.complete(NS, job.job_id, job.lease.lease_id, struct_pb2.Struct())
    with pytest.raises(FailedPrecondition) as caught:
        await store.jobs.cancel(NS, job.job_id)
    assert caught.value.reason == "JOB_FINISHED"


async def test_a_cancelled_job_can_be_retried(store: Store) -> None:
    [job] = await enqueue(store, spec(delay_us=60_000_000))
    await store.jobs.cancel(NS, job.job_id)
    revived = await store.jobs.retry(NS, job.job_id, 0)
    assert revived.state == AVAILABLE


# -- idempotent enqueue ------------------------------------------------------------------


async def test_an_idempotency_key_returns_the_unfinished_job(store: Store) -> None:
    [first] = await store.jobs.enqueue(NS, [spec(key="order-7")])
    [second] = await store.jobs.enqueue(NS, [spec("other", key="order-7")])
    assert (first.created, second.created) == (True, False)
    assert second.job == first.job
    [job] = await lease(store)
    [while_running] = await store.jobs.enqueue(NS, [spec(key="order-7")])
    assert while_running.job.job_id == job.job_id
    await store.jobs.complete(NS, job.job_id, job.lease.lease_id, struct_pb2.Struct())
    [after] = await store.jobs.enqueue(NS, [spec(key="order-7")])
    assert after.created
    assert after.job.job_id != job.job_id


async def test_a_key_repeated_in_one_batch_resolves_to_the_first_job(store: Store) -> None:
    results = await store.jobs.enqueue(NS, [spec(key="k"), spec(), spec(key="k")])
    assert [item.created for item in results] == [True, True, False]
    assert results[2].job.job_id == results[0].job.job_id


async def test_keys_and_failure_messages_keep_every_character(store: Store) -> None:
    key, error = "nul\x00key é", "failed:\x00 with NUL ✗"
    [job] = await enqueue(store, spec(key=key))
    [again] = await store.jobs.enqueue(NS, [spec(key=key)])
    assert (again.created, again.job.job_id, again.job.idempotency_key) == (False, job.job_id, key)
    start = await store.jobs.change_position()
    [leased] = await lease(store)
    await store.jobs.fail(NS, job.job_id, leased.lease.lease_id, error, False, None)
    assert [e.message for e in (await store.jobs.get(NS, job.job_id)).errors] == [error]
    page = await store.jobs.changes(NS, ChangeFilter(job_ids=(job.job_id,)), start, 10)
    assert [change.error for change in page.changes] == ["", error]


async def test_a_failure_message_is_cut_to_its_byte_limit_between_characters(
    store: Store,
) -> None:
    [job] = await enqueue(store, spec())
    start = await store.jobs.change_position()
    [leased] = await lease(store)
    await store.jobs.fail(NS, job.job_id, leased.lease.lease_id, "é" * 4000, False, None)
    kept = "é" * (MAX_JOB_ERROR_BYTES // 2)
    assert [e.message for e in (await store.jobs.get(NS, job.job_id)).errors] == [kept]
    page = await store.jobs.changes(NS, ChangeFilter(job_ids=(job.job_id,)), start, 10)
    assert [change.error for change in page.changes] == ["", kept]


async def test_an_enqueue_whose_answer_would_not_fit_in_a_response_stores_nothing(
    store: Store,
) -> None:
    big = spec(key="big", payload={"blob": "x" * 1_000_000})
    await enqueue(store, big)
    repeats = [spec(), *[spec(key="big") for _ in range(5)]]
    with pytest.raises(TooLarge) as caught:
        await store.jobs.enqueue(NS, repeats)
    assert caught.value.reason == "BATCH_TOO_LARGE"
    listed = await store.jobs.list(NS, JobFilter(), 100, "")
    assert len(listed.jobs) == 1


async def test_keys_are_scoped_to_the_namespace(store: Store) -> None:
    [a] = await store.jobs.enqueue(NS, [spec(key="k")])
    [b] = await store.jobs.enqueue("tenant-b", [spec(key="k")])
    assert b.created
    assert b.job.job_id != a.job.job_id


async def test_retry_refuses_a_job_whose_key_another_job_now_holds(store: Store) -> None:
    [job] = await enqueue(store, spec(key="k"))
    await store.jobs.cancel(NS, job.job_id)
    [holder] = await enqueue(store, spec(key="k"))
    with pytest.raises(FailedPrecondition) as caught:
        await store.jobs.retry(NS, job.job_id, 0)
    assert caught.value.reason == "IDEMPOTENCY_KEY_IN_USE"
    assert caught.value.metadata["holder_job_id"] == holder.job_id


# -- listing and statistics --------------------------------------------------------------


async def test_list_pages_in_enqueue_order_with_filters(store: Store) -> None:
    jobs = await enqueue(
        store, *(spec("a" if n % 2 else "b", priority=LOW + n % 4) for n in range(7))
    )
    await enqueue(store, spec(queue="other"))
    seen, token = [], ""
    while True:
        page = await store.jobs.list(NS, JobFilter(queue=QUEUE), 3, token)
        seen += [job.job_id for job in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == [job.job_id for job in jobs]
    kind_a = await store.jobs.list(NS, JobFilter(kind="a"), 50, "")
    assert [job.job_id for job in kind_a.jobs] == [job.job_id for job in jobs if job.kind == "a"]


async def test_list_filters_by_the_state_a_job_is_in_now(store: Store) -> None:
    await enqueue(store, spec("busy"))
    await lease(store, kinds=["busy"])
    [later] = await enqueue(store, spec(delay_us=60_000_000))
    [soon] = await enqueue(store, spec(delay_us=200_000))
    scheduled = await store.jobs.list(NS, JobFilter(state=SCHEDULED), 50, "")
    assert {job.job_id for job in scheduled.jobs} == {soon.job_id, later.job_id}
    await sleep_past(from_timestamp(soon.run_after))
    available = await store.jobs.list(NS, JobFilter(state=AVAILABLE), 50, "")
    assert [(job.job_id, job.state) for job in available.jobs] == [(soon.job_id, AVAILABLE)]
    running = await store.jobs.list(NS, JobFilter(state=RUNNING), 50, "")
    assert [job.kind for job in running.jobs] == ["busy"]


async def test_stats_count_jobs_per_state_and_priority(store: Store) -> None:
    await enqueue(store, spec(priority=HIGH), spec(priority=HIGH), spec(priority=LOW))
    await enqueue(store, spec(delay_us=60_000_000), spec(queue="other"))
    await lease(store)
    [stats] = (await store.jobs.stats(NS, QUEUE, 10, "")).queues
    counts = {(c.state, c.priority): c.count for c in stats.counts}
    assert counts == {
        (RUNNING, HIGH): 1,
        (AVAILABLE, HIGH): 1,
        (AVAILABLE, LOW): 1,
        (SCHEDULED, NORMAL): 1,
    }
    assert stats.HasField("oldest_available_age")
    every = (await store.jobs.stats(NS, "", 10, "")).queues
    assert [queue.queue for queue in every] == [QUEUE, "other"]
    [empty] = (await store.jobs.stats(NS, "idle", 10, "")).queues
    assert (empty.queue, list(empty.counts), empty.HasField("oldest_available_age")) == (
        "idle",
        [],
        False,
    )


async def test_stats_with_a_count_limit_stop_counting_and_name_the_capped_states(
    store: Store,
) -> None:
    await enqueue(store, *[spec(priority=HIGH) for _ in range(3)], spec(priority=LOW))
    await enqueue(store, spec(delay_us=60_000_000))
    [stats] = (await store.jobs.stats(NS, QUEUE, 10, "", count_limit=2)).queues
    available = sum(c.count for c in stats.counts if c.state == AVAILABLE)
    assert available == 2
    assert list(stats.capped_states) == [AVAILABLE]
    assert [(c.state, c.count) for c in stats.counts if c.state == SCHEDULED] == [(SCHEDULED, 1)]


async def test_stats_under_their_count_limit_are_exact_and_capped_nowhere(store: Store) -> None:
    await enqueue(store, spec(priority=HIGH), spec(priority=LOW), spec(delay_us=60_000_000))
    await lease(store)
    [limited] = (await store.jobs.stats(NS, QUEUE, 10, "", count_limit=100)).queues
    [exact] = (await store.jobs.stats(NS, QUEUE, 10, "")).queues
    assert list(limited.counts) == list(exact.counts)
    assert list(limited.capped_states) == []


async def test_stats_with_a_count_limit_report_due_scheduled_jobs_as_available(
    store: Store,
) -> None:
    [job] = await enqueue(store, spec(delay_us=20_000))
    await sleep_past(from_timestamp(job.run_after))
    [stats] = (await store.jobs.stats(NS, QUEUE, 10, "", count_limit=10)).queues
    assert [(c.state, c.count) for c in stats.counts] == [(AVAILABLE, 1)]
    assert stats.HasField("oldest_available_age")


async def test_stats_page_through_many_queues_in_queue_order(store: Store) -> None:
    for n in range(7):
        await enqueue(store, spec(queue=f"queue-{n}"), spec(queue=f"queue-{n}"))
    names: list[str] = []
    token = ""
    while True:
        page = await store.jobs.stats(NS, "", 3, token)
        names += [stats.queue for stats in page.queues]
        token = page.next_page_token
        if not token:
            break
    assert names == [f"queue-{n}" for n in range(7)]


async def test_the_oldest_available_age_is_that_of_the_longest_waiting_job(store: Store) -> None:
    await enqueue(store, spec(queue="waiting"))
    await asyncio.sleep(0.05)
    await enqueue(store, spec(queue="waiting"), spec(queue="fresh"))
    by_queue = {s.queue: s for s in (await store.jobs.stats(NS, "", 10, "")).queues}
    waited = by_queue["waiting"].oldest_available_age.ToMicroseconds()
    assert waited > by_queue["fresh"].oldest_available_age.ToMicroseconds()
    assert waited >= 50_000


async def test_reads_settle_expired_leases(store: Store) -> None:
    await enqueue(store, spec())
    [job] = await lease(store, lease_us=SHORT_LEASE)
    await expire(job)
    [stats] = (await store.jobs.stats(NS, QUEUE, 10, "")).queues
    assert [(c.state, c.count) for c in stats.counts] == [(AVAILABLE, 1)]
    listed = await store.jobs.list(NS, JobFilter(), 10, "")
    assert [(j.state, j.errors[0].message) for j in listed.jobs] == [(AVAILABLE, "lease expired")]


# -- the change log -------------------------------------------------------------------


async def test_every_transition_is_recorded_in_commit_order(store: Store) -> None:
    start = await store.jobs.change_position()
    [job] = await enqueue(store, spec(base_us=10_000, cap_us=10_000))
    [leased] = await lease(store)
    failed = await store.jobs.fail(NS, job.job_id, leased.lease.lease_id, "boom", True, None)
    await sleep_past(from_timestamp(failed.run_after))
    [again] = await lease(store)
    await store.jobs.complete(NS, job.job_id, again.lease.lease_id, struct_pb2.Struct())
    page = await store.jobs.changes(NS, ChangeFilter(), start, 100)
    assert [(c.previous_state, c.state, c.attempt) for c in page.changes] == [
        (jobs_pb2.JOB_STATE_UNSPECIFIED, AVAILABLE, 0),
        (AVAILABLE, RUNNING, 1),
        (RUNNING, SCHEDULED, 1),
        (SCHEDULED, AVAILABLE, 1),
        (AVAILABLE, RUNNING, 2),
        (RUNNING, SUCCEEDED, 2),
    ]
    ids = [c.change_id for c in page.changes]
    assert ids == sorted(ids)
    assert page.through == ids[-1] == await store.jobs.change_position()
    assert page.changes[1].worker_id == "w1"
    assert page.changes[2].error == "boom"
    assert page.changes[2].run_after == failed.run_after


async def test_the_jobs_of_one_batch_are_recorded_in_its_order(store: Store) -> None:
    start = await store.jobs.change_position()
    low, high, normal = await enqueue(store, spec(priority=LOW), spec(priority=HIGH), spec())
    leased = await lease(store, 3)
    assert [job.job_id for job in leased] == [high.job_id, normal.job_id, low.job_id]
    page = await store.jobs.changes(NS, ChangeFilter(), start, 100)
    assert [(c.job_id, c.state) for c in page.changes] == [
        (low.job_id, AVAILABLE),
        (high.job_id, AVAILABLE),
        (normal.job_id, AVAILABLE),
        (high.job_id, RUNNING),
        (normal.job_id, RUNNING),
        (low.job_id, RUNNING),
    ]
    assert all(c.worker_id == "w1" for c in page.changes[3:])


async def test_changes_are_filtered_by_queue_kind_and_job_ids(store: Store) -> None:
    start = await store.jobs.change_position()
    a, b = await enqueue(store, spec("a"), spec("b"))
    [c] = await enqueue(store, spec("a", queue="other"))
    await enqueue(store, spec("a"), namespace="tenant-b")

    async def job_ids(where: ChangeFilter) -> list[str]:
        page = await store.jobs.changes(NS, where, start, 100)
        return [change.job_id for change in page.changes]

    assert await job_ids(ChangeFilter()) == [a.job_id, b.job_id, c.job_id]
    assert await job_ids(ChangeFilter(queue="other")) == [c.job_id]
    assert await job_ids(ChangeFilter(kind="a")) == [a.job_id, c.job_id]
    assert await job_ids(ChangeFilter(job_ids=(b.job_id,))) == [b.job_id]
    filtered = await store.jobs.changes(NS, ChangeFilter(queue="none"), start, 100)
    assert filtered.through == await store.jobs.change_position()


async def test_a_page_of_changes_stops_at_its_limit(store: Store) -> None:
    start = await store.jobs.change_position()
    await enqueue(store, *(spec() for _ in range(5)))
    first = await store.jobs.changes(NS, ChangeFilter(), start, 3)
    rest = await store.jobs.changes(NS, ChangeFilter(), first.through, 3)
    assert (len(first.changes), len(rest.changes)) == (3, 2)
    assert first.through == first.changes[-1].change_id


# -- retention and sweeping -------------------------------------------------------------


async def test_purge_deletes_only_finished_jobs_past_retention(store: Store) -> None:
    done, waiting = await enqueue(store, spec("done"), spec("waiting"))
    [job] = await lease(store, kinds=["done"])
    await store.jobs.complete(NS, job.job_id, job.lease.lease_id, struct_pb2.Struct())
    assert await store.jobs.purge(now_us() - 60_000_000, 0) == 0
    assert await store.jobs.purge(now_us() + 1, 0) == 1
    with pytest.raises(NotFound):
        await store.jobs.get(NS, done.job_id)
    assert (await store.jobs.get(NS, waiting.job_id)).state == AVAILABLE


async def test_resuming_changes_that_retention_deleted_is_out_of_range(store: Store) -> None:
    start = await store.jobs.change_position()
    await enqueue(store, spec(), spec())
    await store.jobs.purge(0, now_us() + 1)
    with pytest.raises(OutOfRange) as caught:
        await store.jobs.changes(NS, ChangeFilter(), start + 1, 10)
    assert caught.value.reason == "CHANGES_TRIMMED"
    assert (await store.jobs.changes(NS, ChangeFilter(), 0, 10)).changes == []


async def test_a_sweep_promotes_due_jobs_settles_expired_leases_and_reports_the_next_timer(
    store: Store,
) -> None:
    start = await store.jobs.change_position()
    await enqueue(store, spec("held"))
    [held] = await lease(store, kinds=["held"], lease_us=SHORT_LEASE)
    [delayed] = await enqueue(store, spec("delayed", delay_us=30_000))
    [later] = await enqueue(store, spec("later", delay_us=60_000_000))
    await sleep_past(max(from_timestamp(delayed.run_after), from_timestamp(held.lease.expire_time)))
    swept = await store.jobs.sweep()
    assert (swept.more, swept.next_due_us) == (False, from_timestamp(later.run_after))
    page = await store.jobs.changes(NS, ChangeFilter(), start, 100)
    assert [(c.kind, c.state) for c in page.changes][-2:] == [
        ("delayed", AVAILABLE),
        ("held", AVAILABLE),
    ]


async def test_builtin_jobs_are_leased_across_namespaces(store: Store) -> None:
    await enqueue(store, spec("statekeeper.append_event", queue=BUILTIN_QUEUE))
    await enqueue(store, spec("statekeeper.append_event", queue=BUILTIN_QUEUE), namespace="b")
    await enqueue(store, spec())
    result = await store.jobs.lease_builtin("server", 10, LONG_LEASE)
    assert sorted(item.namespace for item in result.jobs) == ["b", NS]


# -- wake-ups ----------------------------------------------------------------------------


async def test_commits_wake_the_waiters_they_concern(store: Store) -> None:
    queue_waiter = store.notifier.watch(queue_key(NS, QUEUE))
    change_waiter = store.notifier.watch(changes_key(NS))
    timer_waiter = store.notifier.watch(TIMERS_KEY)
    await enqueue(store, spec(delay_us=60_000_000))
    assert (queue_waiter.is_set(), change_waiter.is_set(), timer_waiter.is_set()) == (
        False,
        True,
        True,
    )
    await enqueue(store, spec())
    assert queue_waiter.is_set()
