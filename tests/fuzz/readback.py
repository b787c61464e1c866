"""After a successful write, the records it returned must read back.

Records are found by type anywhere in a write's response (so a new write
RPC returning a Job is covered without changes here) and read through every
read path of their family, with the same headers as the write:

- Snapshot: LoadSnapshot returns it unchanged; ListSnapshots lists it.
- EventEnvelope: ListEvents and ReplayEvents from just before its seq
  return it unchanged; ListRuns lists its run.
- Job: GetJob returns it; ListJobs lists it; WatchJobs from the oldest
  change delivers a change of the job to the state the write returned.
- WorkflowCheckpoint: loading it by id and as the newest returns it
  unchanged; it heads its run's history.
- AgentCheckpoint: RecoverAgentCheckpoint returns it unchanged; it heads
  the agent's history.

Each fuzz worker owns its namespaces and waits for its read-backs before
its next request, so nothing else changes these records in between.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import DecodeError, Message

from statekeeper.v1 import checkpoints_pb2, events_pb2, jobs_pb2, snapshots_pb2
from tests.fuzz.catalog import rpc_named
from tests.fuzz.checks import Finding
from tests.fuzz.plan import Planned
from tests.fuzz.pool import WELL_KNOWN
from tests.fuzz.session import Session

MAX_RECORDS = 3
"""Records of each type read back per response (first, last, one between)."""
MAX_PAGES = 40
WATCH_IDLE_WAIT = 1.0


def same(left: Message, right: Message) -> bool:
    """Byte-identical encodings (NaN-safe, unlike message equality)."""
    return left.SerializeToString(deterministic=True) == right.SerializeToString(deterministic=True)


def _records(message: Message, found: dict[str, list[Message]]) -> None:
    for field, value in message.ListFields():
        if field.message_type is None or field.message_type.full_name in WELL_KNOWN:
            continue
        for child in value if field.is_repeated else [value]:
            name = child.DESCRIPTOR.full_name
            if name in READERS:
                found.setdefault(name, []).append(child)
            else:
                _records(child, found)


def _sample(records: list[Message]) -> list[Message]:
    if len(records) <= MAX_RECORDS:
        return records
    return [records[0], records[len(records) // 2], records[-1]]


async def read_back(session: Session, planned: Planned, responses: list[Message]) -> None:
    """Read every record the write returned through its family's read paths."""
    found: dict[str, list[Message]] = {}
    for response in responses:
        _records(response, found)
    for name, records in found.items():
        for record in _sample(records):
            await READERS[name](session, planned, record)


class _Reader:
    """Read-back calls for one record, failing the cause with context."""

    def __init__(self, session: Session, cause: Planned, what: str) -> None:
        self.session = session
        self.cause = cause
        self.what = what

    def fail(self, rule: str, detail: str = "") -> None:
        self.session.record(self.cause, Finding(rule, f"{self.what}: {detail}".rstrip(": ")))

    async def one(self, method: str, request: Message, **options: Any) -> list[Message] | None:
        """The responses of a read that must succeed; None (recorded) if it failed."""
        outcome, decoded = await self.session.read(
            rpc_named(method), request, self.cause, **options
        )
        if not outcome.ok:
            self.fail(
                "written record does not read back",
                f"{method} answered {outcome.code.name}: {outcome.details[:200]}",
            )
            return None
        if len(decoded) != len(outcome.responses):
            return None  # undecodable: already recorded
        return decoded

    async def find(
        self,
        method: str,
        request: Message,
        items: str,
        match: Callable[[Any], bool],
    ) -> Message | None:
        """The first item of a paged list that matches, across pages; None if absent."""
        for _ in range(MAX_PAGES):
            pages = await self.one(method, request)
            if not pages:
                return None
            page = pages[0]
            for item in getattr(page, items):
                if match(item):
                    return item  # type: ignore[no-any-return]
            token = page.next_page_token  # type: ignore[attr-defined]
            if not token:
                break
            request.page_token = token  # type: ignore[attr-defined]
        self.fail("written record missing from its listing", method)
        return None


