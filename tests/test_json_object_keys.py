"""How wide a JSON object may be, on every store: an object of more than
MAX_JSON_OBJECT_KEYS keys anywhere in a request is refused naming the field, and
nothing is stored; one at the limit is stored and reads back. Large requests are
screened on their wire bytes, so their refusals must name the field as small
ones do."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from statekeeper.v1 import (
    events_pb2,
    events_pb2_grpc,
    snapshots_pb2,
    snapshots_pb2_grpc,
)
from statekeeper_server.limits import INLINE_CHECK_BYTES, MAX_JSON_DEPTH, MAX_JSON_OBJECT_KEYS
from tests.harness import running_app
from tests.rpc_errors import error_details

TOO_WIDE = "must not hold a JSON object of more than"


@pytest.fixture
async def channel(store_url: str) -> AsyncIterator[grpc.aio.Channel]:
    async with (
        running_app(store_url) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as connected,
    ):
        yield connected


def wide(keys: int, offset: int = 0) -> dict[str, float]:
    """An object of `keys` number fields."""
    return {f"k{offset + index:05d}": float(index) for index in range(keys)}


def as_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(value)
    return result


def snapshot(metadata: struct_pb2.Struct) -> snapshots_pb2.Snapshot:
    result = snapshots_pb2.Snapshot(
        run_id="run-1", session_id="s", status=snapshots_pb2.RUN_STATUS_RUNNING
    )
    result.request.metadata.CopyFrom(metadata)
    return result


def event_input(data: dict[str, Any]) -> events_pb2.EventInput:
    event = events_pb2.AgentEvent(custom=events_pb2.CustomEvent(type="note"))
    event.custom.data.CopyFrom(as_struct(data))
    return events_pb2.EventInput(event=event)


async def refusal(call: Any) -> tuple[grpc.StatusCode, str, list[str]]:
    """The code, message and named fields of the error `call` fails with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    _, fields = error_details(caught.value)
    return caught.value.code(), caught.value.details() or "", fields


