"""The messages every benchmark sends, built once so that all sides carry the same bytes.

statekeeper, the bare echo reference and the peers (Redis, NATS, SQLite,
PostgreSQL) are all fed from here: an event is a `CustomEvent` of about
300 bytes (a small Struct), and the echo's responses are built as the
envelopes statekeeper returns for it (a 36-character event id, seq, run,
session and commit time), so that both servers move the same number of
bytes per call.
"""

from __future__ import annotations

import time
import uuid

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from statekeeper.v1 import checkpoints_pb2, events_pb2, jobs_pb2, snapshots_pb2

SESSION_PREFIX = "session-"
JOB_QUEUE = "bench"
JOB_KIND = "summarize"


def run_id(index: int, prefix: str = "run") -> str:
    """A run id of fixed width, so that every request has the same size."""
    return f"{prefix}-{index:08d}"


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    whole = int(seconds)
    return timestamp_pb2.Timestamp(seconds=whole, nanos=int((seconds - whole) * 1e9))


def event_data(sent_at: float = 0.0, iteration: int = 3) -> struct_pb2.Struct:
    """The Struct payload of a benchmark event; `sent_at` is the appender's clock."""
    data = struct_pb2.Struct()
    data.update(
        {
            "tool": "web_search",
            "call_id": "call_0123456789abcdef",
            "arguments": {"query": "latest quarterly revenue of the company", "max_results": 5},
            "status": "ok",
            "duration_ms": 412.5,
            "iteration": iteration,
            "sent_at": sent_at or 1_700_000_000.123456,
        }
    )
    return data


def custom_event(sent_at: float = 0.0) -> events_pb2.AgentEvent:
    """A tool-call event of about 300 bytes."""
    return events_pb2.AgentEvent(
        custom=events_pb2.CustomEvent(
            type="tool.call_completed",
            data=event_data(sent_at),
            timestamp=_timestamp(sent_at or 1_700_000_000.123456),
        )
    )


def run_started(run: str) -> events_pb2.AgentEvent:
    """The first event of a benchmark run (gives its envelopes a session id)."""
    return events_pb2.AgentEvent(
        run_started=events_pb2.RunStarted(
            session_id=SESSION_PREFIX + run.split("-", 1)[-1],
            provider="openai",
            model="gpt-4.1-mini",
            timestamp=_timestamp(1_700_000_000.0),
        )
    )


def envelope(run: str, seq: int, event: events_pb2.AgentEvent) -> events_pb2.EventEnvelope:
    """The envelope statekeeper would return for `event` at `seq` of `run`."""
    return events_pb2.EventEnvelope(
        event_id=str(uuid.uuid4()),
        seq=seq,
        run_id=run,
        session_id=SESSION_PREFIX + run.split("-", 1)[-1],
        event=event,
        emitted_at=_timestamp(time.time()),
    )


def append_request(run: str, sent_at: float = 0.0) -> events_pb2.AppendEventRequest:
    """AppendEvent of one custom event to `run`."""
    return events_pb2.AppendEventRequest(
        run_id=run, input=events_pb2.EventInput(event=custom_event(sent_at))
    )


def append_batch_request(run: str, count: int) -> events_pb2.AppendEventsRequest:
    """AppendEvents of `count` custom events to `run`."""
    item = events_pb2.EventInput(event=custom_event())
    return events_pb2.AppendEventsRequest(run_id=run, inputs=[item] * count)


def append_response(run: str = "run-00000000", seq: int = 1_000) -> bytes:
    """Bytes of the AppendEventResponse statekeeper sends for `append_request`."""
    return events_pb2.AppendEventResponse(
        envelope=envelope(run, seq, custom_event())
    ).SerializeToString()


def append_batch_response(count: int, run: str = "run-00000000", seq: int = 1_000) -> bytes:
    """Bytes of the AppendEventsResponse statekeeper sends for `append_batch_request`."""
    event = custom_event()
    return events_pb2.AppendEventsResponse(
        envelopes=[envelope(run, seq + i, event) for i in range(count)]
    ).SerializeToString()


def replay_page(count: int, run: str = "run-00000000", first_seq: int = 1) -> bytes:
    """Bytes of one ReplayEvents batch message of `count` envelopes."""
    event = custom_event()
    return events_pb2.ReplayEventsResponse(
        batch=events_pb2.EventBatch(
            envelopes=[envelope(run, first_seq + i, event) for i in range(count)]
        )
    ).SerializeToString()


def job_spec(index: int = 0) -> jobs_pb2.JobSpec:
    """A normal-priority job with a payload of about 150 bytes."""
    payload = struct_pb2.Struct()
    payload.update(
        {
            "document_id": f"doc-{index:08d}",
            "language": "en",
            "max_words": 200,
            "callback": "https://example.invalid/hooks/summaries",
        }
    )
    return jobs_pb2.JobSpec(
        queue=JOB_QUEUE,
        kind=JOB_KIND,
        payload=payload,
        priority=jobs_pb2.JOB_PRIORITY_NORMAL,
    )


