"""The statekeeper_* store metrics, read from prometheus-client's default registry while
real servers (memory, file and PostgreSQL) serve real client calls."""

from __future__ import annotations

import asyncio
import sqlite3
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY

import statekeeper
from statekeeper.events import custom_event
from statekeeper.v1 import checkpoints_pb2, events_pb2, events_pb2_grpc
from statekeeper_server.app import Application
from statekeeper_server.observability import store_metrics
from tests.harness import running_app
from tests.postgres_harness import SERVER_URL, open_engine, terminate_backend
from tests.waiting import until

FAST = {"job_sweep_interval": 0.05, "heartbeat_interval": 0.05}


def value(name: str, **labels: str) -> float:
    """The sample's value now; 0 when the registry has no such sample."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def app(store_url: str) -> AsyncIterator[Application]:
    async with running_app(store_url, **FAST) as running:
        yield running


@pytest.fixture
async def client(app: Application) -> AsyncIterator[statekeeper.AsyncClient]:
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as connected:
        yield connected


# -- events -------------------------------------------------------------------------


async def test_committed_appends_count_their_events_and_encoded_bytes(
    client: statekeeper.AsyncClient,
) -> None:
    events = value("statekeeper_events_appended_total")
    size = value("statekeeper_event_bytes_appended_total")
    envelopes = [
        await client.events.append("run-1", custom_event("step", {"n": n})) for n in range(3)
    ]
    assert value("statekeeper_events_appended_total") == events + 3
    assert value("statekeeper_event_bytes_appended_total") == size + sum(
        envelope.ByteSize() for envelope in envelopes
    )


async def test_a_retried_or_refused_append_counts_nothing(client: statekeeper.AsyncClient) -> None:
    await client.events.append("run-1", custom_event("step"), event_id="first")
    events = value("statekeeper_events_appended_total")
    await client.events.append("run-1", custom_event("step"), event_id="first")
    with pytest.raises(grpc.aio.AioRpcError):
        await client.events.append(
            "run-1",
            custom_event("step"),
            expectation=events_pb2.SeqExpectation(last_seq=7),
        )
    assert value("statekeeper_events_appended_total") == events


async def test_each_commit_is_measured(app: Application, client: statekeeper.AsyncClient) -> None:
    commits = value("statekeeper_commit_seconds_count")
    batches = value("statekeeper_commit_batch_size_count")
    fsyncs = value("statekeeper_fsync_seconds_count")
    await client.events.append("run-1", custom_event("step"))
    assert value("statekeeper_commit_seconds_count") >= commits + 1
    assert value("statekeeper_commit_batch_size_count") >= batches + 1
    if app.settings.store == "memory:":
        assert value("statekeeper_fsync_seconds_count") == fsyncs
    else:
        assert value("statekeeper_fsync_seconds_count") >= fsyncs + 1


CONCURRENT_APPENDS = 300
"""Enough that, however slowly a loaded machine hands them to the server, some arrive
while the writer is busy with others."""


async def test_concurrent_writes_to_a_sqlite_store_share_commits() -> None:
    async with (
        running_app("memory:") as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        writes = value("statekeeper_commit_batch_size_sum")
        commits = value("statekeeper_commit_batch_size_count")
        await asyncio.gather(
            *(
                client.events.append(f"run-{n}", custom_event("step"))
                for n in range(CONCURRENT_APPENDS)
            )
        )
        # Health probes may commit beside them; the appends took fewer commits than writes.
        assert value("statekeeper_commit_batch_size_sum") >= writes + CONCURRENT_APPENDS
        assert value("statekeeper_commit_batch_size_count") - commits < (
            value("statekeeper_commit_batch_size_sum") - writes
        )


# -- replay followers ---------------------------------------------------------------------


async def test_an_open_replay_is_counted_until_it_ends(
    client: statekeeper.AsyncClient,
) -> None:
    await client.events.append("run-1", custom_event("step"))
    followers = value("statekeeper_replay_followers")
    stub = events_pb2_grpc.EventLogServiceStub(client.channel)
    call = stub.ReplayEvents(events_pb2.ReplayEventsRequest(run_id="run-1", follow=True))
    async for message in call:
        if message.HasField("caught_up"):
            break
    assert value("statekeeper_replay_followers") == followers + 1
    call.cancel()
    await until(
        lambda: value("statekeeper_replay_followers") == followers, "the replay stops counting"
    )


async def test_a_caught_up_follower_is_not_behind(client: statekeeper.AsyncClient) -> None:
    await client.events.append("run-1", custom_event("step"))
    stub = events_pb2_grpc.EventLogServiceStub(client.channel)
    call = stub.ReplayEvents(events_pb2.ReplayEventsRequest(run_id="run-1", follow=True))
    async for message in call:
        if message.HasField("caught_up"):
            break
    assert value("statekeeper_replay_slowest_follower_lag") == 0
    call.cancel()


async def test_a_stalled_follower_is_behind_by_what_it_has_not_been_sent(
    client: statekeeper.AsyncClient,
) -> None:
    big = {"padding": "x" * 60_000}
    await client.events.append("run-1", custom_event("step"))
    stub = events_pb2_grpc.EventLogServiceStub(client.channel)
    call = stub.ReplayEvents(events_pb2.ReplayEventsRequest(run_id="run-1", follow=True))
    received = 1
    async for message in call:
        if message.HasField("caught_up"):
            break
    # The client stops reading: 6 MB more than any transport window takes.
    for _ in range(10):
        await client.events.append_many("run-1", [custom_event("big", big)] * 10)
    last_seq = 101
    await until(
        lambda: value("statekeeper_replay_slowest_follower_lag") > 0, "the follower falls behind"
    )
    lag = value("statekeeper_replay_slowest_follower_lag")
    # The server sent more than the client read; what it did not send yet is the lag.
    assert 0 < lag <= last_seq - received
    async for message in call:
        received = max(received, *(envelope.seq for envelope in message.batch.envelopes), 0)
        if received == last_seq:
            break
    await until(
        lambda: value("statekeeper_replay_slowest_follower_lag") == 0, "the follower caught up"
    )
    call.cancel()


# -- jobs --------------------------------------------------------------------------------


async def test_a_job_failing_past_its_attempts_is_counted_dead(
    client: statekeeper.AsyncClient,
) -> None:
    dead = value("statekeeper_jobs_dead_total")
    await client.jobs.enqueue("work", queue="q", max_retries=0)
    [job] = await client.jobs.lease("q", worker_id="w")
    await client.jobs.fail(job.job_id, job.lease.lease_id, "broken")
    assert value("statekeeper_jobs_dead_total") == dead + 1


async def test_a_retried_failure_is_not_counted_dead(client: statekeeper.AsyncClient) -> None:
    dead = value("statekeeper_jobs_dead_total")
    await client.jobs.enqueue("work", queue="q", max_retries=1)
    [job] = await client.jobs.lease("q", worker_id="w")
    await client.jobs.fail(job.job_id, job.lease.lease_id, "flaky")
    assert value("statekeeper_jobs_dead_total") == dead


async def test_an_expired_lease_taken_back_is_counted(client: statekeeper.AsyncClient) -> None:
    expired = value("statekeeper_job_leases_expired_total")
    await client.jobs.enqueue("work", queue="q")
    await client.jobs.lease("q", worker_id="w", lease_duration=0.05)
    # The sweeper (every 0.05 s here) takes the lease back once it expired.
    await until(
        lambda: value("statekeeper_job_leases_expired_total") > expired,
        "the expired lease is counted",
    )
    [job] = [job async for job in client.jobs.list(queue="q")]
    assert job.attempt == 1
    assert value("statekeeper_job_leases_expired_total") == expired + 1


async def test_jobs_are_counted_by_queue_and_state(client: statekeeper.AsyncClient) -> None:
    for _ in range(3):
        await client.jobs.enqueue("work", queue="counted")
    await client.jobs.enqueue("work", queue="counted", delay=3600)
    await client.jobs.lease("counted", worker_id="w")
    await store_metrics.refresh_job_counts()
    assert value("statekeeper_jobs", queue="counted", state="available") == 2
    assert value("statekeeper_jobs", queue="counted", state="running") == 1
    assert value("statekeeper_jobs", queue="counted", state="scheduled") == 1


async def test_a_scrape_answers_from_the_cache_and_refreshes_it_in_the_background(
    client: statekeeper.AsyncClient,
) -> None:
    await client.jobs.enqueue("work", queue="later")
    # The server's first scrape finds no counts yet: it answers without them and asks
    # for a refresh.
    assert value("statekeeper_jobs", queue="later", state="available") == 0
    await store_metrics.job_counts_settled()
    assert value("statekeeper_jobs", queue="later", state="available") == 1


async def test_the_oldest_available_job_age_is_reported_while_a_job_waits(
    client: statekeeper.AsyncClient,
) -> None:
    await client.jobs.enqueue("work", queue="waiting")
    await store_metrics.refresh_job_counts()
    assert value("statekeeper_job_oldest_available_age_seconds", queue="waiting") > 0
    await client.jobs.lease("waiting", worker_id="w")
    await store_metrics.refresh_job_counts()
    assert (
        REGISTRY.get_sample_value(
            "statekeeper_job_oldest_available_age_seconds", {"queue": "waiting"}
        )
        is None
    )


# -- checkpoints ----------------------------------------------------------------------


async def test_saves_and_the_checkpoints_their_retention_drops_are_counted(
    client: statekeeper.AsyncClient,
) -> None:
    saved = value("statekeeper_checkpoints_saved_total", kind="workflow")
    dropped = value("statekeeper_checkpoints_dropped_total", kind="workflow")
    for step in range(3):
        await client.checkpoints.save_workflow("run-1", "flow", step=step)
    await client.checkpoints.save_workflow("run-1", "flow", step=3, keep_last=1)
    assert value("statekeeper_checkpoints_saved_total", kind="workflow") == saved + 4
    assert value("statekeeper_checkpoints_dropped_total", kind="workflow") == dropped + 3


async def test_checkpoints_the_sweeper_drops_are_counted_by_kind(store_url: str) -> None:
    async with (
        running_app(store_url, checkpoint_ttl=0.3, checkpoint_sweep_interval=0.05) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        saved = value("statekeeper_checkpoints_saved_total", kind="agent")
        dropped = value("statekeeper_checkpoints_dropped_total", kind="agent")
        workflow_dropped = value("statekeeper_checkpoints_dropped_total", kind="workflow")
        for _ in range(3):
            await client.checkpoints.persist_agent("agent-1", checkpoints_pb2.AGENT_STATE_ACTIVE)
        # Once 0.3 s old, the sweeper drops all but the newest.
        await until(
            lambda: value("statekeeper_checkpoints_dropped_total", kind="agent") == dropped + 2,
            "the sweeper's drops are counted",
        )
        assert value("statekeeper_checkpoints_saved_total", kind="agent") == saved + 3
        assert value("statekeeper_checkpoints_dropped_total", kind="workflow") == workflow_dropped


# -- errors, pool, namespace label -------------------------------------------------------


async def test_a_corrupt_record_is_counted_as_a_corrupt_store_error(tmp_path: Path) -> None:
    db = tmp_path / "statekeeper.db"
    async with (
        running_app(f"file:{db}") as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        saved = await client.checkpoints.save_workflow("run-1", "flow")
        conn = sqlite3.connect(db)
        with conn:
            conn.execute(
                "UPDATE workflow_checkpoints SET data = ? WHERE checkpoint_id = ?",
                (b"\xff" * 8, saved.checkpoint_id),
            )
        conn.close()
        corrupt = value("statekeeper_store_errors_total", kind="corrupt")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.checkpoints.load_workflow("run-1")
        assert raised.value.code() == grpc.StatusCode.DATA_LOSS
        assert value("statekeeper_store_errors_total", kind="corrupt") == corrupt + 1


async def test_a_statement_past_its_time_limit_is_counted_as_a_timeout(
    postgres_url: str,
) -> None:
    schema = urllib.parse.parse_qs(urllib.parse.urlsplit(postgres_url).query)["schema"][0]
    async with (
        running_app(postgres_url, postgres_statement_timeout=0.2) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        await client.events.append("run-1", custom_event("step"))
        timeouts = value("statekeeper_store_errors_total", kind="timeout")
        blocker = await asyncpg.connect(SERVER_URL)
        try:
            async with blocker.transaction():
                await blocker.execute(f"LOCK TABLE {schema}.event_runs IN ACCESS EXCLUSIVE MODE")
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await client.events.append("run-1", custom_event("step"))
        finally:
            await blocker.close()
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert value("statekeeper_store_errors_total", kind="timeout") == timeouts + 1


async def test_the_postgres_pool_is_reported_while_its_store_is_open(postgres_url: str) -> None:
    size = value("statekeeper_postgres_pool_size")
    in_use = value("statekeeper_postgres_pool_in_use")
    waiters = value("statekeeper_postgres_pool_waiters")
    async with running_app(postgres_url, postgres_pool_size=4) as app:
        async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client:
            await client.events.append("run-1", custom_event("step"))
        assert 1 <= value("statekeeper_postgres_pool_size") - size <= 4
        # The server's own background work (health probe, sweeps) may hold a connection
        # for a moment; once the call is answered the pool returns to what it was.
        await until(
            lambda: value("statekeeper_postgres_pool_in_use") == in_use,
            "no connection in use once the call was answered",
        )
        assert value("statekeeper_postgres_pool_waiters") == waiters
    assert value("statekeeper_postgres_pool_size") == size


async def test_a_lost_listen_connection_reopened_is_counted(postgres_url: str) -> None:
    reconnects = value("statekeeper_postgres_listen_reconnects_total")
    async with open_engine(postgres_url) as engine:
        pid = engine.listener.server_pid
        assert pid is not None
        await terminate_backend(pid)
        await until(
            lambda: engine.listener.server_pid not in (None, pid), "the listener reconnects"
        )
        assert value("statekeeper_postgres_listen_reconnects_total") == reconnects + 1


async def test_with_the_namespace_label_counters_carry_the_namespace() -> None:
    async with running_app("memory:", metrics_namespace_label=True) as app:
        try:
            async with statekeeper.AsyncClient(
                f"127.0.0.1:{app.port}", namespace="tenant-a"
            ) as client:
                before = value("statekeeper_events_appended_total", namespace="tenant-a")
                await client.events.append("run-1", custom_event("step"))
                assert (
                    value("statekeeper_events_appended_total", namespace="tenant-a") == before + 1
                )
        finally:
            store_metrics.use_namespace_label(False)


async def test_without_the_namespace_label_counters_have_none(
    client: statekeeper.AsyncClient,
) -> None:
    await client.events.append("run-1", custom_event("step"))
    samples = [
        sample
        for metric in REGISTRY.collect()
        if metric.name == "statekeeper_events_appended"
        for sample in metric.samples
    ]
    assert [sample.labels for sample in samples] == [{}]
