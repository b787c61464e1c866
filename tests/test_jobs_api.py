"""JobService end to end: a real server on a free port, through the client and raw stubs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2

import statekeeper
from statekeeper.jobs import job_spec
from statekeeper.v1 import jobs_pb2, jobs_pb2_grpc
from statekeeper_server.app import Application
from tests.harness import running_app
from tests.rpc_errors import error_details

SCHEDULED = jobs_pb2.JOB_STATE_SCHEDULED
AVAILABLE = jobs_pb2.JOB_STATE_AVAILABLE
RUNNING = jobs_pb2.JOB_STATE_RUNNING
SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED
DEAD = jobs_pb2.JOB_STATE_DEAD
CANCELLED = jobs_pb2.JOB_STATE_CANCELLED
FAST = {"job_sweep_interval": 0.05, "heartbeat_interval": 0.05}


@pytest.fixture
async def app(store_url: str) -> AsyncIterator[Application]:
    async with running_app(store_url, **FAST) as running:
        yield running


@pytest.fixture
async def client(app: Application) -> AsyncIterator[statekeeper.AsyncClient]:
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as connected:
        yield connected


@pytest.fixture
def stub(client: statekeeper.AsyncClient) -> jobs_pb2_grpc.JobServiceStub:
    return jobs_pb2_grpc.JobServiceStub(client.channel)


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


def append_event_spec(payload: dict[str, object]) -> jobs_pb2.JobSpec:
    data = struct_pb2.Struct()
    data.update(payload)
    return jobs_pb2.JobSpec(kind="statekeeper.append_event", payload=data)


# -- enqueue ---------------------------------------------------------------------------


async def test_enqueue_stores_the_job_with_its_defaults(client: statekeeper.AsyncClient) -> None:
    job = await client.jobs.enqueue("email.send", {"to": "ada@example.com"})
    assert (job.queue, job.kind, job.payload["to"]) == ("default", "email.send", "ada@example.com")
    assert (job.priority, job.state, job.attempt, job.max_retries) == (
        jobs_pb2.JOB_PRIORITY_NORMAL,
        AVAILABLE,
        0,
        3,
    )
    assert (job.retry_backoff_base.seconds, job.retry_backoff_cap.seconds) == (1, 300)
    assert await client.jobs.get(job.job_id) == job


async def test_an_enqueue_with_a_held_key_returns_the_existing_job(
    stub: jobs_pb2_grpc.JobServiceStub,
) -> None:
    spec = job_spec("report", {"day": "monday"}, idempotency_key="report-monday")
    first = await stub.EnqueueJob(jobs_pb2.EnqueueJobRequest(job=spec))
    second = await stub.EnqueueJob(jobs_pb2.EnqueueJobRequest(job=spec))
    assert (first.created, second.created) == (True, False)
    assert second.job.job_id == first.job.job_id


async def test_enqueue_jobs_is_atomic_and_names_the_invalid_job(
    client: statekeeper.AsyncClient, stub: jobs_pb2_grpc.JobServiceStub
) -> None:
    request = jobs_pb2.EnqueueJobsRequest(jobs=[job_spec("ok"), job_spec(""), job_spec("ok")])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.EnqueueJobs(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(caught.value)[1] == ["jobs[1].kind"]
    assert [job async for job in client.jobs.list()] == []


async def test_enqueue_many_stores_every_job_in_order(client: statekeeper.AsyncClient) -> None:
    jobs = await client.jobs.enqueue_many(job_spec("step", {"n": n}) for n in range(3))
    listed = [job async for job in client.jobs.list()]
    assert [job.job_id for job in listed] == [job.job_id for job in jobs]
    assert [job.payload["n"] for job in listed] == [0, 1, 2]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (jobs_pb2.JobSpec(kind="k", queue="../etc"), "job.queue"),
        (jobs_pb2.JobSpec(kind="k", queue="statekeeper.mine"), "job.queue"),
        (jobs_pb2.JobSpec(kind="statekeeper.other"), "job.kind"),
        (jobs_pb2.JobSpec(kind="k", priority=9), "job.priority"),  # type: ignore[arg-type]
        (jobs_pb2.JobSpec(kind="k", max_retries=101), "job.max_retries"),
        (jobs_pb2.JobSpec(kind="k", delay=seconds(-1)), "job.delay"),
        (
            jobs_pb2.JobSpec(kind="k", delay=seconds(1), run_after={"seconds": 1}),
            "job.delay",
        ),
        (
            jobs_pb2.JobSpec(kind="k", retry_backoff_base=seconds(9), retry_backoff_cap=seconds(2)),
            "job.retry_backoff_base",
        ),
        (jobs_pb2.JobSpec(kind="k", idempotency_key="x" * 257), "job.idempotency_key"),
        (append_event_spec({"event": {"custom": {"type": "t"}}}), "job.payload.run_id"),
        (append_event_spec({"run_id": "r", "event": {}}), "job.payload.event"),
        (append_event_spec({"run_id": "r", "event": {"nope": {}}}), "job.payload.event"),
        (
            append_event_spec({"run_id": "r", "event": {"custom": {"type": ""}}}),
            "job.payload.event.custom.type",
        ),
        (
            append_event_spec({"run_id": "r", "event": {"custom": {"type": "t"}}, "x": 1}),
            "job.payload.x",
        ),
    ],
)
async def test_an_invalid_job_is_invalid_argument_naming_its_field(
    stub: jobs_pb2_grpc.JobServiceStub, spec: jobs_pb2.JobSpec, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.EnqueueJob(jobs_pb2.EnqueueJobRequest(job=spec))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(caught.value)[1] == [field]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (jobs_pb2.LeaseJobsRequest(), "worker_id"),
        (jobs_pb2.LeaseJobsRequest(worker_id="w", queue="statekeeper.builtin"), "queue"),
        (jobs_pb2.LeaseJobsRequest(worker_id="w", max_jobs=-1), "max_jobs"),
        (jobs_pb2.LeaseJobsRequest(worker_id="w", kinds=["ok", "no/slash"]), "kinds[1]"),
        (
            jobs_pb2.LeaseJobsRequest(worker_id="w", lease_duration=seconds(0.0001)),
            "lease_duration",
        ),
        (jobs_pb2.LeaseJobsRequest(worker_id="w", wait=seconds(-1)), "wait"),
    ],
)
async def test_an_invalid_lease_request_is_invalid_argument_naming_its_field(
    stub: jobs_pb2_grpc.JobServiceStub, request_: jobs_pb2.LeaseJobsRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.LeaseJobs(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(caught.value)[1] == [field]


# -- leases and fencing ---------------------------------------------------------------


async def test_a_stale_lease_is_failed_precondition_with_its_reason(
    client: statekeeper.AsyncClient, stub: jobs_pb2_grpc.JobServiceStub
) -> None:
    job = await client.jobs.enqueue("k")
    [leased] = await client.jobs.lease(worker_id="w1")
    await client.jobs.cancel(job.job_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CompleteJob(
            jobs_pb2.CompleteJobRequest(job_id=job.job_id, lease_id=leased.lease.lease_id)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_details(caught.value)[0]
    assert info.reason == "LEASE_STALE"
    assert dict(info.metadata) == {
        "job_id": job.job_id,
        "lease_id": leased.lease.lease_id,
        "state": "CANCELLED",
    }
    beat = await client.jobs.heartbeat(job.job_id, leased.lease.lease_id)
    assert beat.cancelled


async def test_an_unknown_job_is_not_found(stub: jobs_pb2_grpc.JobServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetJob(jobs_pb2.GetJobRequest(job_id="missing"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_details(caught.value)[0].reason == "JOB_NOT_FOUND"


async def test_fail_retry_and_cancel_through_the_client(client: statekeeper.AsyncClient) -> None:
    job = await client.jobs.enqueue("k", max_retries=0)
    [leased] = await client.jobs.lease(worker_id="w1")
    dead = await client.jobs.fail(job.job_id, leased.lease.lease_id, "boom")
    assert (dead.state, dead.errors[0].message) == (DEAD, "boom")
    revived = await client.jobs.retry(job.job_id, delay=60)
    assert revived.state == SCHEDULED
    assert (await client.jobs.cancel(job.job_id)).state == CANCELLED


async def test_stats_through_the_client(client: statekeeper.AsyncClient) -> None:
    await client.jobs.enqueue("k", priority="high")
    await client.jobs.enqueue("k", queue="mail", delay=60)
    stats = {queue.queue: queue for queue in await client.jobs.stats()}
    assert [(c.state, c.priority, c.count) for c in stats["default"].counts] == [
        (AVAILABLE, jobs_pb2.JOB_PRIORITY_HIGH, 1)
    ]
    assert [(c.state, c.count) for c in stats["mail"].counts] == [(SCHEDULED, 1)]


async def test_stats_with_a_count_limit_through_the_client(
    client: statekeeper.AsyncClient,
) -> None:
    for _ in range(3):
        await client.jobs.enqueue("k")
    [stats] = await client.jobs.stats("default", count_limit=2)
    assert [(c.state, c.count) for c in stats.counts] == [(AVAILABLE, 2)]
    assert list(stats.capped_states) == [AVAILABLE]


# -- long polls ---------------------------------------------------------------------------


async def test_a_long_poll_wakes_when_a_job_is_enqueued(client: statekeeper.AsyncClient) -> None:
    poll = asyncio.ensure_future(client.jobs.lease(worker_id="w1", wait=30))
    await asyncio.sleep(0.1)
    assert not poll.done()
    job = await client.jobs.enqueue("k")
    [leased] = await poll
    assert leased.job_id == job.job_id


async def test_a_long_poll_wakes_when_a_delayed_job_becomes_runnable(
    client: statekeeper.AsyncClient,
) -> None:
    job = await client.jobs.enqueue("k", delay=0.3)
    [leased] = await client.jobs.lease(worker_id="w1", wait=30)
    assert (leased.job_id, leased.attempt) == (job.job_id, 1)


async def test_a_long_poll_wakes_when_a_lease_expires(client: statekeeper.AsyncClient) -> None:
    job = await client.jobs.enqueue("k")
    await client.jobs.lease(worker_id="crashed", lease_duration=0.3)
    [leased] = await client.jobs.lease(worker_id="w2", wait=30)
    assert (leased.job_id, leased.attempt, leased.errors[0].message) == (
        job.job_id,
        2,
        "lease expired",
    )


async def test_a_long_poll_answers_empty_before_the_call_deadline(app: Application) -> None:
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}", timeout=0.5) as client:
        stub = jobs_pb2_grpc.JobServiceStub(client.channel)
        response = await stub.LeaseJobs(
            jobs_pb2.LeaseJobsRequest(worker_id="w1", wait=seconds(30)), timeout=0.5
        )
    assert list(response.jobs) == []


# -- watching --------------------------------------------------------------------------


async def test_watch_sees_every_transition_of_a_job(client: statekeeper.AsyncClient) -> None:
    job = await client.jobs.enqueue("k", retry_backoff_base=0.05, retry_backoff_cap=0.05)

    async def transitions() -> list[tuple[int, int]]:
        seen = []
        async for change in client.jobs.watch(job_ids=[job.job_id], after_change_id=0):
            seen.append((change.previous_state, change.state))
            if change.state == SUCCEEDED:
                return seen
        raise AssertionError("the stream ended")

    watching = asyncio.ensure_future(transitions())
    [first] = await client.jobs.lease(worker_id="w1")
    await client.jobs.fail(job.job_id, first.lease.lease_id, "boom")
    [second] = await client.jobs.lease(worker_id="w1", wait=30)
    await client.jobs.complete(job.job_id, second.lease.lease_id, {"ok": True})
    assert await watching == [
        (jobs_pb2.JOB_STATE_UNSPECIFIED, AVAILABLE),
        (AVAILABLE, RUNNING),
        (RUNNING, SCHEDULED),
        (SCHEDULED, AVAILABLE),
        (AVAILABLE, RUNNING),
        (RUNNING, SUCCEEDED),
    ]


async def test_watch_starts_live_filters_by_queue_and_beats_when_idle(
    client: statekeeper.AsyncClient, stub: jobs_pb2_grpc.JobServiceStub
) -> None:
    await client.jobs.enqueue("before", queue="mail")
    stream = stub.WatchJobs(jobs_pb2.WatchJobsRequest(queue="mail"))
    messages = aiter(stream)
    first = await anext(messages)
    assert first.WhichOneof("message") == "started"
    await client.jobs.enqueue("elsewhere", queue="other")
    job = await client.jobs.enqueue("after", queue="mail")
    message = await anext(messages)
    while message.WhichOneof("message") == "heartbeat":
        message = await anext(messages)
    assert [(c.job_id, c.kind) for c in message.changes.changes] == [(job.job_id, "after")]
    assert message.changes.changes[0].change_id > first.started.change_id
    assert (await anext(messages)).WhichOneof("message") == "heartbeat"
    stream.cancel()


async def test_watch_from_a_position_deleted_by_retention_is_out_of_range(
    store_url: str,
) -> None:
    async with (
        running_app(store_url, job_change_retention=0, **FAST) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        await client.jobs.enqueue("k")
        await client.jobs.enqueue("k")
        stub = jobs_pb2_grpc.JobServiceStub(client.channel)
        refused: grpc.aio.AioRpcError | None = None
        for _ in range(200):
            stream = stub.WatchJobs(jobs_pb2.WatchJobsRequest(after_change_id=1))
            try:
                await anext(aiter(stream))
            except grpc.aio.AioRpcError as error:
                refused = error
                break
            stream.cancel()
            await asyncio.sleep(0.05)
    assert refused is not None
    assert refused.code() == grpc.StatusCode.OUT_OF_RANGE
    assert error_details(refused)[0].reason == "CHANGES_TRIMMED"


async def test_finished_jobs_are_deleted_after_the_retention(store_url: str) -> None:
    async with (
        running_app(store_url, job_retention=0.1, **FAST) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        done = await client.jobs.enqueue("k")
        [leased] = await client.jobs.lease(worker_id="w1")
        await client.jobs.complete(done.job_id, leased.lease.lease_id)
        waiting = await client.jobs.enqueue("k", delay=60)
        for _ in range(200):
            if not [job async for job in client.jobs.list(state=SUCCEEDED)]:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.jobs.get(done.job_id)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert (await client.jobs.get(waiting.job_id)).state == SCHEDULED
