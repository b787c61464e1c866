"""SnapshotService end to end: a real server on a free port, through the client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

import statekeeper
from statekeeper.errors import StatekeeperError
from statekeeper.v1 import snapshots_pb2, snapshots_pb2_grpc
from tests.harness import running_app
from tests.rpc_errors import bad_request_fields, error_info


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[statekeeper.AsyncClient]:
    async with (
        running_app(store_url) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as connected,
    ):
        yield connected


def snapshot(run_id: str = "run-1", **fields: object) -> snapshots_pb2.Snapshot:
    values: dict[str, object] = {
        "session_id": "session-1",
        "status": snapshots_pb2.RUN_STATUS_RUNNING,
    }
    values.update(fields)
    return snapshots_pb2.Snapshot(run_id=run_id, **values)  # type: ignore[arg-type]


async def test_saved_snapshot_loads_back_identical(client: statekeeper.AsyncClient) -> None:
    original = snapshot(iteration=3, last_finish=1)
    original.request.tools.add(name="search").parameters.update({"type": "object"})
    saved = await client.snapshots.save(original)
    loaded = await client.snapshots.load("run-1")
    assert loaded == saved
    assert saved.version == 1


async def test_list_iterates_across_pages(client: statekeeper.AsyncClient) -> None:
    await asyncio.gather(*(client.snapshots.save(snapshot(f"run-{i:02d}")) for i in range(12)))
    run_ids = [s.run_id async for s in client.snapshots.list(page_size=5)]
    assert run_ids == [f"run-{i:02d}" for i in range(12)]


async def test_page_size_above_maximum_is_lowered(client: statekeeper.AsyncClient) -> None:
    await asyncio.gather(*(client.snapshots.save(snapshot(f"run-{i:04d}")) for i in range(1001)))
    stub = snapshots_pb2_grpc.SnapshotServiceStub(client.channel)
    page = await stub.ListSnapshots(snapshots_pb2.ListSnapshotsRequest(page_size=5000))
    assert len(page.snapshots) == 1000
    assert page.next_page_token


async def test_delete_is_idempotent(client: statekeeper.AsyncClient) -> None:
    await client.snapshots.save(snapshot())
    assert await client.snapshots.delete("run-1") is True
    assert await client.snapshots.delete("run-1") is False


async def test_missing_snapshot_is_not_found_with_reason(client: statekeeper.AsyncClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.snapshots.load("missing")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).reason == "SNAPSHOT_NOT_FOUND"


async def test_version_mismatch_is_aborted_with_current_version(
    client: statekeeper.AsyncClient,
) -> None:
    await client.snapshots.save(snapshot())
    await client.snapshots.save(snapshot())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.snapshots.save(snapshot(), expected_version=1)
    assert caught.value.code() == grpc.StatusCode.ABORTED
    info = error_info(caught.value)
    assert info.reason == "VERSION_MISMATCH"
    assert info.metadata["current_version"] == "2"


@pytest.mark.parametrize(
    ("run_id", "reason"),
    [
        ("../../etc/passwd", "path"),
        ("", "empty"),
        ("r" * 129, "too long"),
        ("has space", "space"),
        ("-leading-dash", "leading dash"),
    ],
)
async def test_invalid_run_id_is_invalid_argument_naming_the_field(
    client: statekeeper.AsyncClient, run_id: str, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.snapshots.save(snapshot(run_id))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, reason
    assert bad_request_fields(caught.value) == ["snapshot.run_id"]


async def test_run_id_of_128_characters_is_accepted(client: statekeeper.AsyncClient) -> None:
    saved = await client.snapshots.save(snapshot("r" * 128))
    assert saved.version == 1


@pytest.mark.parametrize(
    ("request_message", "field"),
    [
        (snapshots_pb2.SaveSnapshotRequest(), "snapshot"),
        (
            snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot(session_id="")),
            "snapshot.session_id",
        ),
        (snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot(status=0)), "snapshot.status"),
        (snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot(status=99)), "snapshot.status"),
        (
            snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot(current_state=42)),
            "snapshot.current_state",
        ),
        (
            snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot(last_finish=42)),
            "snapshot.last_finish",
        ),
        (
            snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot(), expected_version=-1),
            "expected_version",
        ),
    ],
)
async def test_invalid_save_request_names_the_field(
    client: statekeeper.AsyncClient, request_message: snapshots_pb2.SaveSnapshotRequest, field: str
) -> None:
    stub = snapshots_pb2_grpc.SnapshotServiceStub(client.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SaveSnapshot(request_message)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == [field]
    assert error_info(caught.value).metadata["field"] == field


async def test_negative_page_size_is_invalid_argument(client: statekeeper.AsyncClient) -> None:
    stub = snapshots_pb2_grpc.SnapshotServiceStub(client.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListSnapshots(snapshots_pb2.ListSnapshotsRequest(page_size=-1))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == ["page_size"]


async def test_invalid_page_token_is_invalid_argument(client: statekeeper.AsyncClient) -> None:
    stub = snapshots_pb2_grpc.SnapshotServiceStub(client.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListSnapshots(snapshots_pb2.ListSnapshotsRequest(page_token="garbage"))
    assert bad_request_fields(caught.value) == ["page_token"]


async def test_invalid_namespace_header_is_invalid_argument(store_url: str) -> None:
    async with (
        running_app(store_url) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}", namespace="bad ns") as client,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.snapshots.load("run-1")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == ["x-statekeeper-namespace"]


async def test_clients_of_different_namespaces_do_not_see_each_other(store_url: str) -> None:
    async with running_app(store_url) as app:
        target = f"127.0.0.1:{app.port}"
        async with (
            statekeeper.AsyncClient(target, namespace="tenant-a") as a,
            statekeeper.AsyncClient(target, namespace="tenant-b") as b,
        ):
            await a.snapshots.save(snapshot())
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await b.snapshots.load("run-1")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_blocking_client_has_the_same_methods(store_url: str) -> None:
    async with running_app(store_url) as app:

        def use_blocking_client() -> tuple[int, list[str], bool]:
            with statekeeper.Client(f"127.0.0.1:{app.port}") as client:
                saved = client.snapshots.save(snapshot())
                listed = [s.run_id for s in client.snapshots.list()]
                return saved.version, listed, client.snapshots.delete("run-1")

        assert await asyncio.to_thread(use_blocking_client) == (1, ["run-1"], True)


async def test_both_clients_raise_a_refusal_with_its_reason_and_facts(
    store_url: str,
) -> None:
    async with (
        running_app(store_url) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        await client.snapshots.save(snapshot())
        with pytest.raises(StatekeeperError) as from_async:
            await client.snapshots.save(snapshot(), expected_version=7)

        def save_blocking() -> StatekeeperError:
            with statekeeper.Client(f"127.0.0.1:{app.port}") as blocking:
                try:
                    blocking.snapshots.save(snapshot(), expected_version=7)
                except StatekeeperError as error:
                    return error
            raise AssertionError("the save was not refused")

        from_blocking = await asyncio.to_thread(save_blocking)
    for error in (from_async.value, from_blocking):
        assert error.code() == grpc.StatusCode.ABORTED
        assert error.reason == "VERSION_MISMATCH"
        assert error.info is not None
        assert error.info.metadata["current_version"] == "1"
    assert str(from_async.value) == str(from_blocking)


async def test_client_applies_its_default_deadline(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def slow_load(*args: object) -> object:
        await asyncio.sleep(5)
        raise AssertionError("the call should have timed out")

    async with (
        running_app(store_url) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}", timeout=0.2) as client,
    ):
        monkeypatch.setattr(app.store.snapshots, "load", slow_load)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.snapshots.load("run-1")
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
