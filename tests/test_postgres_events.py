"""The event log across replicas: two stores, then two servers, on one PostgreSQL schema."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncpg
import grpc
import pytest

import statekeeper
from statekeeper.v1 import events_pb2, events_pb2_grpc
from statekeeper_server.app import Application
from statekeeper_server.errors import Aborted
from statekeeper_server.stores import Store, open_store
from statekeeper_server.stores.events import RunFilter, event_key
from statekeeper_server.stores.postgres.events import _runs_query
from tests.harness import running_app
from tests.postgres_harness import SERVER_URL, open_engine
from tests.test_events_store import completed, custom, started

NS = "default"
RUN = "run-1"
WAIT = 30.0
"""Upper bound for anything awaited here; a healthy run takes a small fraction of it."""
Expectation = events_pb2.SeqExpectation


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[Store, Store]]:
    first = await open_store(postgres_url)
    second = await open_store(postgres_url)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def append(
    store: Store,
    *inputs: events_pb2.EventInput,
    expectation: events_pb2.SeqExpectation | None = None,
) -> list[events_pb2.EventEnvelope]:
    appended = await store.events.append(NS, RUN, inputs, expectation)
    return [events_pb2.EventEnvelope.FromString(data) for data in appended]


async def stored_seqs(store: Store) -> list[int]:
    page = await store.events.read(NS, RUN, 0, 10_000)
    return [events_pb2.EventEnvelope.FromString(data).seq for data in page.envelopes]


# -- concurrency -------------------------------------------------------------------


async def test_concurrent_appends_through_two_replicas_get_seqs_one_to_n(
    replicas: tuple[Store, Store],
) -> None:
    async def appender(replica: Store, worker: int) -> list[int]:
        return [(await append(replica, custom(worker=worker)))[0].seq for _ in range(5)]

    workers = [appender(replica, worker) for worker in range(8) for replica in replicas]
    seqs = [seq for batch in await asyncio.gather(*workers) for seq in batch]
    assert sorted(seqs) == list(range(1, 81))
    assert await stored_seqs(replicas[0]) == await stored_seqs(replicas[1]) == list(range(1, 81))


async def test_concurrent_batches_through_two_replicas_are_never_interleaved(
    replicas: tuple[Store, Store],
) -> None:
    batches = await asyncio.gather(
        *(append(replicas[b % 2], *[custom(batch=b)] * 4) for b in range(20))
    )
    for batch in batches:
        seqs = [envelope.seq for envelope in batch]
        assert seqs == list(range(seqs[0], seqs[0] + 4))
    assert sorted(envelope.seq for batch in batches for envelope in batch) == list(range(1, 81))


async def test_racing_first_appends_through_two_replicas_create_the_run_once(
    replicas: tuple[Store, Store],
) -> None:
    results = await asyncio.gather(
        *(
            append(replicas[i % 2], started(), expectation=Expectation(no_run=True))
            for i in range(10)
        ),
        return_exceptions=True,
    )
    won = [result for result in results if isinstance(result, list)]
    lost = [result for result in results if isinstance(result, Aborted)]
    assert [[envelope.seq for envelope in batch] for batch in won] == [[1]]
    assert len(lost) == 9
    assert {error.metadata["actual_last_seq"] for error in lost} == {"1"}


async def test_unconditional_first_appends_through_two_replicas_all_land(
    replicas: tuple[Store, Store],
) -> None:
    results = await asyncio.gather(*(append(replicas[i % 2], custom(n=i)) for i in range(10)))
    assert sorted(batch[0].seq for batch in results) == list(range(1, 11))
    run = (await replicas[1].events.read(NS, RUN, 0, 1)).run
    assert run is not None
    assert (run.first_seq, run.last_seq) == (1, 10)


async def test_only_one_compare_and_set_append_wins_across_replicas(
    replicas: tuple[Store, Store],
) -> None:
    await append(replicas[0], started())
    results = await asyncio.gather(
        *(
            append(replicas[i % 2], custom(), expectation=Expectation(last_seq=1))
            for i in range(10)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(result, list) for result in results) == 1
    assert all(isinstance(result, (list, Aborted)) for result in results)
    assert await stored_seqs(replicas[1]) == [1, 2]


async def test_retries_of_one_event_id_through_two_replicas_store_it_once(
    replicas: tuple[Store, Store],
) -> None:
    await append(replicas[0], started())
    results = await asyncio.gather(
        *(append(replicas[i % 2], custom(event_id="call-1", n=1)) for i in range(10))
    )
    assert {batch[0].SerializeToString() for batch in results} == {
        results[0][0].SerializeToString()
    }
    assert results[0][0].seq == 2
    assert await stored_seqs(replicas[0]) == [1, 2]


async def test_deleting_a_run_while_the_other_replica_appends_leaves_no_stray_event(
    replicas: tuple[Store, Store], postgres_url: str
) -> None:
    await append(replicas[0], started())

    async def appender(worker: int) -> None:
        for _ in range(5):
            await append(replicas[0], custom(worker=worker))

    appenders = asyncio.gather(*map(appender, range(5)))
    await append(replicas[0], custom())
    assert await replicas[1].events.delete_run(NS, RUN)
    await appenders
    page = await replicas[1].events.read(NS, RUN, 0, 1000)
    assert page.run is not None
    seqs = [events_pb2.EventEnvelope.FromString(data).seq for data in page.envelopes]
    assert seqs == list(range(1, page.run.last_seq + 1))
    assert await stored_rows(postgres_url) == page.run.last_seq


async def stored_rows(url: str) -> int:
    """The rows of the `events` table of the schema of `url`, whoever's they are."""
    schema = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["schema"][0]
    conn = await asyncpg.connect(SERVER_URL)
    try:
        return cast(int, await conn.fetchval(f'SELECT count(*) FROM "{schema}".events'))
    finally:
        await conn.close()


