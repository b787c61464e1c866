"""Checkpoints across two replicas (two stores opened on one PostgreSQL schema)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest

from statekeeper.v1 import checkpoints_pb2
from statekeeper_server.errors import Aborted
from statekeeper_server.stores import Store, open_store
from statekeeper_server.stores.checkpoints import (
    RetentionOverride,
    RetentionPolicy,
    WorkflowFilter,
)
from statekeeper_server.timestamps import from_timestamp, now_us

NS = "default"
SAVES_PER_REPLICA = 10
KEEP_ALL = RetentionPolicy()
SERVER_RETENTION = RetentionOverride()
T = TypeVar("T")

Replicas = tuple[Store, Store]


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[Replicas]:
    first = await open_store(postgres_url)
    second = await open_store(postgres_url)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


def through_both(replicas: Replicas) -> list[Store]:
    """SAVES_PER_REPLICA turns of each replica, interleaved."""
    return [replica for _ in range(SAVES_PER_REPLICA) for replica in replicas]


async def save(
    replica: Store,
    step: int,
    *,
    expected_parent: str | None = None,
    at_us: int | None = None,
) -> checkpoints_pb2.WorkflowCheckpoint:
    saved = await replica.checkpoints.save_workflow(
        NS,
        checkpoints_pb2.WorkflowCheckpoint(run_id="run-1", workflow_name="wf", step=step),
        expected_parent=expected_parent,
        retention=SERVER_RETENTION,
        defaults=KEEP_ALL,
        now_us=now_us() if at_us is None else at_us,
    )
    return checkpoints_pb2.WorkflowCheckpoint.FromString(saved.data)


async def persist(replica: Store, n: int) -> checkpoints_pb2.AgentCheckpoint:
    checkpoint = checkpoints_pb2.AgentCheckpoint(
        agent_id="agent-1", agent_state=checkpoints_pb2.AGENT_STATE_ACTIVE
    )
    checkpoint.app_state["n"] = n
    saved = await replica.checkpoints.persist_agent(
        NS, checkpoint, retention=SERVER_RETENTION, defaults=KEEP_ALL, now_us=now_us()
    )
    return checkpoints_pb2.AgentCheckpoint.FromString(saved.data)


async def race(calls: list[Awaitable[T]]) -> list[T | BaseException]:
    return await asyncio.gather(*calls, return_exceptions=True)


async def history(replica: Store) -> list[checkpoints_pb2.WorkflowCheckpoint]:
    page = await replica.checkpoints.list_workflow_history(
        NS, "run-1", WorkflowFilter(), before="", page_size=1000, page_token=""
    )
    return [checkpoints_pb2.WorkflowCheckpoint.FromString(data) for data in page.checkpoints]


def assert_one_chain(newest_first: list[checkpoints_pb2.WorkflowCheckpoint]) -> None:
    """Each checkpoint's parent is the next older one; ids and times follow save order."""
    for newer, older in itertools.pairwise(newest_first):
        assert newer.parent_checkpoint_id == older.checkpoint_id
        assert newer.checkpoint_id > older.checkpoint_id
        assert from_timestamp(newer.create_time) >= from_timestamp(older.create_time)
    assert newest_first[-1].parent_checkpoint_id == ""


async def test_saves_on_one_parent_through_two_replicas_have_one_winner(
    replicas: Replicas,
) -> None:
    first = await save(replicas[0], 0)

    results = await race(
        [
            save(replica, step, expected_parent=first.checkpoint_id)
            for step, replica in enumerate(through_both(replicas), start=1)
        ]
    )

    winners = [r for r in results if isinstance(r, checkpoints_pb2.WorkflowCheckpoint)]
    losers = [r for r in results if isinstance(r, Aborted)]
    assert len(winners) == 1
    assert len(losers) == len(results) - 1
    assert {error.reason for error in losers} == {"PARENT_MISMATCH"}
    assert {error.metadata["actual_parent"] for error in losers} == {winners[0].checkpoint_id}
    assert [c.checkpoint_id for c in await history(replicas[1])] == [
        winners[0].checkpoint_id,
        first.checkpoint_id,
    ]


async def test_first_saves_through_two_replicas_create_the_run_once(replicas: Replicas) -> None:
    results = await race(
        [
            save(replica, step, expected_parent="")
            for step, replica in enumerate(through_both(replicas))
        ]
    )

    winners = [r for r in results if isinstance(r, checkpoints_pb2.WorkflowCheckpoint)]
    losers = [r for r in results if isinstance(r, Aborted)]
    assert len(winners) == 1
    assert len(losers) == len(results) - 1
    assert {error.metadata["actual_parent"] for error in losers} == {winners[0].checkpoint_id}
    assert await history(replicas[0]) == winners


