"""A corrupt checkpoint in the file store is reported by id, and recovery can fall back."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from statekeeper.v1 import checkpoints_pb2
from statekeeper_server.errors import DataLoss
from statekeeper_server.stores import Store, open_store
from statekeeper_server.stores.checkpoints import (
    RetentionOverride,
    RetentionPolicy,
    WorkflowFilter,
)
from statekeeper_server.timestamps import now_us

NS = "default"


def corrupt(db: Path, table: str, checkpoint_ids: list[str], data: bytes = b"\xff" * 8) -> None:
    """Overwrite the stored records of `checkpoint_ids` behind the store's back."""
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            f"UPDATE {table} SET data = ? WHERE checkpoint_id = ?",
            [(data, checkpoint_id) for checkpoint_id in checkpoint_ids],
        )
    conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "statekeeper.db"


async def open_file_store(db: Path) -> Store:
    return await open_store(f"file:{db}")


async def save_steps(db: Path, steps: int) -> list[str]:
    """Save `steps` checkpoints of run-1 and close the store; their ids, oldest first."""
    store = await open_file_store(db)
    ids = []
    for step in range(steps):
        saved = await store.checkpoints.save_workflow(
            NS,
            checkpoints_pb2.WorkflowCheckpoint(run_id="run-1", workflow_name="wf", step=step),
            expected_parent=None,
            retention=RetentionOverride(),
            defaults=RetentionPolicy(),
            now_us=now_us(),
        )
        ids.append(saved.checkpoint.checkpoint_id)
    await store.close()
    return ids


async def persist_agents(db: Path, count: int) -> list[str]:
    """Persist `count` checkpoints of agent-1 and close the store; their ids, oldest first."""
    store = await open_file_store(db)
    ids = []
    for n in range(count):
        checkpoint = checkpoints_pb2.AgentCheckpoint(
            agent_id="agent-1", agent_state=checkpoints_pb2.AGENT_STATE_ACTIVE
        )
        checkpoint.app_state["n"] = n
        saved = await store.checkpoints.persist_agent(
            NS,
            checkpoint,
            retention=RetentionOverride(),
            defaults=RetentionPolicy(),
            now_us=now_us(),
        )
        ids.append(saved.checkpoint.checkpoint_id)
    await store.close()
    return ids


@pytest.fixture
async def reopened(db: Path) -> AsyncIterator[list[Store]]:
    """Stores opened by a test, closed after it."""
    stores: list[Store] = []
    yield stores
    for store in stores:
        await store.close()


async def reopen(db: Path, reopened: list[Store]) -> Store:
    store = await open_file_store(db)
    reopened.append(store)
    return store


async def test_corrupt_newest_workflow_checkpoint_is_data_loss_naming_it(
    db: Path, reopened: list[Store]
) -> None:
    ids = await save_steps(db, 3)
    corrupt(db, "workflow_checkpoints", [ids[-1]])
    store = await reopen(db, reopened)

    with pytest.raises(DataLoss) as caught:
        await store.checkpoints.load_workflow(NS, "run-1", "", fallback_to_readable=False)

    assert caught.value.reason == "CORRUPT_CHECKPOINT"
    assert caught.value.metadata["checkpoint_id"] == ids[-1]
    assert caught.value.metadata["run_id"] == "run-1"


async def test_fallback_loads_the_newest_readable_workflow_checkpoint(
    db: Path, reopened: list[Store]
) -> None:
    ids = await save_steps(db, 4)
    corrupt(db, "workflow_checkpoints", [ids[3], ids[2]])
    store = await reopen(db, reopened)

    loaded = await store.checkpoints.load_workflow(NS, "run-1", "", fallback_to_readable=True)

    checkpoint = checkpoints_pb2.WorkflowCheckpoint.FromString(loaded.data)
    assert checkpoint.checkpoint_id == ids[1]
    assert checkpoint.step == 1
    assert loaded.skipped_checkpoint_ids == [ids[3], ids[2]]


