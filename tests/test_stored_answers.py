"""Answers built from stored bytes are what protobuf itself would send.

Saves, loads and listings of snapshots and checkpoints answer with the
encoding the store keeps instead of a response message rebuilt from it;
enqueues and completions of jobs encode each job once, without a response
message around it.
Each answer here is read as raw bytes and checked to decode to the message
the server used to build (and, for records without JSON objects, whose
field order protobuf leaves free, to be those very bytes), for small and
large records, including a caller that filled in the server's own fields.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from statekeeper.v1 import checkpoints_pb2, jobs_pb2, snapshots_pb2
from statekeeper_server.limits import MAX_JSON_OBJECT_KEYS
from statekeeper_server.timestamps import now_us
from statekeeper_server.wire import message_field, uint_field
from tests.harness import running_app
from tests.rpc_errors import error_info

M = TypeVar("M", bound=Message)

LARGE_FIELDS = 40_000
"""Number fields of a large record's JSON object: about 900 KB encoded (a job's payload
and result may hold 1 MB)."""
UPDATE_TIME = snapshots_pb2.Snapshot.UPDATE_TIME_FIELD_NUMBER


@pytest.fixture
async def channel(store_url: str) -> AsyncIterator[grpc.aio.Channel]:
    async with (
        running_app(store_url) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as opened,
    ):
        yield opened


async def call(channel: grpc.aio.Channel, method: str, request: bytes | Message) -> bytes:
    """The raw response bytes of `method` (`Service/Method`) for `request`."""
    body = request if isinstance(request, bytes) else request.SerializeToString()
    send: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        f"/statekeeper.v1.{method}"
    )
    return await send(body, timeout=30)


def answer(response_type: type[M], raw: bytes) -> M:
    """`raw` decoded as `response_type`, after checking that protobuf encodes the
    decoded message to the same bytes whenever its field order is fixed (no JSON
    object holds more than one key, so no map order is in play)."""
    decoded = response_type.FromString(raw)
    if not _holds_wide_objects(decoded):
        assert decoded.SerializeToString() == raw
    return decoded


def _holds_wide_objects(message: Message) -> bool:
    if isinstance(message, struct_pb2.Struct) and len(message.fields) > 1:
        return True
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        values = value if field.is_repeated else [value]
        if any(isinstance(item, Message) and _holds_wide_objects(item) for item in values):
            return True
    return False


def wide(fields: int) -> struct_pb2.Struct:
    """A JSON object of `fields` small numbers (the costliest shape per byte)."""
    value = struct_pb2.Struct()
    value.update({f"k{index:06d}": index for index in range(fields)})
    return value


def small_object() -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update({"only": {"nested": [1, "two", None, True]}})
    return value


def large_object() -> struct_pb2.Struct:
    """LARGE_FIELDS numbers in objects as wide as a request may send
    (MAX_JSON_OBJECT_KEYS), each under a key of one outer object."""
    value = struct_pb2.Struct()
    parts = -(-LARGE_FIELDS // MAX_JSON_OBJECT_KEYS)
    for part in range(parts):
        value.fields[f"part{part:02d}"].struct_value.CopyFrom(
            wide(min(MAX_JSON_OBJECT_KEYS, LARGE_FIELDS - part * MAX_JSON_OBJECT_KEYS))
        )
    return value


SIZES: dict[str, Callable[[], struct_pb2.Struct]] = {"small": small_object, "large": large_object}


def copy_of(message: M) -> M:
    copied = type(message)()
    copied.CopyFrom(message)
    return copied


def with_foreign_time(data: bytes, number: int) -> bytes:
    """`data` (an encoded message) with a Timestamp in field `number` that also
    carries a field Timestamp does not know (as a newer client might send)."""
    foreign = timestamp_pb2.Timestamp(seconds=978_307_200, nanos=5).SerializeToString()
    return data + message_field(number, foreign + uint_field(15, 1))


def assert_server_time(value: timestamp_pb2.Timestamp, since_us: int) -> None:
    """`value` is a time the server set just now, with nothing else in it."""
    assert value.seconds * 1_000_000 + value.nanos // 1000 >= since_us - 1_000_000
    plain = timestamp_pb2.Timestamp(seconds=value.seconds, nanos=value.nanos)
    assert value.SerializeToString() == plain.SerializeToString()


# -- snapshots ---------------------------------------------------------------------------


def snapshot(run_id: str, size: str) -> snapshots_pb2.Snapshot:
    sent = snapshots_pb2.Snapshot(
        run_id=run_id,
        session_id="session-1",
        status=snapshots_pb2.RUN_STATUS_RUNNING,
        iteration=4,
    )
    sent.request.model = "model-1"
    sent.request.metadata.CopyFrom(SIZES[size]())
    return sent


@pytest.mark.parametrize("size", SIZES)
async def test_a_save_answers_with_the_stamped_snapshot_and_a_load_with_the_same_bytes(
    channel: grpc.aio.Channel, size: str
) -> None:
    sent = snapshot("run-1", size)

    saved_raw = await call(
        channel, "SnapshotService/SaveSnapshot", snapshots_pb2.SaveSnapshotRequest(snapshot=sent)
    )
    loaded_raw = await call(
        channel, "SnapshotService/LoadSnapshot", snapshots_pb2.LoadSnapshotRequest(run_id="run-1")
    )

    saved = answer(snapshots_pb2.SaveSnapshotResponse, saved_raw).snapshot
    assert saved.version == 1
    expected = copy_of(sent)
    expected.version = 1
    expected.update_time.CopyFrom(saved.update_time)
    assert saved == expected
    assert loaded_raw == saved_raw  # both responses hold the snapshot in field 1


async def test_a_callers_version_and_update_time_never_survive_a_save(
    channel: grpc.aio.Channel,
) -> None:
    sent = snapshot("run-1", "small")
    sent.version = 99
    foreign = with_foreign_time(sent.SerializeToString(), UPDATE_TIME)
    request = message_field(snapshots_pb2.SaveSnapshotRequest.SNAPSHOT_FIELD_NUMBER, foreign)
    started = now_us()

    saved = answer(
        snapshots_pb2.SaveSnapshotResponse,
        await call(channel, "SnapshotService/SaveSnapshot", request),
    ).snapshot

    assert saved.version == 1
    assert_server_time(saved.update_time, started)
    loaded = answer(
        snapshots_pb2.LoadSnapshotResponse,
        await call(
            channel,
            "SnapshotService/LoadSnapshot",
            snapshots_pb2.LoadSnapshotRequest(run_id="run-1"),
        ),
    ).snapshot
    assert loaded == saved


@pytest.mark.parametrize("size", SIZES)
async def test_a_listing_answers_with_each_stored_snapshot(
    channel: grpc.aio.Channel, size: str
) -> None:
    saved = []
    for run_id in ("run-a", "run-b", "run-c"):
        raw = await call(
            channel,
            "SnapshotService/SaveSnapshot",
            snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot(run_id, size)),
        )
        saved.append(answer(snapshots_pb2.SaveSnapshotResponse, raw).snapshot)

    first = answer(
        snapshots_pb2.ListSnapshotsResponse,
        await call(
            channel,
            "SnapshotService/ListSnapshots",
            snapshots_pb2.ListSnapshotsRequest(page_size=2),
        ),
    )
    rest = answer(
        snapshots_pb2.ListSnapshotsResponse,
        await call(
            channel,
            "SnapshotService/ListSnapshots",
            snapshots_pb2.ListSnapshotsRequest(page_size=2, page_token=first.next_page_token),
        ),
    )

    assert first.next_page_token
    assert [*first.snapshots, *rest.snapshots] == saved
    assert rest.next_page_token == ""


# -- checkpoints ---------------------------------------------------------------------------


def workflow(size: str) -> checkpoints_pb2.WorkflowCheckpoint:
    sent = checkpoints_pb2.WorkflowCheckpoint(
        run_id="run-1", workflow_name="wf", step=2, next_node_id="tool"
    )
    sent.scope_snapshot.CopyFrom(SIZES[size]())
    sent.metadata.update({"stage": "review"})
    return sent


def agent(size: str) -> checkpoints_pb2.AgentCheckpoint:
    sent = checkpoints_pb2.AgentCheckpoint(
        agent_id="agent-1", agent_state=checkpoints_pb2.AGENT_STATE_ACTIVE
    )
    sent.app_state.CopyFrom(SIZES[size]())
    sent.metadata.reason = "shutdown"
    return sent


async def save_workflow(
    channel: grpc.aio.Channel, request: bytes | Message
) -> checkpoints_pb2.SaveWorkflowCheckpointResponse:
    raw = await call(channel, "CheckpointService/SaveWorkflowCheckpoint", request)
    return answer(checkpoints_pb2.SaveWorkflowCheckpointResponse, raw)


async def persist_agent(
    channel: grpc.aio.Channel, request: bytes | Message
) -> checkpoints_pb2.PersistAgentCheckpointResponse:
    raw = await call(channel, "CheckpointService/PersistAgentCheckpoint", request)
    return answer(checkpoints_pb2.PersistAgentCheckpointResponse, raw)


@pytest.mark.parametrize("size", SIZES)
async def test_workflow_checkpoints_are_answered_as_stored(
    channel: grpc.aio.Channel, size: str
) -> None:
    sent = workflow(size)
    first = await save_workflow(
        channel, checkpoints_pb2.SaveWorkflowCheckpointRequest(checkpoint=sent)
    )
    second = await save_workflow(
        channel,
        checkpoints_pb2.SaveWorkflowCheckpointRequest(
            checkpoint=sent, retention=checkpoints_pb2.CheckpointRetention(keep_last=1)
        ),
    )

    assert second.dropped_count == 1
    stored = second.checkpoint
    assert stored.parent_checkpoint_id == first.checkpoint.checkpoint_id
    expected = copy_of(sent)
    expected.checkpoint_id = stored.checkpoint_id
    expected.parent_checkpoint_id = first.checkpoint.checkpoint_id
    expected.create_time.CopyFrom(stored.create_time)
    assert stored == expected

    loaded = answer(
        checkpoints_pb2.LoadWorkflowCheckpointResponse,
        await call(
            channel,
            "CheckpointService/LoadWorkflowCheckpoint",
            checkpoints_pb2.LoadWorkflowCheckpointRequest(run_id="run-1"),
        ),
    )
    history = answer(
        checkpoints_pb2.ListWorkflowCheckpointsResponse,
        await call(
            channel,
            "CheckpointService/ListWorkflowCheckpoints",
            checkpoints_pb2.ListWorkflowCheckpointsRequest(run_id="run-1"),
        ),
    )
    latest = answer(
        checkpoints_pb2.ListWorkflowCheckpointsResponse,
        await call(
            channel,
            "CheckpointService/ListWorkflowCheckpoints",
            checkpoints_pb2.ListWorkflowCheckpointsRequest(workflow_name="wf"),
        ),
    )
    assert loaded.checkpoint == stored
    assert list(loaded.skipped_checkpoint_ids) == []
    assert list(history.checkpoints) == [stored]
    assert list(latest.checkpoints) == [stored]


async def test_a_callers_checkpoint_id_parent_and_create_time_never_survive_a_save(
    channel: grpc.aio.Channel,
) -> None:
    sent = workflow("small")
    sent.checkpoint_id = "mine"
    sent.parent_checkpoint_id = "theirs"
    number = checkpoints_pb2.WorkflowCheckpoint.CREATE_TIME_FIELD_NUMBER
    foreign = with_foreign_time(sent.SerializeToString(), number)
    started = now_us()

    saved = await save_workflow(
        channel,
        message_field(
            checkpoints_pb2.SaveWorkflowCheckpointRequest.CHECKPOINT_FIELD_NUMBER, foreign
        ),
    )

    stored = saved.checkpoint
    assert stored.checkpoint_id not in ("", "mine")
    assert stored.parent_checkpoint_id == ""
    assert_server_time(stored.create_time, started)


@pytest.mark.parametrize("size", SIZES)
async def test_agent_checkpoints_are_answered_as_stored(
    channel: grpc.aio.Channel, size: str
) -> None:
    sent = agent(size)
    first = await persist_agent(
        channel, checkpoints_pb2.PersistAgentCheckpointRequest(checkpoint=sent)
    )
    second = await persist_agent(
        channel, checkpoints_pb2.PersistAgentCheckpointRequest(checkpoint=sent)
    )

    stored = second.checkpoint
    assert second.dropped_count == 0
    expected = copy_of(sent)
    expected.checkpoint_id = stored.checkpoint_id
    expected.create_time.CopyFrom(stored.create_time)
    expected.timestamp.CopyFrom(stored.create_time)
    assert stored == expected
    assert stored.checkpoint_id > first.checkpoint.checkpoint_id

    recovered = answer(
        checkpoints_pb2.RecoverAgentCheckpointResponse,
        await call(
            channel,
            "CheckpointService/RecoverAgentCheckpoint",
            checkpoints_pb2.RecoverAgentCheckpointRequest(agent_id="agent-1"),
        ),
    )
    history = answer(
        checkpoints_pb2.ListAgentCheckpointsResponse,
        await call(
            channel,
            "CheckpointService/ListAgentCheckpoints",
            checkpoints_pb2.ListAgentCheckpointsRequest(agent_id="agent-1", page_size=1),
        ),
    )
    assert recovered.checkpoint == stored
    assert list(history.checkpoints) == [stored]
    assert history.next_page_token


async def test_a_callers_agent_checkpoint_id_and_create_time_never_survive_but_its_timestamp_does(
    channel: grpc.aio.Channel,
) -> None:
    sent = agent("small")
    sent.checkpoint_id = "mine"
    sent.timestamp.seconds = 1_700_000_000
    number = checkpoints_pb2.AgentCheckpoint.CREATE_TIME_FIELD_NUMBER
    foreign = with_foreign_time(sent.SerializeToString(), number)
    started = now_us()

    saved = await persist_agent(
        channel,
        message_field(
            checkpoints_pb2.PersistAgentCheckpointRequest.CHECKPOINT_FIELD_NUMBER, foreign
        ),
    )

    stored = saved.checkpoint
    assert stored.checkpoint_id not in ("", "mine")
    assert_server_time(stored.create_time, started)
    assert stored.timestamp == timestamp_pb2.Timestamp(seconds=1_700_000_000)


# -- corrupt records --------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "statekeeper.db"


@pytest.fixture
async def file_channel(db: Path) -> AsyncIterator[grpc.aio.Channel]:
    async with (
        running_app(f"file:{db}") as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as opened,
    ):
        yield opened


def overwrite(db: Path, table: str, data: bytes) -> None:
    """Overwrite every stored record of `table` behind the server's back."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(f"UPDATE {table} SET data = ?", (data,))
    conn.close()


