"""Large request bodies holding JSON values are decoded and checked in worker processes:
what they refuse reaches the caller exactly as a check on the event loop would say it, and
a worker that dies is replaced without the caller noticing."""

from __future__ import annotations

import os
import pickle
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from pydantic import ValidationError

from statekeeper.v1 import snapshots_pb2, snapshots_pb2_grpc
from statekeeper_server import request_decoding
from statekeeper_server.config import Settings
from statekeeper_server.errors import InvalidArgument, ServiceError, TooLarge, Unavailable
from statekeeper_server.limits import INLINE_CHECK_BYTES, MAX_JSON_DEPTH
from statekeeper_server.request_decoding import CheckWorkers, decode_checked
from tests.harness import running_app
from tests.rpc_errors import error_details


def snapshot_request(metadata: dict[str, Any]) -> snapshots_pb2.SaveSnapshotRequest:
    snapshot = snapshots_pb2.Snapshot(
        run_id="run-1", session_id="s", status=snapshots_pb2.RUN_STATUS_RUNNING
    )
    snapshot.request.metadata.update(metadata)
    return snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot)


def large(extra: dict[str, Any] | None = None) -> snapshots_pb2.SaveSnapshotRequest:
    """A request well over INLINE_CHECK_BYTES, so the server checks it in a worker."""
    request = snapshot_request({f"k{index:05d}": "v" * 16 for index in range(4 * 1024)})
    if extra:
        request.snapshot.request.metadata.update(extra)
    assert request.ByteSize() > 4 * INLINE_CHECK_BYTES
    return request


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1.0}
    for _ in range(depth - 1):
        value = {"d": value}
    return value


@pytest.fixture
def workers() -> Iterator[CheckWorkers]:
    pool = CheckWorkers(1)
    yield pool
    pool.close()


def test_a_refusal_crosses_processes_whole() -> None:
    for error in (
        InvalidArgument("snapshot.request.metadata", "is too deep", "JSON_TOO_DEEP"),
        TooLarge("RECORD_TOO_LARGE", "snapshot", 3_000_000, 2_000_000, "a snapshot"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert (copy.reason, copy.message, copy.metadata) == (
            error.reason,
            error.message,
            error.metadata,
        )
        assert copy.to_status().code == error.to_status().code


async def test_a_large_body_is_checked_in_another_process(workers: CheckWorkers) -> None:
    await workers.check(snapshots_pb2.SaveSnapshotRequest, large().SerializeToString())
    assert workers.pids
    assert os.getpid() not in workers.pids


async def test_a_worker_refuses_what_the_event_loop_would(workers: CheckWorkers) -> None:
    body = large({"deep": nested(MAX_JSON_DEPTH + 1)}).SerializeToString()
    with pytest.raises(ServiceError) as inline:
        decode_checked(snapshots_pb2.SaveSnapshotRequest, body)
    with pytest.raises(ServiceError) as in_worker:
        await workers.check(snapshots_pb2.SaveSnapshotRequest, body)
    assert type(in_worker.value) is type(inline.value)
    assert in_worker.value.message == inline.value.message
    assert "snapshot.request.metadata" in in_worker.value.message


async def test_a_worker_that_dies_is_replaced(workers: CheckWorkers) -> None:
    body = large().SerializeToString()
    await workers.check(snapshots_pb2.SaveSnapshotRequest, body)
    for pid in workers.pids:
        os.kill(pid, signal.SIGKILL)
    await workers.check(snapshots_pb2.SaveSnapshotRequest, body)
    assert workers.pids


def _die(message_name: str, data: bytes) -> None:
    """A check that takes its worker process down with it."""
    os._exit(3)


async def test_a_body_whose_check_keeps_killing_workers_is_unavailable_to_retry(
    workers: CheckWorkers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(request_decoding, "_verdict", _die)
    with pytest.raises(Unavailable) as refused:
        await workers.check(snapshots_pb2.SaveSnapshotRequest, large().SerializeToString())
    assert refused.value.reason == "CHECK_UNAVAILABLE"
    monkeypatch.undo()
    await workers.check(snapshots_pb2.SaveSnapshotRequest, large().SerializeToString())


def test_at_least_one_check_worker_is_required() -> None:
    with pytest.raises(ValidationError):
        Settings(check_workers=0)
    with pytest.raises(ValidationError):
        Settings(check_workers=65)
    assert Settings(check_workers=1).check_workers == 1


@pytest.fixture
async def snapshots(store_url: str) -> AsyncIterator[snapshots_pb2_grpc.SnapshotServiceAsyncStub]:
    async with (
        running_app(store_url) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        yield snapshots_pb2_grpc.SnapshotServiceStub(channel)


async def test_a_large_body_a_worker_refuses_is_invalid_argument_and_stores_nothing(
    snapshots: snapshots_pb2_grpc.SnapshotServiceAsyncStub,
) -> None:
    request = large({"bad": nested(MAX_JSON_DEPTH + 1)})
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await snapshots.SaveSnapshot(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, fields = error_details(refused.value)
    assert info.reason == "INVALID_ARGUMENT"
    assert fields
    assert fields[0].startswith("snapshot.request.metadata")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await snapshots.LoadSnapshot(snapshots_pb2.LoadSnapshotRequest(run_id="run-1"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_large_body_a_worker_passes_is_stored_whole(
    snapshots: snapshots_pb2_grpc.SnapshotServiceAsyncStub,
) -> None:
    request = large()
    await snapshots.SaveSnapshot(request)
    loaded = await snapshots.LoadSnapshot(snapshots_pb2.LoadSnapshotRequest(run_id="run-1"))
    assert loaded.snapshot.request.metadata == request.snapshot.request.metadata
    assert isinstance(loaded.snapshot.request.metadata, struct_pb2.Struct)