async def _snapshot(session: Session, cause: Planned, record: Message) -> None:
    snapshot: snapshots_pb2.Snapshot = record  # type: ignore[assignment]
    reader = _Reader(session, cause, f"snapshot of run {snapshot.run_id!r}")
    loaded = await reader.one(
        "SnapshotService.LoadSnapshot", snapshots_pb2.LoadSnapshotRequest(run_id=snapshot.run_id)
    )
    if loaded and not same(loaded[0].snapshot, snapshot):  # type: ignore[attr-defined]
        reader.fail("record reads back changed", "LoadSnapshot")
    listed = await reader.find(
        "SnapshotService.ListSnapshots",
        snapshots_pb2.ListSnapshotsRequest(
            session_id=snapshot.session_id, status=snapshot.status, page_size=1000
        ),
        "snapshots",
        lambda item: item.run_id == snapshot.run_id,
    )
    if listed is not None and not same(listed, snapshot):
        reader.fail("record reads back changed", "ListSnapshots")


async def _envelope(session: Session, cause: Planned, record: Message) -> None:
    envelope: events_pb2.EventEnvelope = record  # type: ignore[assignment]
    reader = _Reader(session, cause, f"event {envelope.seq} of run {envelope.run_id!r}")
    listed = await reader.one(
        "EventLogService.ListEvents",
        events_pb2.ListEventsRequest(run_id=envelope.run_id, after_seq=envelope.seq - 1, limit=1),
    )
    if listed is not None:
        page: events_pb2.ListEventsResponse = listed[0]  # type: ignore[assignment]
        if not page.envelopes or not same(page.envelopes[0], envelope):
            reader.fail("record reads back changed", "ListEvents")
    replayed = await reader.one(
        "EventLogService.ReplayEvents",
        events_pb2.ReplayEventsRequest(run_id=envelope.run_id, after_seq=envelope.seq - 1),
    )
    if replayed is not None:
        first = next(
            (m.batch.envelopes[0] for m in replayed if m.HasField("batch") and m.batch.envelopes),  # type: ignore[attr-defined]
            None,
        )
        if first is None or not same(first, envelope):
            reader.fail("record reads back changed", "ReplayEvents")
        if not any(m.HasField("caught_up") for m in replayed):
            reader.fail("replay ended without its caught-up marker")
    await reader.find(
        "EventLogService.ListRuns",
        events_pb2.ListRunsRequest(page_size=1000),
        "runs",
        lambda item: item.run_id == envelope.run_id,
    )


async def _job(session: Session, cause: Planned, record: Message) -> None:
    job: jobs_pb2.Job = record  # type: ignore[assignment]
    reader = _Reader(session, cause, f"job {job.job_id!r}")
    got = await reader.one("JobService.GetJob", jobs_pb2.GetJobRequest(job_id=job.job_id))
    if got and got[0].job.job_id != job.job_id:  # type: ignore[attr-defined]
        reader.fail("record reads back changed", "GetJob returned another job")
    await reader.find(
        "JobService.ListJobs",
        jobs_pb2.ListJobsRequest(queue=job.queue, kind=job.kind, page_size=1000),
        "jobs",
        lambda item: item.job_id == job.job_id,
    )

    def changes(messages: list[Message]) -> list[jobs_pb2.JobChange]:
        return [
            change
            for message in messages
            if message.HasField("changes")
            for change in message.changes.changes  # type: ignore[attr-defined]
        ]

    def is_the_write(change: jobs_pb2.JobChange) -> bool:
        return change.job_id == job.job_id and change.state == job.state

    def seen(data: bytes) -> bool:
        with contextlib.suppress(DecodeError):
            return any(map(is_the_write, changes([jobs_pb2.WatchJobsResponse.FromString(data)])))
        return False

    watched = await reader.one(
        "JobService.WatchJobs",
        jobs_pb2.WatchJobsRequest(job_ids=[job.job_id], after_change_id=0),
        idle_wait=WATCH_IDLE_WAIT,
        enough=seen,
    )
    if watched is not None and not any(map(is_the_write, changes(watched))):
        reader.fail(
            "write missing from WatchJobs",
            f"no change to {jobs_pb2.JobState.Name(job.state)} among {len(changes(watched))}",
        )