# -- wake-ups across replicas ----------------------------------------------------------


async def test_an_append_through_one_replica_wakes_followers_on_the_other(
    replicas: tuple[Store, Store],
) -> None:
    writer, follower = replicas
    woken = follower.notifier.watch(event_key(NS, RUN))
    (envelope,) = await append(writer, started())
    await asyncio.wait_for(woken.wait(), WAIT)
    page = await follower.events.read(NS, RUN, 0, 10)
    assert page.envelopes == [envelope.SerializeToString()]


async def test_a_failed_append_through_one_replica_wakes_no_one_on_the_other(
    replicas: tuple[Store, Store],
) -> None:
    writer, follower = replicas
    started_run = follower.notifier.watch(event_key(NS, RUN))
    await append(writer, started())
    await asyncio.wait_for(started_run.wait(), WAIT)
    failed_run = follower.notifier.watch(event_key(NS, RUN))
    other_run = follower.notifier.watch(event_key(NS, "run-2"))
    with pytest.raises(Aborted):
        await append(writer, custom(), expectation=Expectation(last_seq=7))
    await writer.events.append(NS, "run-2", [custom()], None)
    # Notifications arrive in commit order: once run-2's has, run-1 would have had its own.
    await asyncio.wait_for(other_run.wait(), WAIT)
    assert not failed_run.is_set()


async def test_truncation_and_deletion_through_one_replica_wake_the_other(
    replicas: tuple[Store, Store],
) -> None:
    writer, follower = replicas
    await append(writer, started(), custom(), custom())
    truncated = follower.notifier.watch(event_key(NS, RUN))
    await writer.events.truncate(NS, RUN, 2)
    await asyncio.wait_for(truncated.wait(), WAIT)
    assert (await follower.events.read(NS, RUN, 0, 10)).run.first_seq == 3  # type: ignore[union-attr]
    deleted = follower.notifier.watch(event_key(NS, RUN))
    await writer.events.delete_run(NS, RUN)
    await asyncio.wait_for(deleted.wait(), WAIT)
    assert (await follower.events.read(NS, RUN, 0, 10)).run is None


# -- two servers -----------------------------------------------------------------------


@pytest.fixture
async def servers(postgres_url: str) -> AsyncIterator[tuple[Application, Application]]:
    """Two servers on one schema. Their heartbeats (and with them the followers' safety
    re-reads) are far apart, so a follower is served only if the wake-up crosses over."""
    async with (
        running_app(postgres_url, heartbeat_interval=60.0) as first,
        running_app(postgres_url, heartbeat_interval=60.0) as second,
    ):
        yield first, second


async def append_through(app: Application, workers: int, per_worker: int) -> None:
    """Start RUN, append from `workers` concurrent writers, then end the run."""
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client:

        async def writer(worker: int) -> None:
            for _ in range(per_worker):
                await client.events.append(RUN, custom(worker=worker).event)

        await asyncio.gather(*map(writer, range(workers)))
        await client.events.append(RUN, completed().event)


