"""Snapshot compare-and-set across two replicas (two stores opened on one schema)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from statekeeper.v1 import snapshots_pb2
from statekeeper_server.errors import Aborted
from statekeeper_server.stores import Store, open_store

NS = "default"
SAVES_PER_REPLICA = 10


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[Store, Store]]:
    first = await open_store(postgres_url)
    second = await open_store(postgres_url)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


def snapshot(iteration: int) -> snapshots_pb2.Snapshot:
    return snapshots_pb2.Snapshot(
        run_id="run-1",
        session_id="session-1",
        status=snapshots_pb2.RUN_STATUS_RUNNING,
        iteration=iteration,
    )


async def saved_snapshot(
    replica: Store, saving: snapshots_pb2.Snapshot, expected_version: int | None
) -> snapshots_pb2.Snapshot:
    """Save `saving` through `replica`; the snapshot as stored."""
    return snapshots_pb2.Snapshot.FromString(
        await replica.snapshots.save(NS, saving, expected_version)
    )


async def loaded_snapshot(replica: Store) -> snapshots_pb2.Snapshot:
    return snapshots_pb2.Snapshot.FromString(await replica.snapshots.load(NS, "run-1"))


async def outcomes(
    replicas: tuple[Store, Store], expected_version: int | None
) -> list[snapshots_pb2.Snapshot | BaseException]:
    """Race SAVES_PER_REPLICA saves through each replica at once."""
    saves = [
        saved_snapshot(replica, snapshot(index), expected_version)
        for index in range(SAVES_PER_REPLICA)
        for replica in replicas
    ]
    return await asyncio.gather(*saves, return_exceptions=True)


async def test_racing_first_saves_through_two_replicas_create_the_run_once(
    replicas: tuple[Store, Store],
) -> None:
    results = await outcomes(replicas, expected_version=0)
    saved = [result for result in results if isinstance(result, snapshots_pb2.Snapshot)]
    lost = [result for result in results if isinstance(result, Aborted)]
    assert [stored.version for stored in saved] == [1]
    assert len(lost) == len(results) - 1
    assert {error.metadata["current_version"] for error in lost} == {"1"}


async def test_racing_saves_on_one_version_through_two_replicas_have_one_winner(
    replicas: tuple[Store, Store],
) -> None:
    await replicas[0].snapshots.save(NS, snapshot(0), None)
    results = await outcomes(replicas, expected_version=1)
    saved = [result for result in results if isinstance(result, snapshots_pb2.Snapshot)]
    assert [stored.version for stored in saved] == [2]
    assert all(isinstance(result, Aborted) for result in results if result not in saved)
    loaded = await loaded_snapshot(replicas[1])
    assert loaded.iteration == saved[0].iteration


async def test_racing_unconditional_saves_through_two_replicas_each_get_a_new_version(
    replicas: tuple[Store, Store],
) -> None:
    results = await outcomes(replicas, expected_version=None)
    versions = sorted(
        result.version for result in results if isinstance(result, snapshots_pb2.Snapshot)
    )
    assert versions == list(range(1, 2 * SAVES_PER_REPLICA + 1))
    assert (await loaded_snapshot(replicas[0])).version == 2 * SAVES_PER_REPLICA


async def test_a_save_through_one_replica_is_loaded_through_the_other(
    replicas: tuple[Store, Store],
) -> None:
    stored = await replicas[0].snapshots.save(NS, snapshot(7), None)
    assert await replicas[1].snapshots.load(NS, "run-1") == stored
