"""Records of every family in a namespace, and a byte-exact dump of a namespace.

`seed_records` stores records of every family in every state they can be
left in (snapshots; open, finished and truncated runs; available,
scheduled, running, succeeded, dead and cancelled jobs; workflow and agent
checkpoint histories). The fuzzer seeds a control namespace it never
touches, and `dump_control` reads all of it back through every read path
as bytes: after fuzzing the dump must be byte-identical. Each fuzz worker
also seeds its own namespaces, so its requests find records to hit and
listings long enough to page through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

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
from tests.fuzz.mutations import NAMESPACE_HEADER

QUEUE = "control-queue"
SNAPSHOT_RUNS = ("ctl-snap-1", "ctl-snap-2", "ctl-snap-3", "ctl-snap-4")
EVENT_RUNS = ("ctl-run-done", "ctl-run-open", "ctl-run-cut")
WORKFLOW_RUNS = ("ctl-wf-1", "ctl-wf-2")
AGENTS = ("ctl-agent-1", "ctl-agent-2")
DAY = duration_pb2.Duration(seconds=86_400)
FAR_FUTURE = timestamp_pb2.Timestamp(seconds=253_370_764_800)  # 9000-01-01
WATCH_IDLE = 1.0

M = TypeVar("M", bound=Message)


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


class _Stubs:
    def __init__(self, channel: grpc.aio.Channel, namespace: str) -> None:
        self.metadata = ((NAMESPACE_HEADER, namespace),)
        self.responses: list[Message] = []
        self.snapshots = snapshots_pb2_grpc.SnapshotServiceStub(channel)
        self.events = events_pb2_grpc.EventLogServiceStub(channel)
        self.jobs = jobs_pb2_grpc.JobServiceStub(channel)
        self.checkpoints = checkpoints_pb2_grpc.CheckpointServiceStub(channel)

    async def __call__(self, method: Callable[..., Awaitable[M]], request: Message) -> M:
        response = await method(request, metadata=self.metadata, timeout=30)
        self.responses.append(response)
        return response


async def seed_records(channel: grpc.aio.Channel, namespace: str) -> list[Message]:
    """Store records of every family and state in `namespace`; the responses of the writes."""
    call = _Stubs(channel, namespace)
    for index, run_id in enumerate(SNAPSHOT_RUNS):
        last = index == len(SNAPSHOT_RUNS) - 1
        snapshot = snapshots_pb2.Snapshot(
            run_id=run_id,
            session_id="ctl-session",
            status=snapshots_pb2.RUN_STATUS_COMPLETED if last else snapshots_pb2.RUN_STATUS_RUNNING,
            iteration=index,
            total_usage=common_pb2.TokenUsage(input_tokens=10 * index, output_tokens=3),
        )
        snapshot.request.provider = "openai"
        snapshot.request.metadata.update({"index": index, "tags": ["a", "b"]})
        await call(
            call.snapshots.SaveSnapshot, snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot)
        )

    for run_id in EVENT_RUNS:
        inputs = [
            events_pb2.EventInput(
                event=events_pb2.AgentEvent(
                    run_started=events_pb2.RunStarted(session_id="ctl-session", model="m")
                ),
                event_id=f"{run_id}-start",
            )
        ]
        inputs += [
            events_pb2.EventInput(
                event=events_pb2.AgentEvent(
                    custom=events_pb2.CustomEvent(type="step", data=_struct({"n": n}))
                )
            )
            for n in range(4)
        ]
        if run_id == "ctl-run-done":
            inputs.append(
                events_pb2.EventInput(
                    event=events_pb2.AgentEvent(run_completed=events_pb2.RunCompleted(iterations=4))
                )
            )
        await call(
            call.events.AppendEvents, events_pb2.AppendEventsRequest(run_id=run_id, inputs=inputs)
        )
    await call(
        call.events.TruncateRun, events_pb2.TruncateRunRequest(run_id="ctl-run-cut", up_to_seq=2)
    )

    await _seed_jobs(call)

    for run_id in WORKFLOW_RUNS:
        for step in range(3 if run_id == "ctl-wf-1" else 1):
            checkpoint = checkpoints_pb2.WorkflowCheckpoint(
                run_id=run_id,
                workflow_name="ctl-flow",
                step=step,
                next_node_id=f"node-{step + 1}",
                scope_snapshot=_struct({"step": step, "notes": ["x"] * step}),
                metadata=_struct({"team": "ctl", "step": step}),
            )
            await call(
                call.checkpoints.SaveWorkflowCheckpoint,
                checkpoints_pb2.SaveWorkflowCheckpointRequest(checkpoint=checkpoint),
            )
    for agent_id in AGENTS:
        for version in range(2 if agent_id == "ctl-agent-1" else 1):
            state = checkpoints_pb2.AgentCheckpoint(
                agent_id=agent_id,
                agent_state=checkpoints_pb2.AGENT_STATE_ACTIVE,
                app_state=_struct({"version": version}),
                metadata=checkpoints_pb2.AgentCheckpointMetadata(version=version, reason="ctl"),
            )
            await call(
                call.checkpoints.PersistAgentCheckpoint,
                checkpoints_pb2.PersistAgentCheckpointRequest(checkpoint=state),
            )
    return call.responses


async def _seed_jobs(call: _Stubs) -> None:
    def spec(kind: str, **fields: Any) -> jobs_pb2.JobSpec:
        return jobs_pb2.JobSpec(queue=QUEUE, kind=kind, payload=_struct({"kind": kind}), **fields)

    await call(
        call.jobs.EnqueueJobs,
        jobs_pb2.EnqueueJobsRequest(
            jobs=[
                spec("ctl.available", priority=jobs_pb2.JOB_PRIORITY_HIGH),
                spec("ctl.available", priority=jobs_pb2.JOB_PRIORITY_LOW),
                spec("ctl.available"),
                spec("ctl.scheduled", run_after=FAR_FUTURE),
                spec("ctl.running"),
                spec("ctl.succeeded"),
                spec("ctl.dead", max_retries=0),
                spec("ctl.cancelled", idempotency_key="ctl-key"),
            ]
        ),
    )

    async def lease(kind: str) -> jobs_pb2.Job:
        leased = await call(
            call.jobs.LeaseJobs,
            jobs_pb2.LeaseJobsRequest(
                queue=QUEUE, kinds=[kind], worker_id="ctl-worker", lease_duration=DAY
            ),
        )
        [job] = leased.jobs
        return job

    await lease("ctl.running")
    done = await lease("ctl.succeeded")
    await call(
        call.jobs.CompleteJob,
        jobs_pb2.CompleteJobRequest(
            job_id=done.job_id, lease_id=done.lease.lease_id, result=_struct({"ok": True})
        ),
    )
    dead = await lease("ctl.dead")
    await call(
        call.jobs.FailJob,
        jobs_pb2.FailJobRequest(job_id=dead.job_id, lease_id=dead.lease.lease_id, error="boom"),
    )
    listed = await call(call.jobs.ListJobs, jobs_pb2.ListJobsRequest(kind="ctl.cancelled"))
    await call(call.jobs.CancelJob, jobs_pb2.CancelJobRequest(job_id=listed.jobs[0].job_id))


async def dump_control(channel: grpc.aio.Channel, namespace: str) -> dict[str, bytes]:
    """Everything `namespace` holds, read through every read path, as bytes by label."""
    call = _Stubs(channel, namespace)
    dump: dict[str, bytes] = {}

    async def pages(label: str, method: Callable[..., Awaitable[Any]], request: Any) -> list[Any]:
        responses = []
        for number in range(1000):
            response = await call(method, request)
            dump[f"{label} page {number}"] = response.SerializeToString(deterministic=True)
            responses.append(response)
            if not response.next_page_token:
                break
            request.page_token = response.next_page_token
        return responses

    await pages(
        "ListSnapshots",
        call.snapshots.ListSnapshots,
        snapshots_pb2.ListSnapshotsRequest(page_size=2),
    )
    for run_id in SNAPSHOT_RUNS:
        loaded = await call(
            call.snapshots.LoadSnapshot, snapshots_pb2.LoadSnapshotRequest(run_id=run_id)
        )
        dump[f"LoadSnapshot {run_id}"] = loaded.SerializeToString(deterministic=True)

    runs = await pages("ListRuns", call.events.ListRuns, events_pb2.ListRunsRequest(page_size=2))
    for page in runs:
        for run in page.runs:
            listed = await call(
                call.events.ListEvents,
                events_pb2.ListEventsRequest(run_id=run.run_id, after_seq=run.first_seq - 1),
            )
            dump[f"ListEvents {run.run_id}"] = listed.SerializeToString(deterministic=True)
            replay = call.events.ReplayEvents(
                events_pb2.ReplayEventsRequest(run_id=run.run_id, after_seq=run.first_seq - 1),
                metadata=call.metadata,
                timeout=30,
            )
            messages = [m.SerializeToString(deterministic=True) async for m in replay]
            dump[f"ReplayEvents {run.run_id}"] = b"|".join(messages)

    jobs = await pages("ListJobs", call.jobs.ListJobs, jobs_pb2.ListJobsRequest(page_size=2))
    for page in jobs:
        for job in page.jobs:
            got = await call(call.jobs.GetJob, jobs_pb2.GetJobRequest(job_id=job.job_id))
            dump[f"GetJob {job.job_id}"] = got.SerializeToString(deterministic=True)
    stats = await call(call.jobs.GetQueueStats, jobs_pb2.GetQueueStatsRequest(queue=QUEUE))
    for queue in stats.queues:
        queue.ClearField("oldest_available_age")  # grows by itself as time passes
    dump["GetQueueStats"] = stats.SerializeToString(deterministic=True)
    dump["WatchJobs"] = await _changes(call)

    await pages(
        "ListWorkflowCheckpoints latest",
        call.checkpoints.ListWorkflowCheckpoints,
        checkpoints_pb2.ListWorkflowCheckpointsRequest(page_size=1),
    )
    for run_id in WORKFLOW_RUNS:
        await pages(
            f"ListWorkflowCheckpoints {run_id}",
            call.checkpoints.ListWorkflowCheckpoints,
            checkpoints_pb2.ListWorkflowCheckpointsRequest(run_id=run_id, page_size=2),
        )
        loaded_checkpoint = await call(
            call.checkpoints.LoadWorkflowCheckpoint,
            checkpoints_pb2.LoadWorkflowCheckpointRequest(run_id=run_id),
        )
        dump[f"LoadWorkflowCheckpoint {run_id}"] = loaded_checkpoint.SerializeToString(
            deterministic=True
        )
    for agent_id in AGENTS:
        await pages(
            f"ListAgentCheckpoints {agent_id}",
            call.checkpoints.ListAgentCheckpoints,
            checkpoints_pb2.ListAgentCheckpointsRequest(agent_id=agent_id, page_size=1),
        )
        recovered = await call(
            call.checkpoints.RecoverAgentCheckpoint,
            checkpoints_pb2.RecoverAgentCheckpointRequest(agent_id=agent_id),
        )
        dump[f"RecoverAgentCheckpoint {agent_id}"] = recovered.SerializeToString(deterministic=True)
    return dump


async def _changes(call: _Stubs) -> bytes:
    """Every job change of the namespace kept, from the oldest, heartbeats left out."""
    stream = call.jobs.WatchJobs(
        jobs_pb2.WatchJobsRequest(after_change_id=0), metadata=call.metadata, timeout=60
    )
    changes: list[bytes] = []
    try:
        while True:
            try:
                message = await asyncio.wait_for(stream.read(), WATCH_IDLE)
            except asyncio.TimeoutError:
                break
            if not isinstance(message, jobs_pb2.WatchJobsResponse):  # grpc.aio.EOF
                break
            changes.extend(
                change.SerializeToString(deterministic=True) for change in message.changes.changes
            )
    finally:
        stream.cancel()
    return b"|".join(changes)


def compare_dumps(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    """Labels whose bytes differ, appeared or vanished between two dumps."""
    return sorted(
        label for label in before.keys() | after.keys() if before.get(label) != after.get(label)
    )
