"""What the server refuses at the door, on every store: bodies that do not decode,
requests and records over their size limits, JSON too deep or not finite, values
out of range, ambiguous namespaces. Each refusal is a clear error naming the field,
and nothing is stored."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from statekeeper.v1 import (
    checkpoints_pb2,
    checkpoints_pb2_grpc,
    common_pb2,
    events_pb2,
    events_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    snapshots_pb2,
    snapshots_pb2_grpc,
)
from statekeeper_server.limits import (
    MAX_FILTER_KEYS,
    MAX_JOB_PAYLOAD_BYTES,
    MAX_JOB_RESULT_BYTES,
    MAX_JSON_DEPTH,
    MAX_METADATA_BYTES,
    MAX_RECORD_BYTES,
)
from tests.harness import running_app
from tests.rpc_errors import error_details, error_info

SERVICES = [
    descriptor
    for module in (checkpoints_pb2, events_pb2, jobs_pb2, snapshots_pb2)
    for descriptor in module.DESCRIPTOR.services_by_name.values()
]
METHODS = [
    (f"/{service.full_name}/{method.name}", method.server_streaming)
    for service in SERVICES
    for method in service.methods
]


@pytest.fixture
async def channel(store_url: str) -> AsyncIterator[grpc.aio.Channel]:
    async with (
        running_app(store_url, max_streams=4, max_streams_per_connection=2) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as connected,
    ):
        yield connected


async def raw_call(
    channel: grpc.aio.Channel, method: str, body: bytes, *, streaming: bool = False
) -> grpc.aio.AioRpcError:
    """Send `body` as the request of `method`; the error it fails with."""

    async def call() -> None:
        if streaming:
            async for _ in channel.unary_stream(method)(body, timeout=5):
                pass
        else:
            await channel.unary_unary(method)(body, timeout=5)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call()
    return caught.value


def nested(depth: int) -> struct_pb2.Struct:
    """A Struct whose objects nest `depth` levels deep ({"a": {"a": ... 1}})."""
    inner: Any = 1
    for _ in range(depth - 1):
        inner = {"a": inner}
    value = struct_pb2.Struct()
    value.update({"a": inner})
    return value


def custom(data: struct_pb2.Struct) -> events_pb2.EventInput:
    event = events_pb2.AgentEvent(custom=events_pb2.CustomEvent(type="note"))
    event.custom.data.CopyFrom(data)
    return events_pb2.EventInput(event=event)


def blob(size: int) -> struct_pb2.Struct:
    """A Struct of about `size` encoded bytes."""
    value = struct_pb2.Struct()
    value.update({"blob": "x" * size})
    return value


def assert_refused(error: grpc.aio.AioRpcError, code: grpc.StatusCode, reason: str) -> list[str]:
    """Assert the refusal and that its message shows no internals; the fields it names."""
    assert error.code() == code, error.details()
    info, fields = error_details(error)
    assert info.reason == reason
    message = error.details() or ""
    for internal in ("Error", "Exception", "Traceback", "statekeeper_server", ".py", "SELECT"):
        assert internal not in message
    return fields


async def assert_no_events(channel: grpc.aio.Channel, run_id: str) -> None:
    stub = events_pb2_grpc.EventLogServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListEvents(events_pb2.ListEventsRequest(run_id=run_id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# -- bodies that do not decode -----------------------------------------------------------


@pytest.mark.parametrize(("method", "streaming"), METHODS)
async def test_a_body_that_does_not_decode_is_invalid_argument(
    channel: grpc.aio.Channel, method: str, streaming: bool
) -> None:
    error = await raw_call(channel, method, b"\xff\xff\xff\xff", streaming=streaming)
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "UNDECODABLE_REQUEST")


async def test_a_string_that_is_not_utf8_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    body = b"\x0a\x02\xc3\x28"  # run_id = two bytes that are not UTF-8
    error = await raw_call(channel, "/statekeeper.v1.SnapshotService/LoadSnapshot", body)
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "UNDECODABLE_REQUEST")


def delimited(number: int, body: bytes) -> bytes:
    """A length-delimited field (number < 16, body < 2 MiB) in protobuf's wire format."""
    size, length = len(body), bytearray()
    while size > 0x7F:
        length.append(size & 0x7F | 0x80)
        size >>= 7
    length.append(size)
    return bytes([number << 3 | 2]) + bytes(length) + body