async def test_a_corrupt_snapshot_is_still_data_loss_naming_its_run(
    file_channel: grpc.aio.Channel, db: Path
) -> None:
    await call(
        file_channel,
        "SnapshotService/SaveSnapshot",
        snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot("run-1", "small")),
    )
    overwrite(db, "snapshots", b"\xff\xff\xff\xff")

    for method, request in (
        ("SnapshotService/LoadSnapshot", snapshots_pb2.LoadSnapshotRequest(run_id="run-1")),
        ("SnapshotService/ListSnapshots", snapshots_pb2.ListSnapshotsRequest()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(file_channel, method, request)
        assert caught.value.code() == grpc.StatusCode.DATA_LOSS
        assert error_info(caught.value).metadata["run_id"] == "run-1"


async def test_a_checkpoint_that_parses_but_is_another_record_is_still_data_loss(
    file_channel: grpc.aio.Channel, db: Path
) -> None:
    saved = await save_workflow(
        file_channel, checkpoints_pb2.SaveWorkflowCheckpointRequest(checkpoint=workflow("small"))
    )
    other = copy_of(saved.checkpoint)
    other.checkpoint_id = "another"
    overwrite(db, "workflow_checkpoints", other.SerializeToString())

    for method, request in (
        (
            "CheckpointService/LoadWorkflowCheckpoint",
            checkpoints_pb2.LoadWorkflowCheckpointRequest(run_id="run-1"),
        ),
        (
            "CheckpointService/ListWorkflowCheckpoints",
            checkpoints_pb2.ListWorkflowCheckpointsRequest(run_id="run-1"),
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(file_channel, method, request)
        assert caught.value.code() == grpc.StatusCode.DATA_LOSS
        info = error_info(caught.value)
        assert info.metadata["checkpoint_id"] == saved.checkpoint.checkpoint_id


# -- jobs ---------------------------------------------------------------------------------


def job_spec(size: str, idempotency_key: str = "") -> jobs_pb2.JobSpec:
    spec = jobs_pb2.JobSpec(queue="work", kind="summarize", idempotency_key=idempotency_key)
    spec.payload.CopyFrom(SIZES[size]())
    return spec


@pytest.mark.parametrize("size", SIZES)
async def test_enqueues_answer_with_each_job_and_whether_it_is_new(
    channel: grpc.aio.Channel, size: str
) -> None:
    one = answer(
        jobs_pb2.EnqueueJobResponse,
        await call(
            channel,
            "JobService/EnqueueJob",
            jobs_pb2.EnqueueJobRequest(job=job_spec(size, idempotency_key="key-1")),
        ),
    )
    batch = answer(
        jobs_pb2.EnqueueJobsResponse,
        await call(
            channel,
            "JobService/EnqueueJobs",
            jobs_pb2.EnqueueJobsRequest(
                jobs=[job_spec(size), job_spec(size, idempotency_key="key-1"), job_spec(size)]
            ),
        ),
    )

    assert one.created
    assert one.job.payload == job_spec(size).payload
    assert list(batch.created) == [True, False, True]
    assert batch.jobs[1] == one.job
    assert [job.payload for job in batch.jobs] == [job_spec(size).payload] * 3
    got = answer(
        jobs_pb2.GetJobResponse,
        await call(
            channel, "JobService/GetJob", jobs_pb2.GetJobRequest(job_id=batch.jobs[0].job_id)
        ),
    )
    assert got.job == batch.jobs[0]


@pytest.mark.parametrize("size", SIZES)
async def test_a_completion_answers_with_the_finished_job(
    channel: grpc.aio.Channel, size: str
) -> None:
    await call(channel, "JobService/EnqueueJob", jobs_pb2.EnqueueJobRequest(job=job_spec("small")))
    [leased] = answer(
        jobs_pb2.LeaseJobsResponse,
        await call(
            channel,
            "JobService/LeaseJobs",
            jobs_pb2.LeaseJobsRequest(queue="work", worker_id="worker-1"),
        ),
    ).jobs
    result = SIZES[size]()

    completed = answer(
        jobs_pb2.CompleteJobResponse,
        await call(
            channel,
            "JobService/CompleteJob",
            jobs_pb2.CompleteJobRequest(
                job_id=leased.job_id, lease_id=leased.lease.lease_id, result=result
            ),
        ),
    ).job

    assert completed.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert completed.result == result
    got = answer(
        jobs_pb2.GetJobResponse,
        await call(channel, "JobService/GetJob", jobs_pb2.GetJobRequest(job_id=leased.job_id)),
    )
    assert got.job == completed