async def assert_no_snapshot(stub: snapshots_pb2_grpc.SnapshotServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.LoadSnapshot(snapshots_pb2.LoadSnapshotRequest(run_id="run-1"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def assert_no_events(stub: events_pb2_grpc.EventLogServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.ListEvents(events_pb2.ListEventsRequest(run_id="run-1"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def delimited(number: int, body: bytes) -> bytes:
    """A length-delimited field (number < 16) in protobuf's wire format."""
    size, length = len(body), bytearray()
    while size > 0x7F:
        length.append(size & 0x7F | 0x80)
        size >>= 7
    length.append(size)
    return bytes([number << 3 | 2]) + bytes(length) + body


async def test_an_object_wider_than_the_key_limit_is_refused_naming_the_field_and_not_stored(
    channel: grpc.aio.Channel,
) -> None:
    stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
    metadata = as_struct(wide(MAX_JSON_OBJECT_KEYS + 1))
    code, message, fields = await refusal(
        stub.SaveSnapshot(snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot(metadata)))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["snapshot.request.metadata"]
    assert TOO_WIDE in message
    await assert_no_snapshot(stub)


async def test_an_object_at_the_key_limit_is_stored_and_reads_back(
    channel: grpc.aio.Channel,
) -> None:
    stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
    metadata = as_struct(wide(MAX_JSON_OBJECT_KEYS))
    await stub.SaveSnapshot(snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot(metadata)))
    loaded = await stub.LoadSnapshot(snapshots_pb2.LoadSnapshotRequest(run_id="run-1"))
    assert loaded.snapshot.request.metadata == metadata


async def test_a_wide_object_deep_inside_lists_is_refused_naming_the_field(
    channel: grpc.aio.Channel,
) -> None:
    stub = events_pb2_grpc.EventLogServiceStub(channel)
    data = {"rows": [{"a": 1}, [[wide(MAX_JSON_OBJECT_KEYS + 1)]]]}
    code, _, fields = await refusal(
        stub.AppendEvent(events_pb2.AppendEventRequest(run_id="run-1", input=event_input(data)))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["input.event.custom.data"]
    await assert_no_events(stub)


async def test_a_wide_object_in_one_event_of_a_batch_names_that_event(
    channel: grpc.aio.Channel,
) -> None:
    stub = events_pb2_grpc.EventLogServiceStub(channel)
    inputs = [
        event_input(wide(10)),
        event_input({"nested": wide(MAX_JSON_OBJECT_KEYS + 1)}),
        event_input(wide(10)),
    ]
    code, _, fields = await refusal(
        stub.AppendEvents(events_pb2.AppendEventsRequest(run_id="run-1", inputs=inputs))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["inputs[1].event.custom.data"]
    await assert_no_events(stub)


async def test_an_object_sent_in_two_parts_counts_the_keys_of_both(
    channel: grpc.aio.Channel,
) -> None:
    # A decoder merges the occurrences of a message field: the object it builds
    # holds the keys of both parts, over the limit though each part is under it.
    half = MAX_JSON_OBJECT_KEYS // 2 + 1
    first = snapshot(as_struct(wide(half))).SerializeToString()
    second = snapshot(as_struct(wide(half, offset=half))).SerializeToString()
    body = delimited(1, first) + delimited(1, second)
    code, _, fields = await refusal(
        channel.unary_unary("/statekeeper.v1.SnapshotService/SaveSnapshot")(body, timeout=10)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["snapshot.request.metadata"]
    await assert_no_snapshot(snapshots_pb2_grpc.SnapshotServiceStub(channel))


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
async def test_a_non_finite_number_in_a_large_request_is_refused_naming_the_field(
    channel: grpc.aio.Channel, number: float
) -> None:
    stub = events_pb2_grpc.EventLogServiceStub(channel)
    request = events_pb2.AppendEventRequest(
        run_id="run-1",
        input=event_input({"filler": wide(MAX_JSON_OBJECT_KEYS), "bad": [{"x": [0]}]}),
    )
    bad = request.input.event.custom.data.fields["bad"].list_value.values[0]
    bad.struct_value.fields["x"].list_value.values[0].number_value = number
    assert request.ByteSize() > INLINE_CHECK_BYTES
    code, _, fields = await refusal(stub.AppendEvent(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["input.event.custom.data"]
    await assert_no_events(stub)


async def test_json_too_deep_in_a_large_request_is_refused_naming_the_field(
    channel: grpc.aio.Channel,
) -> None:
    stub = events_pb2_grpc.EventLogServiceStub(channel)
    deep: Any = 1
    for _ in range(MAX_JSON_DEPTH):
        deep = {"a": deep}
    request = events_pb2.AppendEventRequest(
        run_id="run-1", input=event_input({"filler": wide(MAX_JSON_OBJECT_KEYS), "deep": deep})
    )
    assert request.ByteSize() > INLINE_CHECK_BYTES
    code, _, fields = await refusal(stub.AppendEvent(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["input.event.custom.data"]
    await assert_no_events(stub)


async def test_a_large_request_at_the_depth_and_key_limits_is_stored_and_reads_back(
    channel: grpc.aio.Channel,
) -> None:
    stub = events_pb2_grpc.EventLogServiceStub(channel)
    deep: Any = wide(MAX_JSON_OBJECT_KEYS)
    for _ in range(MAX_JSON_DEPTH - 1):
        deep = {"a": deep}
    data = as_struct(deep)
    request = events_pb2.AppendEventRequest(run_id="run-1", input=event_input({}))
    request.input.event.custom.data.CopyFrom(data)
    assert request.ByteSize() > INLINE_CHECK_BYTES
    await stub.AppendEvent(request)
    page = await stub.ListEvents(events_pb2.ListEventsRequest(run_id="run-1"))
    assert page.envelopes[0].event.custom.data == data
