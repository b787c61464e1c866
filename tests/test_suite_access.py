"""The suite's run with access control on really has it on: its servers demand the
suite's token, its clients send it, and a test's own access control is left alone."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

import statekeeper
from statekeeper.v1 import snapshots_pb2, snapshots_pb2_grpc
from tests import suite_access
from tests.auth_support import call_metadata, write_tokens
from tests.harness import ServerProcess, running_app

SNAPSHOT = snapshots_pb2.Snapshot(
    run_id="run-1", session_id="session-1", status=snapshots_pb2.RUN_STATUS_RUNNING
)


async def load_with(target: str, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    """The status of a LoadSnapshot of a missing run over a raw channel, with `metadata`."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
        try:
            await stub.LoadSnapshot(
                snapshots_pb2.LoadSnapshotRequest(run_id="run-1"), metadata=metadata, timeout=10
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@pytest.fixture
def access(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> suite_access.SuiteAccess:
    """Access control on for this test, as the run with it on turns it on."""
    made = suite_access.create(tmp_path)
    suite_access.enable(made, monkeypatch)
    return made


async def test_servers_of_the_suite_demand_a_token_exactly_when_the_run_has_access_control_on(
    tmp_path: Path,
) -> None:
    async with running_app(f"file:{tmp_path / 'statekeeper.db'}") as app:
        refused = await load_with(f"127.0.0.1:{app.port}", call_metadata("sk_not-the-suite-token"))
    expected = (
        grpc.StatusCode.UNAUTHENTICATED if suite_access.requested() else (grpc.StatusCode.NOT_FOUND)
    )
    assert refused == expected


@pytest.mark.own_access_control
async def test_a_server_of_the_run_refuses_a_token_other_than_the_suites(
    access: suite_access.SuiteAccess,
) -> None:
    async with running_app("memory:") as app:
        code = await load_with(f"127.0.0.1:{app.port}", call_metadata("sk_not-the-suite-token"))
    assert code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.own_access_control
async def test_raw_channels_of_the_run_send_the_suites_token(
    access: suite_access.SuiteAccess,
) -> None:
    async with running_app("memory:") as app:
        assert await load_with(f"127.0.0.1:{app.port}") == grpc.StatusCode.NOT_FOUND


@pytest.mark.own_access_control
async def test_clients_of_the_run_send_the_suites_token(access: suite_access.SuiteAccess) -> None:
    async with (
        running_app("memory:") as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        saved = await client.snapshots.save(SNAPSHOT)
        assert await client.snapshots.load("run-1") == saved


@pytest.mark.own_access_control
async def test_a_server_process_of_the_run_demands_the_suites_token(
    access: suite_access.SuiteAccess, tmp_path: Path
) -> None:
    server = ServerProcess(f"file:{tmp_path / 'statekeeper.db'}").start()
    try:
        refused = await load_with(server.target, call_metadata("sk_not-the-suite-token"))
        served = await load_with(server.target)
    finally:
        server.stop()
    assert (refused, served) == (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND)


@pytest.mark.own_access_control
async def test_a_server_whose_test_configures_access_control_keeps_its_own(
    access: suite_access.SuiteAccess, tmp_path: Path
) -> None:
    own = write_tokens(tmp_path / "own.toml", {"reader": ["default:read"]})
    async with running_app("memory:", auth_tokens_file=str(tmp_path / "own.toml")) as app:
        target = f"127.0.0.1:{app.port}"
        with_suite_token = await load_with(target)
        with_own_token = await load_with(target, call_metadata(own["reader"]))
    assert (with_suite_token, with_own_token) == (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
    )


def test_an_unknown_mode_stops_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(suite_access.MODE_ENV, "passwords")
    with pytest.raises(pytest.UsageError, match="tokens"):
        suite_access.requested()