async def test_unconditional_saves_through_two_replicas_form_one_strict_history(
    replicas: Replicas,
) -> None:
    instant = now_us()
    results = await race(
        [save(replica, step, at_us=instant) for step, replica in enumerate(through_both(replicas))]
    )

    saved = [r for r in results if isinstance(r, checkpoints_pb2.WorkflowCheckpoint)]
    assert len(saved) == len(results)
    listed = await history(replicas[1])
    assert sorted(c.checkpoint_id for c in listed) == sorted(c.checkpoint_id for c in saved)
    assert_one_chain(listed)
    loaded = await replicas[0].checkpoints.load_workflow(
        NS, "run-1", "", fallback_to_readable=False
    )
    assert checkpoints_pb2.WorkflowCheckpoint.FromString(loaded.data) == listed[0]


async def test_agent_checkpoints_through_two_replicas_recover_the_last_committed(
    replicas: Replicas,
) -> None:
    results = await race([persist(replica, n) for n, replica in enumerate(through_both(replicas))])

    saved = [r for r in results if isinstance(r, checkpoints_pb2.AgentCheckpoint)]
    assert len(saved) == len(results)
    page = await replicas[1].checkpoints.list_agent_history(
        NS, "agent-1", before="", page_size=1000, page_token=""
    )
    ids = [
        checkpoints_pb2.AgentCheckpoint.FromString(data).checkpoint_id for data in page.checkpoints
    ]
    assert ids == sorted((c.checkpoint_id for c in saved), reverse=True)
    recovered = await replicas[0].checkpoints.recover_agent(
        NS, "agent-1", fallback_to_readable=False
    )
    assert checkpoints_pb2.AgentCheckpoint.FromString(recovered.data).checkpoint_id == ids[0]


async def test_keep_last_applied_by_racing_saves_keeps_exactly_that_many(
    replicas: Replicas,
) -> None:
    results = await race(
        [
            replica.checkpoints.save_workflow(
                NS,
                checkpoints_pb2.WorkflowCheckpoint(run_id="run-1", workflow_name="wf", step=step),
                expected_parent=None,
                retention=RetentionOverride(keep_last=3),
                defaults=KEEP_ALL,
                now_us=now_us(),
            )
            for step, replica in enumerate(through_both(replicas))
        ]
    )

    saved = [r for r in results if not isinstance(r, BaseException)]
    assert len(saved) == len(results)
    assert sum(r.dropped_count for r in saved) == len(saved) - 3
    listed = await history(replicas[0])
    assert len(listed) == 3
    assert listed[0].checkpoint_id == max(r.checkpoint.checkpoint_id for r in saved)


async def test_sweeps_on_both_replicas_at_once_drop_each_checkpoint_once(
    replicas: Replicas,
) -> None:
    for step in range(6):
        await save(replicas[step % 2], step)

    dropped = await race(
        [
            replica.checkpoints.sweep(RetentionPolicy(keep_last=2), now_us())
            for replica in (*replicas, *replicas)
        ]
    )

    assert sum(d for d in dropped if isinstance(d, int)) == 4
    assert [c.step for c in await history(replicas[1])] == [5, 4]


async def test_a_delete_racing_saves_through_the_other_replica_leaves_one_history(
    replicas: Replicas,
) -> None:
    await save(replicas[0], 0)
    await race(
        [save(replicas[0], step) for step in range(1, SAVES_PER_REPLICA + 1)]
        + [replicas[1].checkpoints.delete_workflow(NS, "run-1")]
    )

    last = await save(replicas[1], SAVES_PER_REPLICA + 1)

    listed = await history(replicas[0])
    assert listed[0] == last
    assert_one_chain(listed)
    loaded = await replicas[1].checkpoints.load_workflow(
        NS, "run-1", "", fallback_to_readable=False
    )
    assert checkpoints_pb2.WorkflowCheckpoint.FromString(loaded.data) == last


async def test_the_newest_per_run_listed_through_one_replica_follows_saves_through_the_other(
    replicas: Replicas,
) -> None:
    await save(replicas[0], 0)
    newest = await save(replicas[1], 1)

    page = await replicas[0].checkpoints.list_latest_workflows(
        NS, WorkflowFilter(workflow_name="wf"), page_size=10, page_token=""
    )

    assert [checkpoints_pb2.WorkflowCheckpoint.FromString(data) for data in page.checkpoints] == [
        newest
    ]
