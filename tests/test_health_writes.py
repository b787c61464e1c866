"""Health counts a store that cannot write as down.

Besides answering a read, the store must commit a tiny write every check
interval, the way every write goes (on SQLite through the group-commit
writer and its fsync). A full disk or a database that accepts no writes
turns health NOT_SERVING, and SERVING again once writes work.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from statekeeper.v1 import snapshots_pb2, snapshots_pb2_grpc
from statekeeper_server.stores import Store
from tests.harness import running_app
from tests.private_postgres import PrivatePostgres, private_postgres
from tests.rpc_errors import error_info
from tests.test_postgres_outage import next_status
from tests.test_store_faults import assert_plain
from tests.unavailable import skip_or_fail

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ENOUGH = 10.0
"""Generous bound on waiting for something that must happen (never a speed assertion)."""
SNAPSHOT = snapshots_pb2.Snapshot(
    run_id="run-1", session_id="session-1", status=snapshots_pb2.RUN_STATUS_RUNNING
)


async def test_a_healthy_store_commits_the_write_check_again_and_again(store: Store) -> None:
    for _ in range(3):
        await store.ping()
        await store.check_writes()


class Server:
    """A running app seen through a client: its health stream and snapshots."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.snapshots = snapshots_pb2_grpc.SnapshotServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)
        self._watch = self._health.Watch(health_pb2.HealthCheckRequest())  # type: ignore[attr-defined]

    async def becomes(self, status: int) -> None:
        """Wait until health reports `status`."""
        await asyncio.wait_for(next_status(self._watch, status), ENOUGH)

    async def save_fails(self) -> grpc.aio.AioRpcError:
        """The error a snapshot save ends with."""
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await self.snapshots.SaveSnapshot(snapshots_pb2.SaveSnapshotRequest(snapshot=SNAPSHOT))
        return raised.value

    def close(self) -> None:
        self._watch.cancel()


@contextlib.asynccontextmanager
async def serving(store_url: str) -> AsyncIterator[Server]:
    """An app on `store_url` checking its store every 50 ms, serving."""
    async with (
        running_app(store_url, health_check_interval=0.05) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        server = Server(channel)
        try:
            await server.becomes(SERVING)
            yield server
        finally:
            server.close()


def assert_unavailable_in_plain_words(error: grpc.aio.AioRpcError) -> None:
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "STORE_UNAVAILABLE"
    assert_plain(error.details() or "")


# -- SQLite on a full disk -----------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB file system of this test's own (tmpfs), unmounted afterwards.

    Mounting needs the right to mount (root, as in CI); without it the test
    skips (fails in CI).
    """
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        problem = f"cannot mount a small file system: {mounted.stderr.strip()}"
        skip_or_fail(problem)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(path: Path) -> None:
    """Write `path` until the file system has no byte left."""
    with open(path, "wb", buffering=0) as filler:
        for chunk in (64 * 1024, 4096, 1):
            try:
                while True:
                    filler.write(b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise


async def test_a_file_store_on_a_full_disk_is_not_serving_until_the_disk_has_room(
    small_disk: Path,
) -> None:
    async with serving(f"file:{small_disk / 'statekeeper.db'}") as server:
        filler = small_disk / "filler"
        await asyncio.to_thread(fill, filler)
        await server.becomes(NOT_SERVING)
        assert_unavailable_in_plain_words(await server.save_fails())
        filler.unlink()
        await server.becomes(SERVING)
        reply = await server.snapshots.SaveSnapshot(
            snapshots_pb2.SaveSnapshotRequest(snapshot=SNAPSHOT)
        )
        assert reply.snapshot.version == 1


# -- PostgreSQL that accepts no writes ------------------------------------------


@pytest.fixture(scope="module")
def own_server() -> Iterator[PrivatePostgres]:
    """A PostgreSQL of this module's own: its settings change for everyone connected."""
    with private_postgres() as server:
        yield server


async def set_read_only(server: PrivatePostgres, read_only: bool) -> None:
    """Make every transaction of every session read-only (or not), as after a failover
    to a standby; sessions already open take it up with their next transaction."""
    if read_only:
        await server.execute("ALTER SYSTEM SET default_transaction_read_only = on")
    else:
        await server.execute("ALTER SYSTEM RESET default_transaction_read_only")
    await server.execute("SELECT pg_reload_conf()")


async def test_a_postgres_store_that_accepts_no_writes_is_not_serving_until_it_does(
    own_server: PrivatePostgres,
) -> None:
    async with serving(own_server.url("sk_read_only") + "&connect_timeout=2") as server:
        await set_read_only(own_server, True)
        try:
            await server.becomes(NOT_SERVING)
            error = await server.save_fails()
            assert_unavailable_in_plain_words(error)
            # Reads are still answered: only writes fail.
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await server.snapshots.LoadSnapshot(
                    snapshots_pb2.LoadSnapshotRequest(run_id="no-such-run")
                )
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            await set_read_only(own_server, False)
        await server.becomes(SERVING)
        reply = await server.snapshots.SaveSnapshot(
            snapshots_pb2.SaveSnapshotRequest(snapshot=SNAPSHOT)
        )
        assert reply.snapshot.version == 1