def job(index: int = 0, leased: bool = False) -> jobs_pb2.Job:
    """The Job statekeeper returns for `job_spec(index)` (leased: with its lease)."""
    spec = job_spec(index)
    now = _timestamp(time.time())
    result = jobs_pb2.Job(
        job_id=str(uuid.uuid4()),
        queue=spec.queue,
        kind=spec.kind,
        payload=spec.payload,
        priority=spec.priority,
        state=jobs_pb2.JOB_STATE_RUNNING if leased else jobs_pb2.JOB_STATE_AVAILABLE,
        attempt=1 if leased else 0,
        max_retries=3,
        run_after=now,
        create_time=now,
        update_time=now,
    )
    if leased:
        result.lease.CopyFrom(
            jobs_pb2.JobLease(lease_id=str(uuid.uuid4()), worker_id="worker-0", expire_time=now)
        )
    return result


def lease_request(worker: str, max_jobs: int) -> jobs_pb2.LeaseJobsRequest:
    """LeaseJobs of up to `max_jobs` from the benchmark queue, waiting up to a second."""
    return jobs_pb2.LeaseJobsRequest(
        queue=JOB_QUEUE,
        worker_id=worker,
        max_jobs=max_jobs,
        lease_duration=duration_pb2.Duration(seconds=60),
        wait=duration_pb2.Duration(seconds=1),
    )


def snapshot(run: str) -> snapshots_pb2.Snapshot:
    """A mid-run snapshot with a short conversation (about 1 KB)."""
    request = snapshots_pb2.RunRequest(
        provider="openai",
        model="gpt-4.1-mini",
        messages=[
            snapshots_pb2.Message(
                role=snapshots_pb2.MESSAGE_ROLE_SYSTEM,
                content=[snapshots_pb2.ContentPart(text="You are a careful research assistant.")],
            ),
            snapshots_pb2.Message(
                role=snapshots_pb2.MESSAGE_ROLE_USER,
                content=[
                    snapshots_pb2.ContentPart(
                        text="Summarize the latest quarterly revenue of the company "
                        "and compare it with the previous year, citing sources."
                    )
                ],
            ),
        ],
    )
    return snapshots_pb2.Snapshot(
        run_id=run,
        session_id=SESSION_PREFIX + run.split("-", 1)[-1],
        status=snapshots_pb2.RUN_STATUS_RUNNING,
        iteration=3,
        current_state=snapshots_pb2.TURN_STATE_EXECUTING_TOOLS,
        request=request,
        timestamp=_timestamp(1_700_000_000.0),
    )


def agent_checkpoint(agent: str) -> checkpoints_pb2.AgentCheckpoint:
    """An agent checkpoint with a small application state."""
    state = struct_pb2.Struct()
    state.update({"inbox": 3, "cursor": "msg-000123", "budget": {"tokens": 12000}})
    return checkpoints_pb2.AgentCheckpoint(
        agent_id=agent,
        agent_state=checkpoints_pb2.AGENT_STATE_ACTIVE,
        timestamp=_timestamp(1_700_000_000.0),
        app_state=state,
        metadata=checkpoints_pb2.AgentCheckpointMetadata(version=1, reason="periodic"),
    )


# -- large and wide messages (stalled followers, max-size requests) ----------------------

WIDE_KEY_WIDTH = 7
"""Characters of each key of a wide Struct (`k000123`), so every entry has the same size."""


def _wide_fields(count: int, offset: int = 0) -> dict[str, float]:
    return {f"k{offset + i:0{WIDE_KEY_WIDTH - 1}d}": float(i) for i in range(count)}


def wide_struct(target_bytes: int, depth: int = 1) -> struct_pb2.Struct:
    """A Struct of about `target_bytes` encoded (never more): many small number fields.

    Many small fields are what costs a server the most per byte to decode,
    check and convert. With `depth` > 1 the fields sit at the bottom of a
    chain of single-key objects (`{"d": {"d": ... {fields}}}`), so the value
    nests exactly `depth` levels.
    """

    def build(count: int) -> struct_pb2.Struct:
        leaf = struct_pb2.Struct()
        leaf.update(_wide_fields(count))
        for _ in range(depth - 1):
            outer = struct_pb2.Struct()
            outer.fields["d"].struct_value.CopyFrom(leaf)
            leaf = outer
        return leaf

    overhead = build(0).ByteSize()
    per_field = (build(100).ByteSize() - overhead) / 100
    count = max(0, int((target_bytes - overhead - 64) / per_field))
    data = build(count)
    while count > 0 and data.ByteSize() > target_bytes:
        count -= max(1, count // 1000)
        data = build(count)
    return data


def wide_list_struct(target_bytes: int, key: str = "items") -> struct_pb2.Struct:
    """`{key: [0, 1, 2, ...]}` of about `target_bytes` encoded (never more)."""

    def build(count: int) -> struct_pb2.Struct:
        data = struct_pb2.Struct()
        data.update({key: [float(i) for i in range(count)]})
        return data

    per_item = (build(1000).ByteSize() - build(0).ByteSize()) / 1000
    count = max(0, int((target_bytes - build(0).ByteSize() - 64) / per_item))
    data = build(count)
    while count > 0 and data.ByteSize() > target_bytes:
        count -= max(1, count // 1000)
        data = build(count)
    return data


def sized_event(size: int, index: int = 0) -> events_pb2.AgentEvent:
    """A tool-call event of about `size` bytes: the usual one with a `text` of padding."""
    event = custom_event()
    base = event.ByteSize()
    filler = "abcdefghij" * (max(0, size - base - 16) // 10 + 1)
    event.custom.data.fields["text"].string_value = (
        f"{index:08d}" + filler[: max(0, size - base - 16)]
    )
    return event