async def _workflow(session: Session, cause: Planned, record: Message) -> None:
    checkpoint: checkpoints_pb2.WorkflowCheckpoint = record  # type: ignore[assignment]
    run_id, checkpoint_id = checkpoint.run_id, checkpoint.checkpoint_id
    reader = _Reader(session, cause, f"checkpoint {checkpoint_id!r} of run {run_id!r}")
    for request, path in (
        (
            checkpoints_pb2.LoadWorkflowCheckpointRequest(
                run_id=run_id, checkpoint_id=checkpoint_id
            ),
            "LoadWorkflowCheckpoint by id",
        ),
        (checkpoints_pb2.LoadWorkflowCheckpointRequest(run_id=run_id), "LoadWorkflowCheckpoint"),
    ):
        loaded = await reader.one("CheckpointService.LoadWorkflowCheckpoint", request)
        if loaded and not same(loaded[0].checkpoint, checkpoint):  # type: ignore[attr-defined]
            reader.fail("record reads back changed", path)
    history = await reader.one(
        "CheckpointService.ListWorkflowCheckpoints",
        checkpoints_pb2.ListWorkflowCheckpointsRequest(run_id=run_id, page_size=1),
    )
    if history is not None:
        page: checkpoints_pb2.ListWorkflowCheckpointsResponse = history[0]  # type: ignore[assignment]
        if not page.checkpoints or not same(page.checkpoints[0], checkpoint):
            reader.fail("record reads back changed", "ListWorkflowCheckpoints")


async def _agent(session: Session, cause: Planned, record: Message) -> None:
    checkpoint: checkpoints_pb2.AgentCheckpoint = record  # type: ignore[assignment]
    agent_id = checkpoint.agent_id
    reader = _Reader(session, cause, f"checkpoint {checkpoint.checkpoint_id!r} of {agent_id!r}")
    recovered = await reader.one(
        "CheckpointService.RecoverAgentCheckpoint",
        checkpoints_pb2.RecoverAgentCheckpointRequest(agent_id=agent_id),
    )
    if recovered and not same(recovered[0].checkpoint, checkpoint):  # type: ignore[attr-defined]
        reader.fail("record reads back changed", "RecoverAgentCheckpoint")
    history = await reader.one(
        "CheckpointService.ListAgentCheckpoints",
        checkpoints_pb2.ListAgentCheckpointsRequest(agent_id=agent_id, page_size=1),
    )
    if history is not None:
        page: checkpoints_pb2.ListAgentCheckpointsResponse = history[0]  # type: ignore[assignment]
        if not page.checkpoints or not same(page.checkpoints[0], checkpoint):
            reader.fail("record reads back changed", "ListAgentCheckpoints")
    # The agent's own id is the first id starting with it.
    listed = await reader.one(
        "CheckpointService.ListAgents",
        checkpoints_pb2.ListAgentsRequest(agent_id_prefix=agent_id, page_size=1),
    )
    if listed is not None:
        agents: checkpoints_pb2.ListAgentsResponse = listed[0]  # type: ignore[assignment]
        if not agents.checkpoints or not same(agents.checkpoints[0], checkpoint):
            reader.fail("record reads back changed", "ListAgents")


READERS: dict[str, Callable[[Session, Planned, Message], Awaitable[None]]] = {
    "statekeeper.v1.Snapshot": _snapshot,
    "statekeeper.v1.EventEnvelope": _envelope,
    "statekeeper.v1.Job": _job,
    "statekeeper.v1.WorkflowCheckpoint": _workflow,
    "statekeeper.v1.AgentCheckpoint": _agent,
}
"""Record type -> how to read one back."""