async def test_fallback_walks_past_more_corrupt_records_than_one_read_fetches(
    db: Path, reopened: list[Store]
) -> None:
    ids = await save_steps(db, 150)
    corrupt(db, "workflow_checkpoints", ids[1:])
    store = await reopen(db, reopened)

    loaded = await store.checkpoints.load_workflow(NS, "run-1", "", fallback_to_readable=True)

    assert checkpoints_pb2.WorkflowCheckpoint.FromString(loaded.data).checkpoint_id == ids[0]
    assert len(loaded.skipped_checkpoint_ids) == 149


async def test_fallback_with_nothing_readable_is_data_loss(db: Path, reopened: list[Store]) -> None:
    ids = await save_steps(db, 2)
    corrupt(db, "workflow_checkpoints", ids)
    store = await reopen(db, reopened)

    with pytest.raises(DataLoss) as caught:
        await store.checkpoints.load_workflow(NS, "run-1", "", fallback_to_readable=True)

    assert caught.value.metadata["checkpoint_id"] == ids[-1]


async def test_a_corrupt_older_checkpoint_does_not_affect_loading_the_newest(
    db: Path, reopened: list[Store]
) -> None:
    ids = await save_steps(db, 3)
    corrupt(db, "workflow_checkpoints", [ids[0]])
    store = await reopen(db, reopened)

    loaded = await store.checkpoints.load_workflow(NS, "run-1", "", fallback_to_readable=False)

    assert checkpoints_pb2.WorkflowCheckpoint.FromString(loaded.data).checkpoint_id == ids[-1]


async def test_a_record_that_parses_but_is_not_its_own_checkpoint_is_corrupt(
    db: Path, reopened: list[Store]
) -> None:
    ids = await save_steps(db, 2)
    corrupt(db, "workflow_checkpoints", [ids[-1]], data=b"")
    store = await reopen(db, reopened)

    with pytest.raises(DataLoss) as caught:
        await store.checkpoints.load_workflow(NS, "run-1", ids[-1], fallback_to_readable=False)

    assert caught.value.metadata["checkpoint_id"] == ids[-1]


async def test_listing_over_a_corrupt_checkpoint_reports_it(
    db: Path, reopened: list[Store]
) -> None:
    ids = await save_steps(db, 3)
    corrupt(db, "workflow_checkpoints", [ids[1]])
    store = await reopen(db, reopened)

    with pytest.raises(DataLoss, match=ids[1]):
        await store.checkpoints.list_workflow_history(
            NS, "run-1", WorkflowFilter(), before="", page_size=10, page_token=""
        )


async def test_corrupt_newest_agent_checkpoint_is_data_loss_naming_it(
    db: Path, reopened: list[Store]
) -> None:
    ids = await persist_agents(db, 2)
    corrupt(db, "agent_checkpoints", [ids[-1]])
    store = await reopen(db, reopened)

    with pytest.raises(DataLoss) as caught:
        await store.checkpoints.recover_agent(NS, "agent-1", fallback_to_readable=False)

    assert caught.value.reason == "CORRUPT_CHECKPOINT"
    assert caught.value.metadata["checkpoint_id"] == ids[-1]
    assert caught.value.metadata["agent_id"] == "agent-1"


async def test_listing_agents_over_a_corrupt_newest_checkpoint_reports_it(
    db: Path, reopened: list[Store]
) -> None:
    ids = await persist_agents(db, 2)
    corrupt(db, "agent_checkpoints", [ids[-1]])
    store = await reopen(db, reopened)

    with pytest.raises(DataLoss) as caught:
        await store.checkpoints.list_latest_agents(NS, "", page_size=10, page_token="")

    assert caught.value.metadata["checkpoint_id"] == ids[-1]
    assert caught.value.metadata["agent_id"] == "agent-1"


async def test_agent_recovery_falls_back_to_the_newest_readable_checkpoint(
    db: Path, reopened: list[Store]
) -> None:
    ids = await persist_agents(db, 3)
    corrupt(db, "agent_checkpoints", [ids[-1]])
    store = await reopen(db, reopened)

    recovered = await store.checkpoints.recover_agent(NS, "agent-1", fallback_to_readable=True)

    checkpoint = checkpoints_pb2.AgentCheckpoint.FromString(recovered.data)
    assert checkpoint.checkpoint_id == ids[1]
    assert checkpoint.app_state["n"] == 1
    assert recovered.skipped_checkpoint_ids == [ids[-1]]
