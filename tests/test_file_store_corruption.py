"""A corrupt record in the file store is reported, never skipped or fatal."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from statekeeper.v1 import snapshots_pb2
from statekeeper_server.errors import DataLoss
from statekeeper_server.stores import open_store
from statekeeper_server.stores.snapshots import SnapshotFilter


async def store_with_corrupt_snapshot(tmp_path: Path) -> str:
    url = f"file:{tmp_path / 'statekeeper.db'}"
    store = await open_store(url)
    for run_id in ("run-a", "run-b", "run-c"):
        await store.snapshots.save(
            "default",
            snapshots_pb2.Snapshot(run_id=run_id, session_id="s", status=1),
            None,
        )
    await store.close()
    conn = sqlite3.connect(tmp_path / "statekeeper.db")
    conn.execute("UPDATE snapshots SET data = x'ffffffff' WHERE run_id = 'run-b'")
    conn.commit()
    conn.close()
    return url


async def test_loading_a_corrupt_snapshot_is_data_loss_naming_the_run(tmp_path: Path) -> None:
    store = await open_store(await store_with_corrupt_snapshot(tmp_path))
    try:
        with pytest.raises(DataLoss) as caught:
            await store.snapshots.load("default", "run-b")
        assert caught.value.metadata["run_id"] == "run-b"
        loaded = snapshots_pb2.Snapshot.FromString(await store.snapshots.load("default", "run-a"))
        assert loaded.run_id == "run-a"
    finally:
        await store.close()


async def test_listing_over_a_corrupt_snapshot_reports_it(tmp_path: Path) -> None:
    store = await open_store(await store_with_corrupt_snapshot(tmp_path))
    try:
        with pytest.raises(DataLoss, match="run-b"):
            await store.snapshots.list("default", SnapshotFilter(), 50, "")
    finally:
        await store.close()