async def test_json_nested_past_what_protobuf_decodes_is_invalid_argument(
    channel: grpc.aio.Channel,
) -> None:
    # Built by hand: the Python library itself refuses to nest a message this deep.
    data = nested(40).SerializeToString()
    event = delimited(5, delimited(1, b"note") + delimited(2, data))
    body = delimited(1, b"run-1") + delimited(2, delimited(1, event))
    error = await raw_call(channel, "/statekeeper.v1.EventLogService/AppendEvent", body)
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "UNDECODABLE_REQUEST")
    await assert_no_events(channel, "run-1")


# -- JSON values -----------------------------------------------------------------------


async def test_json_nested_deeper_than_the_limit_is_refused_naming_the_field(
    channel: grpc.aio.Channel,
) -> None:
    stub = events_pb2_grpc.EventLogServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AppendEvent(
            events_pb2.AppendEventRequest(run_id="run-1", input=custom(nested(MAX_JSON_DEPTH + 1)))
        )
    fields = assert_refused(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert fields == ["input.event.custom.data"]
    await assert_no_events(channel, "run-1")


async def test_json_at_the_depth_limit_is_stored_and_reads_back(
    channel: grpc.aio.Channel,
) -> None:
    stub = events_pb2_grpc.EventLogServiceStub(channel)
    data = nested(MAX_JSON_DEPTH)
    await stub.AppendEvent(events_pb2.AppendEventRequest(run_id="run-1", input=custom(data)))
    page = await stub.ListEvents(events_pb2.ListEventsRequest(run_id="run-1"))
    assert page.envelopes[0].event.custom.data == data


async def test_json_lists_count_towards_the_depth(channel: grpc.aio.Channel) -> None:
    inner: Any = 1
    for _ in range(MAX_JSON_DEPTH):
        inner = [inner]
    payload = struct_pb2.Struct()
    payload.update({"a": inner})
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.EnqueueJob(
            jobs_pb2.EnqueueJobRequest(job=jobs_pb2.JobSpec(kind="k", payload=payload))
        )
    fields = assert_refused(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert fields == ["job.payload"]


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
async def test_a_json_number_that_is_not_finite_is_refused(
    channel: grpc.aio.Channel, number: float
) -> None:
    scope = struct_pb2.Struct()
    scope.update({"ok": 1, "bad": [number]})
    stub = checkpoints_pb2_grpc.CheckpointServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SaveWorkflowCheckpoint(
            checkpoints_pb2.SaveWorkflowCheckpointRequest(
                checkpoint=checkpoints_pb2.WorkflowCheckpoint(
                    run_id="run-1", workflow_name="wf", scope_snapshot=scope
                )
            )
        )
    fields = assert_refused(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert fields == ["checkpoint.scope_snapshot"]


async def test_a_number_that_is_not_finite_is_refused_in_a_metadata_filter(
    channel: grpc.aio.Channel,
) -> None:
    stub = checkpoints_pb2_grpc.CheckpointServiceStub(channel)
    metadata_filter = struct_pb2.Struct()
    metadata_filter.update({"score": math.inf})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListWorkflowCheckpoints(
            checkpoints_pb2.ListWorkflowCheckpointsRequest(
                run_id="run-1", workflow_name="wf", metadata_filter=metadata_filter
            )
        )
    assert_refused(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")


async def test_a_non_finite_number_is_refused_in_an_append_event_job(
    channel: grpc.aio.Channel,
) -> None:
    payload = struct_pb2.Struct()
    payload.update({"run_id": "run-1", "event": {"custom": {"type": "t", "data": {"x": math.nan}}}})
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.EnqueueJob(
            jobs_pb2.EnqueueJobRequest(
                job=jobs_pb2.JobSpec(kind="statekeeper.append_event", payload=payload)
            )
        )
    fields = assert_refused(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert fields == ["job.payload"]


async def test_a_double_field_that_is_not_finite_is_refused(channel: grpc.aio.Channel) -> None:
    snapshot = snapshots_pb2.Snapshot(
        run_id="run-1", session_id="s", status=snapshots_pb2.RUN_STATUS_RUNNING
    )
    snapshot.request.temperature = math.nan
    stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SaveSnapshot(snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot))
    fields = assert_refused(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert fields == ["snapshot.request.temperature"]


# -- ranges ----------------------------------------------------------------------------------


async def test_an_unsigned_value_above_the_signed_range_is_invalid_argument(
    channel: grpc.aio.Channel,
) -> None:
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.WatchJobs(jobs_pb2.WatchJobsRequest(after_change_id=2**63)):
            pass
    fields = assert_refused(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert fields == ["after_change_id"]


async def test_a_seq_expectation_above_the_signed_range_is_invalid_argument(
    channel: grpc.aio.Channel,
) -> None:
    stub = events_pb2_grpc.EventLogServiceStub(channel)
    request = events_pb2.AppendEventRequest(
        run_id="run-1",
        input=custom(struct_pb2.Struct()),
        expectation=events_pb2.SeqExpectation(last_seq=2**64 - 1),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AppendEvent(request)
    fields = assert_refused(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert fields == ["expectation.last_seq"]
    await assert_no_events(channel, "run-1")


async def test_a_retention_ttl_beyond_any_duration_is_invalid_argument(
    channel: grpc.aio.Channel,
) -> None:
    stub = checkpoints_pb2_grpc.CheckpointServiceStub(channel)
    request = checkpoints_pb2.SaveWorkflowCheckpointRequest(
        checkpoint=checkpoints_pb2.WorkflowCheckpoint(run_id="run-1", workflow_name="wf")
    )
    request.retention.ttl.seconds = 2**63 - 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SaveWorkflowCheckpoint(request)
    fields = assert_refused(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert fields == ["retention.ttl"]


async def test_a_timestamp_outside_the_protobuf_range_is_invalid_argument(
    channel: grpc.aio.Channel,
) -> None:
    item = custom(struct_pb2.Struct())
    item.event.custom.timestamp.seconds = 2**40
    stub = events_pb2_grpc.EventLogServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AppendEvent(events_pb2.AppendEventRequest(run_id="run-1", input=item))
    fields = assert_refused(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert fields == ["input.event.custom.timestamp"]


async def test_a_metadata_filter_with_too_many_keys_is_invalid_argument(
    channel: grpc.aio.Channel,
) -> None:
    metadata_filter = struct_pb2.Struct()
    metadata_filter.update({f"k{i}": i for i in range(MAX_FILTER_KEYS + 1)})
    stub = checkpoints_pb2_grpc.CheckpointServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListWorkflowCheckpoints(
            checkpoints_pb2.ListWorkflowCheckpointsRequest(metadata_filter=metadata_filter)
        )
    fields = assert_refused(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert fields == ["metadata_filter"]


async def test_an_error_quoting_a_huge_key_stays_small(channel: grpc.aio.Channel) -> None:
    metadata_filter = struct_pb2.Struct()
    metadata_filter.update({"k" * 100_000: [1]})
    stub = checkpoints_pb2_grpc.CheckpointServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListWorkflowCheckpoints(
            checkpoints_pb2.ListWorkflowCheckpointsRequest(metadata_filter=metadata_filter)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailers = caught.value.trailing_metadata() or ()
    assert sum(len(key) + len(value) for key, value in trailers) < 4096


# -- sizes ---------------------------------------------------------------------------------


async def test_a_request_over_the_size_limit_is_refused_with_error_info(
    store_url: str,
) -> None:
    async with (
        running_app(store_url, max_message_bytes=64 * 1024) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = events_pb2_grpc.EventLogServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.AppendEvent(
                events_pb2.AppendEventRequest(run_id="run-1", input=custom(blob(100_000)))
            )
        fields = assert_refused(
            caught.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE"
        )
        assert fields == ["request"]
        assert error_info(caught.value).metadata["limit_bytes"] == str(64 * 1024)
        await assert_no_events(channel, "run-1")


async def test_a_snapshot_larger_than_a_record_is_refused_and_not_stored(
    channel: grpc.aio.Channel,
) -> None:
    snapshot = snapshots_pb2.Snapshot(
        run_id="run-1", session_id="s", status=snapshots_pb2.RUN_STATUS_RUNNING
    )
    snapshot.assistant_message.content.add(text="x" * MAX_RECORD_BYTES)
    stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SaveSnapshot(snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot))
    fields = assert_refused(caught.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "RECORD_TOO_LARGE")
    assert fields == ["snapshot"]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.LoadSnapshot(snapshots_pb2.LoadSnapshotRequest(run_id="run-1"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_snapshot_just_under_the_record_limit_is_stored_and_loads_back(
    channel: grpc.aio.Channel,
) -> None:
    snapshot = snapshots_pb2.Snapshot(
        run_id="run-1", session_id="s", status=snapshots_pb2.RUN_STATUS_RUNNING
    )
    snapshot.assistant_message.content.add(text="x" * (MAX_RECORD_BYTES - 1024))
    stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
    saved = await stub.SaveSnapshot(snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot))
    loaded = await stub.LoadSnapshot(snapshots_pb2.LoadSnapshotRequest(run_id="run-1"))
    assert loaded.snapshot == saved.snapshot


async def test_an_event_larger_than_a_record_is_refused_and_not_stored(
    channel: grpc.aio.Channel,
) -> None:
    stub = events_pb2_grpc.EventLogServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AppendEvent(
            events_pb2.AppendEventRequest(run_id="run-1", input=custom(blob(MAX_RECORD_BYTES)))
        )
    fields = assert_refused(caught.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "RECORD_TOO_LARGE")
    assert fields == ["input"]
    await assert_no_events(channel, "run-1")


async def test_an_append_batch_whose_response_would_not_fit_is_refused_and_not_stored(
    channel: grpc.aio.Channel,
) -> None:
    inputs = [custom(blob(4_000)) for _ in range(1000)]
    request = events_pb2.AppendEventsRequest(run_id="run-1", inputs=inputs)
    assert request.ByteSize() < 4 * 1024 * 1024
    stub = events_pb2_grpc.EventLogServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AppendEvents(request)
    fields = assert_refused(caught.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "BATCH_TOO_LARGE")
    assert fields == ["inputs"]
    await assert_no_events(channel, "run-1")


async def test_a_job_payload_larger_than_the_limit_is_refused_and_not_stored(
    channel: grpc.aio.Channel,
) -> None:
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.EnqueueJob(
            jobs_pb2.EnqueueJobRequest(
                job=jobs_pb2.JobSpec(kind="k", payload=blob(MAX_JOB_PAYLOAD_BYTES))
            )
        )
    fields = assert_refused(caught.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "RECORD_TOO_LARGE")
    assert fields == ["job.payload"]
    listed = await stub.ListJobs(jobs_pb2.ListJobsRequest())
    assert not listed.jobs


async def test_a_job_result_larger_than_the_limit_is_refused_and_the_job_stays_leased(
    channel: grpc.aio.Channel,
) -> None:
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    await stub.EnqueueJob(jobs_pb2.EnqueueJobRequest(job=jobs_pb2.JobSpec(kind="k")))
    [job] = (await stub.LeaseJobs(jobs_pb2.LeaseJobsRequest(worker_id="w"))).jobs
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CompleteJob(
            jobs_pb2.CompleteJobRequest(
                job_id=job.job_id,
                lease_id=job.lease.lease_id,
                result=blob(MAX_JOB_RESULT_BYTES),
            )
        )
    fields = assert_refused(caught.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "RECORD_TOO_LARGE")
    assert fields == ["result"]
    stored = (await stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.job_id))).job
    assert stored.state == jobs_pb2.JOB_STATE_RUNNING


async def test_checkpoint_metadata_larger_than_its_limit_is_refused_and_not_stored(
    channel: grpc.aio.Channel,
) -> None:
    stub = checkpoints_pb2_grpc.CheckpointServiceStub(channel)
    checkpoint = checkpoints_pb2.WorkflowCheckpoint(run_id="run-1", workflow_name="wf")
    checkpoint.metadata.update({"note": "x" * MAX_METADATA_BYTES})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SaveWorkflowCheckpoint(
            checkpoints_pb2.SaveWorkflowCheckpointRequest(checkpoint=checkpoint)
        )
    fields = assert_refused(caught.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "RECORD_TOO_LARGE")
    assert fields == ["checkpoint.metadata"]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.LoadWorkflowCheckpoint(
            checkpoints_pb2.LoadWorkflowCheckpointRequest(run_id="run-1")
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_agent_checkpoint_larger_than_a_record_is_refused_and_not_stored(
    channel: grpc.aio.Channel,
) -> None:
    stub = checkpoints_pb2_grpc.CheckpointServiceStub(channel)
    checkpoint = checkpoints_pb2.AgentCheckpoint(
        agent_id="agent-1", agent_state=checkpoints_pb2.AGENT_STATE_ACTIVE
    )
    checkpoint.app_state.CopyFrom(blob(MAX_RECORD_BYTES))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PersistAgentCheckpoint(
            checkpoints_pb2.PersistAgentCheckpointRequest(checkpoint=checkpoint)
        )
    fields = assert_refused(caught.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "RECORD_TOO_LARGE")
    assert fields == ["checkpoint"]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.RecoverAgentCheckpoint(
            checkpoints_pb2.RecoverAgentCheckpointRequest(agent_id="agent-1")
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


# -- namespaces -----------------------------------------------------------------------------


async def test_a_namespace_header_sent_twice_is_invalid_argument(
    channel: grpc.aio.Channel,
) -> None:
    stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
    metadata = (("x-statekeeper-namespace", "acme"), ("x-statekeeper-namespace", "other"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListSnapshots(snapshots_pb2.ListSnapshotsRequest(), metadata=metadata)
    fields = assert_refused(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert fields == ["x-statekeeper-namespace"]


# -- streams ---------------------------------------------------------------------------------


async def open_followers(channel: grpc.aio.Channel, count: int) -> list[Any]:
    """`count` ReplayEvents streams following runs, each past its caught-up marker."""
    stub = events_pb2_grpc.EventLogServiceStub(channel)
    streams = []
    for index in range(count):
        stream = stub.ReplayEvents(
            events_pb2.ReplayEventsRequest(run_id=f"follow-{index}", follow=True)
        )
        reply = await stream.read()
        assert reply.HasField("caught_up")
        streams.append(stream)
    return streams


async def open_follower_once_admitted(channel: grpc.aio.Channel) -> None:
    """Open one follower, waiting for the server to notice a stream that was cancelled."""
    for _ in range(100):
        try:
            await open_followers(channel, 1)
            return
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            await asyncio.sleep(0.02)
    raise AssertionError("the server never admitted the stream")


async def test_streams_past_the_connection_limit_are_resource_exhausted(
    channel: grpc.aio.Channel,
) -> None:
    streams = await open_followers(channel, 2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await open_followers(channel, 1)
    assert_refused(caught.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
    streams[0].cancel()
    await open_follower_once_admitted(channel)


async def test_streams_past_the_server_limit_are_resource_exhausted(store_url: str) -> None:
    async with running_app(store_url, max_streams=4, max_streams_per_connection=2) as app:
        target = f"127.0.0.1:{app.port}"
        # A local subchannel pool gives each channel a connection of its own.
        own_connection = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.aio.insecure_channel(target, own_connection) for _ in range(3)]
        try:
            first = await open_followers(channels[0], 2)
            await open_followers(channels[1], 2)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await open_followers(channels[2], 1)
            assert_refused(caught.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
            first[0].cancel()
            await open_follower_once_admitted(channels[2])
        finally:
            for channel in channels:
                await channel.close()


async def test_an_unsigned_value_at_the_signed_limit_is_stored_exactly(
    channel: grpc.aio.Channel,
) -> None:
    usage = common_pb2.TokenUsage(input_tokens=2**63 - 1)
    snapshot = snapshots_pb2.Snapshot(
        run_id="run-1", session_id="s", status=snapshots_pb2.RUN_STATUS_RUNNING, total_usage=usage
    )
    stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
    await stub.SaveSnapshot(snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot))
    loaded = await stub.LoadSnapshot(snapshots_pb2.LoadSnapshotRequest(run_id="run-1"))
    assert loaded.snapshot.total_usage.input_tokens == 2**63 - 1
