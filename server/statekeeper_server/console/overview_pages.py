"""The console's overview at `/`: what each family holds and did lately, each queue's
jobs by state with the age of its longest-waiting job, and the store's health.

Every figure comes from one bounded gRPC call, made concurrently with the
others: a family shows the first page of a listing (counted as "N" or "N+"
when more follow) rather than a total, since a total would read every run,
checkpoint or snapshot of the namespace. Queue counts are the API's queue
statistics, each stopping at COUNT_LIMIT jobs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from statekeeper.v1 import (
    checkpoints_pb2,
    checkpoints_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    snapshots_pb2,
    snapshots_pb2_grpc,
)
from statekeeper_server.console import views
from statekeeper_server.console.queue_counts import COUNT_LIMIT, queue_view

if TYPE_CHECKING:
    from statekeeper_server.console.views import Console

RECENT = 10
"""Items of each family the overview lists (and counts before saying "N+")."""
QUEUES_SHOWN = 50
"""Queues of the overview's table; a link leads to the rest."""


@dataclass(frozen=True)
class Listed:
    """The first page of a family's listing: its items and whether more follow."""

    items: list[Any]
    more: bool

    @property
    def count(self) -> str:
        """How many there are, as far as one page tells: "3", or "10+" when more follow."""
        return f"{len(self.items)}+" if self.more else str(len(self.items))


def install(console: Console, app: web.Application) -> None:
    """Serve the overview at `/` (behind the console's guard)."""
    app.router.add_get("/", console.guard(partial(overview, console)), name="overview")


async def overview(console: Console, request: web.Request) -> web.Response:
    """The overview page: every part read at once, each with one bounded call."""
    open_runs, checkpoints, snapshots, queues, health = await asyncio.gather(
        _open_runs(console, request),
        _checkpoints(console, request),
        _snapshots(console, request),
        _queues(console, request),
        _health(console, request),
    )
    return console.render(
        request,
        "overview.html",
        open_runs=open_runs,
        checkpoints=checkpoints,
        snapshots=snapshots,
        queues=queues,
        states=views.STATES,
        health=health,
        recent=RECENT,
    )


async def _open_runs(console: Console, request: web.Request) -> Listed:
    """The first open runs (no terminal event yet), in run_id order."""
    stub = events_pb2_grpc.EventLogServiceStub(console.channel())
    response = await stub.ListRuns(
        events_pb2.ListRunsRequest(page_size=RECENT, terminal=False),
        metadata=console.options(request).metadata,
        timeout=views.CALL_TIMEOUT,
    )
    runs = [
        {
            "run_id": run.run_id,
            "session_id": run.session_id,
            "last_seq": run.last_seq,
            "update_time": _time(run.update_time) if run.HasField("update_time") else "",
        }
        for run in response.runs
    ]
    return Listed(runs, bool(response.next_page_token))


async def _checkpoints(console: Console, request: web.Request) -> Listed:
    """The newest workflow checkpoint of the first runs that have one."""
    stub = checkpoints_pb2_grpc.CheckpointServiceStub(console.channel())
    response = await stub.ListWorkflowCheckpoints(
        checkpoints_pb2.ListWorkflowCheckpointsRequest(page_size=RECENT),
        metadata=console.options(request).metadata,
        timeout=views.CALL_TIMEOUT,
    )
    items = [
        {
            "run_id": checkpoint.run_id,
            "workflow_name": checkpoint.workflow_name,
            "step": checkpoint.step,
            "create_time": _time(checkpoint.create_time)
            if checkpoint.HasField("create_time")
            else "",
        }
        for checkpoint in response.checkpoints
    ]
    return Listed(items, bool(response.next_page_token))


async def _snapshots(console: Console, request: web.Request) -> Listed:
    """The first run snapshots, in run_id order."""
    stub = snapshots_pb2_grpc.SnapshotServiceStub(console.channel())
    response = await stub.ListSnapshots(
        snapshots_pb2.ListSnapshotsRequest(page_size=RECENT),
        metadata=console.options(request).metadata,
        timeout=views.CALL_TIMEOUT,
    )
    items = [
        {
            "run_id": snapshot.run_id,
            "status": snapshots_pb2.RunStatus.Name(snapshot.status).removeprefix("RUN_STATUS_"),
            "iteration": snapshot.iteration,
            "update_time": _time(snapshot.update_time) if snapshot.HasField("update_time") else "",
        }
        for snapshot in response.snapshots
    ]
    return Listed(items, bool(response.next_page_token))


async def _queues(console: Console, request: web.Request) -> Listed:
    """The first queues, each with its jobs by state and its oldest available job's age."""
    stub = jobs_pb2_grpc.JobServiceStub(console.channel())
    response = await stub.GetQueueStats(
        jobs_pb2.GetQueueStatsRequest(page_size=QUEUES_SHOWN, count_limit=COUNT_LIMIT),
        metadata=console.options(request).metadata,
        timeout=views.CALL_TIMEOUT,
    )
    queues = [queue_view(stats) for stats in response.queues]
    return Listed(queues, bool(response.next_page_token))


async def _health(console: Console, request: web.Request) -> str:
    """The server's and store's health as the health service reports it."""
    stub: Any = health_pb2_grpc.HealthStub(console.channel())  # untyped stubs
    health = await stub.Check(
        health_pb2.HealthCheckRequest(service=""),
        metadata=console.options(request).metadata,
        timeout=views.CALL_TIMEOUT,
    )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(health.status))


def _time(stamp: Any) -> str:
    """A Timestamp as RFC 3339 text (UTC), for a <time> element."""
    return str(stamp.ToJsonString())