async def test_client_follower_on_one_server_receives_appends_through_the_other(
    servers: tuple[Application, Application],
) -> None:
    writer, reader = servers
    async with (
        statekeeper.AsyncClient(f"127.0.0.1:{writer.port}") as source,
        statekeeper.AsyncClient(f"127.0.0.1:{reader.port}") as sink,
    ):
        await source.events.append(RUN, started().event)
        replay = sink.events.replay(RUN, follow=True)
        first = await asyncio.wait_for(anext(replay), WAIT)
        appending = asyncio.create_task(append_through(writer, workers=4, per_worker=10))
        rest = await asyncio.wait_for(collect(replay), WAIT)
        await asyncio.wait_for(appending, WAIT)
    assert [first.seq, *rest] == list(range(1, 43))


async def test_replay_stream_on_one_server_sends_each_seq_once_across_servers(
    servers: tuple[Application, Application],
) -> None:
    writer, reader = servers
    async with grpc.aio.insecure_channel(f"127.0.0.1:{reader.port}") as channel:
        stub = events_pb2_grpc.EventLogServiceStub(channel)
        call: Any = stub.ReplayEvents(events_pb2.ReplayEventsRequest(run_id=RUN, follow=True))
        caught_up = await asyncio.wait_for(call.read(), WAIT)
        assert caught_up.caught_up.last_seq == 0
        appending = asyncio.create_task(append_through(writer, workers=4, per_worker=10))
        seqs = await asyncio.wait_for(streamed_seqs(call), WAIT)
        await asyncio.wait_for(appending, WAIT)
    assert seqs == list(range(1, 42))


async def streamed_seqs(call: Any) -> list[int]:
    """The seqs of every batch left on a ReplayEvents call, to the stream's end."""
    seqs = []
    while (message := await call.read()) is not grpc.aio.EOF:
        seqs.extend(envelope.seq for envelope in message.batch.envelopes)
    return seqs


async def test_follower_gets_events_whose_wake_up_was_lost_on_the_way(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        running_app(postgres_url) as writer,
        running_app(postgres_url, heartbeat_interval=0.1) as reader,
    ):
        monkeypatch.setattr(reader.store.notifier, "notify", lambda key: None)
        async with (
            statekeeper.AsyncClient(f"127.0.0.1:{writer.port}") as source,
            statekeeper.AsyncClient(f"127.0.0.1:{reader.port}") as sink,
        ):
            await source.events.append(RUN, started().event)
            replay = sink.events.replay(RUN, follow=True)
            first = await asyncio.wait_for(anext(replay), WAIT)
            await source.events.append_many(RUN, [custom().event, completed().event])
            rest = await asyncio.wait_for(collect(replay), WAIT)
    assert [first.seq, *rest] == [1, 2, 3]


async def collect(replay: AsyncIterator[events_pb2.EventEnvelope]) -> list[int]:
    return [envelope.seq async for envelope in replay]


@pytest.mark.parametrize(
    ("where", "index"),
    [
        (RunFilter(prefix="run-00001"), "event_runs_pkey"),
        (RunFilter(session_id="session-7"), "event_runs_by_session"),
        (RunFilter(terminal=True), "event_runs_by_terminal"),
        (RunFilter(prefix="run-00001", session_id="session-7"), "event_runs_by_session"),
    ],
)
async def test_a_filtered_page_of_runs_is_an_index_scan_of_a_large_table(
    postgres_url: str, where: RunFilter, index: str
) -> None:
    async with open_engine(postgres_url) as engine:
        # Nearly every run is open: the ended ones are a small range of the terminal index.
        await engine.execute(
            "INSERT INTO event_runs (namespace, run_id, session_id, first_seq, last_seq,"
            " terminal, create_us, update_us)"
            " SELECT 'default', 'run-' || lpad(n::text, 6, '0'), 'session-' || (n % 5000),"
            " 1, 1, n % 100 = 0, n, n FROM generate_series(1, 20000) AS n"
        )
        await engine.execute("ANALYZE event_runs")
        sql, params = _runs_query("default", "", where, 51)
        plan = "\n".join(row[0] for row in await engine.fetch(f"EXPLAIN {sql}", *params))
    assert f"Index Scan using {index} on event_runs" in plan
    assert "Seq Scan" not in plan
    assert "Sort" not in plan
