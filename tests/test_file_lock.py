"""One server process per database file, whatever name the file is reached by.

A second `statekeeper serve` on a file that another one serves must refuse
to start, whether it names the file by the same path, a hard link or a
symlink: two servers on one file would each keep their own WAL and corrupt
it. The lock is the file's own, so it goes with the first server.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import statekeeper
from statekeeper.v1 import snapshots_pb2
from tests.harness import ServerProcess

SNAPSHOT = snapshots_pb2.Snapshot(
    run_id="run-1", session_id="session-1", status=snapshots_pb2.RUN_STATUS_RUNNING
)


def same_path(database: Path) -> Path:
    return database


def hard_link(database: Path) -> Path:
    other = database.with_name("hard-link.db")
    os.link(database, other)
    return other


def symlink(database: Path) -> Path:
    other = database.parent / "elsewhere" / "symlink.db"
    other.parent.mkdir()
    other.symlink_to(database)
    return other


OTHER_NAMES = [
    pytest.param(same_path, id="same-path"),
    pytest.param(hard_link, id="hard-link"),
    pytest.param(symlink, id="symlink"),
]


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "statekeeper.db"


@pytest.fixture
def first_server(database: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(f"file:{database}").start()
    try:
        yield server
    finally:
        server.stop()


async def save_and_load(server: ServerProcess, expected_version: int | None) -> int:
    """Save the snapshot through `server` and read back the version it got."""
    async with statekeeper.AsyncClient(server.target, timeout=10) as client:
        saved = await client.snapshots.save(SNAPSHOT, expected_version=expected_version)
        loaded = await client.snapshots.load(SNAPSHOT.run_id)
    assert loaded.version == saved.version
    return saved.version


@pytest.mark.parametrize("other_name", OTHER_NAMES)
def test_a_second_server_on_the_same_file_is_refused_with_a_clear_message(
    first_server: ServerProcess, database: Path, other_name: Callable[[Path], Path]
) -> None:
    assert first_server.process is not None
    other = other_name(database)
    with pytest.raises(RuntimeError, match="in use by another statekeeper process") as refused:
        ServerProcess(f"file:{other}").start()
    assert f"pid {first_server.process.pid}" in str(refused.value)


@pytest.mark.parametrize("other_name", OTHER_NAMES)
def test_a_refused_server_leaves_the_first_one_serving_alone(
    first_server: ServerProcess, database: Path, other_name: Callable[[Path], Path]
) -> None:
    assert asyncio.run(save_and_load(first_server, None)) == 1
    other = other_name(database)
    with pytest.raises(RuntimeError):
        ServerProcess(f"file:{other}").start()
    # The refused server opened nothing: no log of its own beside the name it was given.
    assert not Path(f"{other}-wal").exists() or other.resolve() == database
    assert asyncio.run(save_and_load(first_server, 1)) == 2


def test_the_file_can_be_served_under_another_name_once_the_first_server_stopped(
    first_server: ServerProcess, database: Path
) -> None:
    assert asyncio.run(save_and_load(first_server, None)) == 1
    assert first_server.terminate() == 0
    second = ServerProcess(f"file:{hard_link(database)}").start()
    try:
        assert asyncio.run(save_and_load(second, 1)) == 2
    finally:
        second.stop()


def test_no_lock_file_is_left_beside_the_database(
    first_server: ServerProcess, database: Path
) -> None:
    assert sorted(path.name for path in database.parent.iterdir()) == [
        "statekeeper.db",
        "statekeeper.db-shm",
        "statekeeper.db-wal",
    ]
