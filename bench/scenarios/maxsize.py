"""Max-size requests: what the largest requests the server accepts cost another caller.

Generator processes send, in a loop (2 callers per kind), the largest
request of each writing kind, sized just under the limits of
`statekeeper_server/limits.py` and made of many small JSON fields (what
costs a server the most per byte to decode, check and convert):

- `SaveSnapshot` of a snapshot whose request metadata fills the record limit;
- `AppendEvents` of 1,000 events of about 3.6 KB each (wide data), filling
  the response budget;
- `AppendEvent` of one event whose custom data nests MAX_JSON_DEPTH levels
  and ends in a wide object, filling the record limit;
- `EnqueueJobs` of 3 jobs with wide payloads at the payload limit;
- `CompleteJob` with a wide result at the result limit (each call after an
  untimed small enqueue and lease);
- `SaveWorkflowCheckpoint` with a wide scope_snapshot and wide metadata at
  their limits;
- `ListWorkflowCheckpoints` over 100 stored checkpoints with a
  metadata_filter of MAX_FILTER_KEYS keys whose string values fill the
  request limit;
- a `statekeeper.append_event` job whose event data is a list of about
  95,000 numbers (the payload limit), enqueued to the built-in runner; the
  caller waits (polling GetJob every 100 ms) until the job finished before
  the next.

Meanwhile a probe client (its own process) calls LoadSnapshot of a small
snapshot and GetJob of a small job, one at a time, and its p99 is put
beside the same probe on the same server before any load. Requests the
server refuses are counted by code (and ErrorInfo reason); each row says
how many of its kind succeeded and how many were refused. One row per
kind, then one with every kind at once (over a window twice as long, since
its calls take seconds). Target: the other caller's p99
under 50 ms, as for stalled followers. Beside it, for information, the same
load on a server that serves every large request at once instead of in
turns (`--large-request-bytes 0`): the other caller's p99 there, and how many
large calls each served.

Each row also reads the server's `statekeeper_event_loop_lag_seconds`
histogram before and after its window: how late the event loop fired a
timer due every 20 ms, which bounds how long any step held the loop. It is
given as the bucket bounds under which 99% and all samples fell.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2, struct_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from bench import payloads, servers
from bench.harness import Bench
from bench.load import (
    CHANNEL_OPTIONS,
    Window,
    latency_probe,
    method,
    percentile,
    process_cpu,
    raw_unary,
    unary_many,
)
from bench.report import ERROR, Row, Target
from bench.scenarios.common import (
    APPEND_EVENT,
    APPEND_EVENTS,
    COMPLETE_JOB,
    ENQUEUE_JOBS,
    LEASE_JOBS,
    LOAD_SNAPSHOT,
    SAVE_SNAPSHOT,
    store_label,
)
from bench.timed_server import REPORT_ENV
from statekeeper.v1 import checkpoints_pb2, events_pb2, jobs_pb2, snapshots_pb2
from statekeeper_server import limits
from statekeeper_server.request_checks import check_request
from statekeeper_server.wire_twins import depth_twin, screen_for

MB = 1024 * 1024
GET_JOB = method("JobService", "GetJob")
ENQUEUE_JOB = method("JobService", "EnqueueJob")
SAVE_WORKFLOW_CHECKPOINT = method("CheckpointService", "SaveWorkflowCheckpoint")
LIST_WORKFLOW_CHECKPOINTS = method("CheckpointService", "ListWorkflowCheckpoints")

CALLERS_PER_KIND = 2
MARGIN = 4 * limits.KIB
"""How far under each limit the requests stay (ids and framing vary a little)."""
BATCH_EVENTS = 1_000
ENQUEUE_BATCH = 3
STORED_CHECKPOINTS = 100
"""Checkpoints (one per run) the metadata filter runs over."""
BUILTIN_QUEUE = "statekeeper.builtin"
APPEND_EVENT_KIND = "statekeeper.append_event"
FINISHED = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_DEAD, jobs_pb2.JOB_STATE_CANCELLED)
JOB_POLL = 0.1
"""Seconds between a caller's GetJob polls of its job (each returns the 1 MB payload)."""
JOB_LIMIT = 120.0
"""Seconds a caller waits for the built-in runner to finish its job."""
CALL_TIMEOUT = 120.0
P99_TARGET_MS = 50.0
DURATIONS = {"full": 10.0, "quick": 5.0, "smoke": 2.0}
"""Seconds of each window: long enough for many calls of a second or more."""
BUILD_LEAD = 3.0
"""Extra seconds before a window for the generators to build their requests."""
PROBE_SNAPSHOT = payloads.run_id(0, "probe")
PROBE_QUEUE = "probe"


# -- requests (built in the generator process that sends them) -----------------------


def wide_struct(target_bytes: int, depth: int = 2) -> struct_pb2.Struct:
    """A Struct of about `target_bytes` encoded (never more): many small number fields in
    objects of MAX_JSON_OBJECT_KEYS keys (`{"g000": {...}, "g001": {...}}`), nesting
    `depth` levels (at least 2: the groups sit at the bottom of a chain of single-key
    objects). Built once, then trimmed: building takes a good part of a second."""

    def build(count: int) -> struct_pb2.Struct:
        data = struct_pb2.Struct()
        groups = data
        for _ in range(depth - 2):
            groups = groups.fields["d"].struct_value
        for group, start in enumerate(range(0, count, limits.MAX_JSON_OBJECT_KEYS)):
            keys = range(start, min(count, start + limits.MAX_JSON_OBJECT_KEYS))
            groups.fields[f"g{group:03d}"].struct_value.update(
                {f"k{key:06d}": float(key) for key in keys}
            )
        return data

    per_field = (build(1000).ByteSize() - build(0).ByteSize()) / 1000
    count = max(0, int((target_bytes - build(0).ByteSize() - 64) / per_field))
    data = build(count)
    last = data
    for _ in range(depth - 2):
        last = last.fields["d"].struct_value
    while count > 0 and (excess := data.ByteSize() - target_bytes) > 0:
        # Drop the last keys: each takes about per_field bytes.
        for _ in range(min(count, int(excess / per_field) + 1)):
            count -= 1
            group = last.fields[f"g{count // limits.MAX_JSON_OBJECT_KEYS:03d}"].struct_value
            del group.fields[f"k{count:06d}"]
    return data


def _caller_id(kind: str, caller: int) -> str:
    """The fixed-width id (run, queue) of one caller of a kind: `snapshot-00000001`."""
    return payloads.run_id(caller, kind)


def _per_caller(kind: str) -> Callable[[Callable[[str], bytes]], Callable[[int], bytes]]:
    """Build a kind's request once (with caller 0's id); each caller gets a copy with its own id.

    Ids have a fixed width, so swapping them in the encoded bytes keeps the
    message valid; building a wide message takes a good part of a second.
    """

    def decorate(build: Callable[[str], bytes]) -> Callable[[int], bytes]:
        first = _caller_id(kind, 0)
        template = functools.cache(lambda: build(first))

        @functools.wraps(build)
        def for_caller(caller: int) -> bytes:
            return template().replace(first.encode(), _caller_id(kind, caller).encode())

        return for_caller

    return decorate


@_per_caller("snapshot")
def snapshot_request(run: str) -> bytes:
    """SaveSnapshot of a snapshot at the record limit (wide request metadata)."""
    snapshot = payloads.snapshot(run)
    room = limits.MAX_RECORD_BYTES - MARGIN - snapshot.ByteSize()
    snapshot.request.metadata.CopyFrom(wide_struct(room))
    return snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot).SerializeToString()


@_per_caller("batch")
def batch_request(run: str) -> bytes:
    """AppendEvents of BATCH_EVENTS wide events filling the response budget."""
    per_event = limits.RESPONSE_BUDGET_BYTES // BATCH_EVENTS - 512
    event = payloads.custom_event()
    event.custom.data.CopyFrom(payloads.wide_struct(per_event - event.ByteSize()))
    inputs = [events_pb2.EventInput(event=event)] * BATCH_EVENTS
    return events_pb2.AppendEventsRequest(run_id=run, inputs=inputs).SerializeToString()


@_per_caller("deep")
def deep_event_request(run: str) -> bytes:
    """AppendEvent of one event nesting MAX_JSON_DEPTH levels, at the record limit."""
    event = payloads.custom_event()
    room = limits.MAX_RECORD_BYTES - MARGIN - event.ByteSize()
    event.custom.data.CopyFrom(wide_struct(room, depth=limits.MAX_JSON_DEPTH))
    return events_pb2.AppendEventRequest(
        run_id=run, input=events_pb2.EventInput(event=event)
    ).SerializeToString()


@_per_caller("queue")
def enqueue_request(queue: str) -> bytes:
    """EnqueueJobs of ENQUEUE_BATCH jobs with wide payloads at the payload limit."""
    spec = payloads.job_spec(0)
    spec.queue = queue
    spec.payload.CopyFrom(wide_struct(limits.MAX_JOB_PAYLOAD_BYTES - MARGIN))
    return jobs_pb2.EnqueueJobsRequest(jobs=[spec] * ENQUEUE_BATCH).SerializeToString()


@functools.cache
def result_struct() -> struct_pb2.Struct:
    """A wide job result at the result limit."""
    return wide_struct(limits.MAX_JOB_RESULT_BYTES - MARGIN)


@_per_caller("checkpoint")
def checkpoint_request(run: str) -> bytes:
    """SaveWorkflowCheckpoint with wide metadata and scope_snapshot at their limits."""
    checkpoint = checkpoints_pb2.WorkflowCheckpoint(
        run_id=run, workflow_name="bench", step=1, next_node_id="n"
    )
    checkpoint.metadata.CopyFrom(payloads.wide_struct(limits.MAX_METADATA_BYTES - MARGIN))
    room = limits.MAX_RECORD_BYTES - 2 * MARGIN - checkpoint.ByteSize()
    checkpoint.scope_snapshot.CopyFrom(wide_struct(room))
    return checkpoints_pb2.SaveWorkflowCheckpointRequest(checkpoint=checkpoint).SerializeToString()


@_per_caller("filter")
def filter_request(_unused: str) -> bytes:
    """ListWorkflowCheckpoints of every run's newest, filtered on MAX_FILTER_KEYS long strings.

    The keys are those of the stored checkpoints' metadata (whose values are
    numbers, so nothing matches and every checkpoint is looked at).
    """
    value_bytes = (limits.DEFAULT_MAX_REQUEST_BYTES - 16 * MARGIN) // limits.MAX_FILTER_KEYS
    request = checkpoints_pb2.ListWorkflowCheckpointsRequest(page_size=1000)
    for index in range(limits.MAX_FILTER_KEYS):
        request.metadata_filter.fields[f"k{index:06d}"].string_value = "v" * value_bytes
    return request.SerializeToString()


def stored_checkpoint_request(index: int) -> bytes:
    """A checkpoint for the filter to look at: metadata with the filter's keys (numbers)."""
    checkpoint = checkpoints_pb2.WorkflowCheckpoint(
        run_id=payloads.run_id(index, "filtered"), workflow_name="bench", step=1
    )
    checkpoint.metadata.CopyFrom(payloads.wide_struct(8 * limits.KIB))
    return checkpoints_pb2.SaveWorkflowCheckpointRequest(checkpoint=checkpoint).SerializeToString()


@_per_caller("runner")
def append_job_request(run: str) -> bytes:
    """EnqueueJob of a statekeeper.append_event job whose event data is a wide list."""
    payload = struct_pb2.Struct()
    payload.update({"run_id": run, "event": {"custom": {"type": "bench.wide", "data": {}}}})
    base = payload.ByteSize()
    items = payloads.wide_list_struct(limits.MAX_JOB_PAYLOAD_BYTES - MARGIN - base)
    payload.fields["event"].struct_value.fields["custom"].struct_value.fields[
        "data"
    ].struct_value.CopyFrom(items)
    spec = jobs_pb2.JobSpec(queue=BUILTIN_QUEUE, kind=APPEND_EVENT_KIND, payload=payload)
    return jobs_pb2.EnqueueJobRequest(job=spec).SerializeToString()


# -- generator side ---------------------------------------------------------------


Call = Callable[[grpc.aio.Channel], Awaitable[None]]


@dataclass(frozen=True)
class Kind:
    """A kind of max-size request: its row's name and how one caller sends one."""

    name: str
    what: str
    make: Callable[[int], Callable[[grpc.aio.Channel], Awaitable[None]]]


def _plain(path: str, build: Callable[[int], bytes]) -> Callable[[int], Call]:
    def make(caller: int) -> Call:
        request = build(caller)

        async def send(channel: grpc.aio.Channel) -> None:
            await raw_unary(channel, path)(request, timeout=CALL_TIMEOUT)

        return send

    return make


def _complete(caller: int) -> Call:
    queue = _caller_id("complete", caller)
    spec = payloads.job_spec(caller)
    spec.queue = queue
    enqueue = jobs_pb2.EnqueueJobsRequest(jobs=[spec]).SerializeToString()
    lease = jobs_pb2.LeaseJobsRequest(
        queue=queue,
        worker_id=f"worker-{caller}",
        max_jobs=1,
        lease_duration=duration_pb2.Duration(seconds=300),
    ).SerializeToString()
    result = result_struct()

    async def send(channel: grpc.aio.Channel) -> None:
        await raw_unary(channel, ENQUEUE_JOBS)(enqueue, timeout=CALL_TIMEOUT)
        reply = await raw_unary(channel, LEASE_JOBS)(lease, timeout=CALL_TIMEOUT)
        job = jobs_pb2.LeaseJobsResponse.FromString(reply).jobs[0]
        request = jobs_pb2.CompleteJobRequest(
            job_id=job.job_id, lease_id=job.lease.lease_id, result=result
        )
        await raw_unary(channel, COMPLETE_JOB)(request.SerializeToString(), timeout=CALL_TIMEOUT)

    return send


class JobDied(Exception):
    """The built-in runner finished a job without success (DEAD or CANCELLED)."""


def _runner(caller: int) -> Call:
    request = append_job_request(caller)

    async def send(channel: grpc.aio.Channel) -> None:
        reply = await raw_unary(channel, ENQUEUE_JOB)(request, timeout=CALL_TIMEOUT)
        job_id = jobs_pb2.EnqueueJobResponse.FromString(reply).job.job_id
        get = jobs_pb2.GetJobRequest(job_id=job_id).SerializeToString()
        deadline = time.monotonic() + JOB_LIMIT
        while time.monotonic() < deadline:
            await asyncio.sleep(JOB_POLL)
            job = jobs_pb2.GetJobResponse.FromString(
                await raw_unary(channel, GET_JOB)(get, timeout=CALL_TIMEOUT)
            ).job
            if job.state == jobs_pb2.JOB_STATE_SUCCEEDED:
                return
            if job.state in FINISHED:
                raise JobDied(jobs_pb2.JobState.Name(job.state))
        raise JobDied("not finished in time")

    return send


KINDS = [
    Kind(
        "SaveSnapshot",
        "2 MB snapshot (wide request metadata)",
        _plain(SAVE_SNAPSHOT, snapshot_request),
    ),
    Kind(
        "AppendEvents",
        f"{BATCH_EVENTS:,} wide events of 4 KB",
        _plain(APPEND_EVENTS, batch_request),
    ),
    Kind(
        "AppendEvent",
        f"2 MB event data {limits.MAX_JSON_DEPTH} levels deep",
        _plain(APPEND_EVENT, deep_event_request),
    ),
    Kind(
        "EnqueueJobs",
        f"{ENQUEUE_BATCH} jobs with 1 MB wide payloads",
        _plain(ENQUEUE_JOBS, enqueue_request),
    ),
    Kind("CompleteJob", "1 MB wide result", _complete),
    Kind(
        "SaveWorkflowCheckpoint",
        "2 MB wide scope_snapshot, 64 KB wide metadata",
        _plain(SAVE_WORKFLOW_CHECKPOINT, checkpoint_request),
    ),
    Kind(
        "ListWorkflowCheckpoints",
        f"metadata_filter of {limits.MAX_FILTER_KEYS} keys, 4 MB of strings",
        _plain(LIST_WORKFLOW_CHECKPOINTS, filter_request),
    ),
    Kind("append_event job", "1 MB payload, a list of ~95,000 numbers", _runner),
]
KINDS_BY_NAME = {kind.name: kind for kind in KINDS}


def _outcome(exc: BaseException) -> str:
    """`refused CODE (REASON)` for a refused call, `failed ...` for a job that died."""
    if isinstance(exc, JobDied):
        return f"job {exc}"
    assert isinstance(exc, grpc.aio.AioRpcError)
    reason = ""
    try:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    except ValueError:
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = f" ({info.reason})"
    return f"refused {exc.code().name}{reason}"


async def maxsize_load(
    target: str, kinds: Sequence[str], callers: int, start_at: float, duration: float
) -> Window:
    """`callers` callers per kind send its max-size request in a loop until the window ends.

    `extra` counts, per kind, `<kind>|ok` and `<kind>|<outcome>` of the calls
    that ended inside the window, `<kind>|p50` of their latency, and
    `<kind>|bytes` (the request's size).
    """
    senders = [
        (name, caller, KINDS_BY_NAME[name].make(caller))
        for name in kinds
        for caller in range(callers)
    ]
    end_at = start_at + duration
    window = Window(seconds=duration)
    latencies: dict[str, list[float]] = {name: [] for name in kinds}
    channels = [
        grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(len(senders))
    ]
    marks: dict[str, float] = {}

    async def loop(index: int, name: str, send: Call) -> None:
        while True:
            started_wall = time.time()
            if started_wall >= end_at:
                return
            started = time.perf_counter()
            try:
                await send(channels[index])
                outcome = "ok"
            except (grpc.aio.AioRpcError, JobDied) as exc:
                outcome = _outcome(exc)
                if outcome.startswith("refused UNAVAILABLE") or "UNIMPLEMENTED" in outcome:
                    await asyncio.sleep(0.1)
            elapsed = time.perf_counter() - started
            if started_wall >= start_at and started_wall + elapsed <= end_at:
                key = f"{name}|{outcome}"
                window.extra[key] = window.extra.get(key, 0.0) + 1
                latencies[name].append(elapsed)
                window.latencies.append(elapsed)
                window.operations += outcome == "ok"

    async def cpu_marks() -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        marks["start"] = process_cpu()
        await asyncio.sleep(max(0.0, end_at - time.time()))
        marks["end"] = process_cpu()

    try:
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), 30) for c in channels))
        await asyncio.gather(
            cpu_marks(), *(loop(i, name, send) for i, (name, _, send) in enumerate(senders))
        )
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    for name in kinds:
        window.extra[f"{name}|p50"] = percentile(latencies[name], 0.5)
    window.cpu_seconds = marks.get("end", 0.0) - marks.get("start", 0.0)
    return window


async def step_window(pid: int, start_at: float, duration: float) -> Window:
    """Have the timed server (`bench/timed_server.py`, process `pid`) record its event
    loop's steps inside the window."""
    await asyncio.sleep(max(0.0, start_at - time.time()))
    os.kill(pid, signal.SIGUSR1)
    await asyncio.sleep(max(0.0, start_at + duration - time.time()))
    os.kill(pid, signal.SIGUSR2)
    return Window(seconds=duration)


LAG_METRIC = "statekeeper_event_loop_lag_seconds"


def _lag_buckets(http_port: int) -> dict[float, float]:
    """The server's cumulative loop lag histogram: samples at or under each bound."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != LAG_METRIC:
            continue
        for sample in family.samples:
            if sample.name == f"{LAG_METRIC}_bucket":
                buckets[float(sample.labels["le"])] = sample.value
    return buckets


async def loop_lag_window(http_port: int, start_at: float, duration: float) -> Window:
    """The server's event loop lag samples taken inside the window: `extra` holds, per
    bucket bound `le:<seconds>`, how many samples were at or under it."""
    await asyncio.sleep(max(0.0, start_at - time.time()))
    before = await asyncio.to_thread(_lag_buckets, http_port)
    await asyncio.sleep(max(0.0, start_at + duration - time.time()))
    after = await asyncio.to_thread(_lag_buckets, http_port)
    window = Window(seconds=duration)
    window.extra = {f"le:{bound}": after[bound] - before.get(bound, 0.0) for bound in after}
    return window


def lag_summary(lag: Window) -> str:
    """`loop lag p99 <= X ms, max <= Y ms (N samples)` from a `loop_lag_window`."""
    bounds = sorted((float(key[3:]), count) for key, count in lag.extra.items())
    total = bounds[-1][1] if bounds else 0.0
    if not total:
        return "no loop lag samples"

    def bound_of(share: float) -> str:
        bound = next(le for le, count in bounds if count >= share * total)
        return "over 2500" if math.isinf(bound) else f"<= {bound * 1000:g}"

    return (
        f"event loop lag p99 {bound_of(0.99)} ms, max {bound_of(1.0)} ms"
        f" ({total:.0f} samples every 20 ms)"
    )


async def request_sizes() -> dict[str, int]:
    """The size of each kind's max-size request, in bytes."""
    return {
        "SaveSnapshot": len(snapshot_request(0)),
        "AppendEvents": len(batch_request(0)),
        "AppendEvent": len(deep_event_request(0)),
        "EnqueueJobs": len(enqueue_request(0)),
        "CompleteJob": result_struct().ByteSize(),
        "SaveWorkflowCheckpoint": len(checkpoint_request(0)),
        "ListWorkflowCheckpoints": len(filter_request(0)),
        "append_event job": len(append_job_request(0)),
    }


async def prepare(target: str, checkpoints: int) -> str:
    """The probe's snapshot and job, and the checkpoints the filter runs over; the job's id."""
    save = snapshots_pb2.SaveSnapshotRequest(snapshot=payloads.snapshot(PROBE_SNAPSHOT))
    await unary_many(target, SAVE_SNAPSHOT, [save.SerializeToString()], concurrency=1)
    await unary_many(
        target,
        SAVE_WORKFLOW_CHECKPOINT,
        [stored_checkpoint_request(i) for i in range(checkpoints)],
        concurrency=4,
    )
    spec = payloads.job_spec(0)
    spec.queue = PROBE_QUEUE
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        reply = await raw_unary(channel, ENQUEUE_JOBS)(
            jobs_pb2.EnqueueJobsRequest(jobs=[spec]).SerializeToString(), timeout=30
        )
    return str(jobs_pb2.EnqueueJobsResponse.FromString(reply).jobs[0].job_id)


def probe_calls(job_id: str) -> list[tuple[str, str, bytes]]:
    """The other caller's calls: LoadSnapshot of a small snapshot, GetJob of a small job."""
    return [
        (
            "LoadSnapshot",
            LOAD_SNAPSHOT,
            snapshots_pb2.LoadSnapshotRequest(run_id=PROBE_SNAPSHOT).SerializeToString(),
        ),
        ("GetJob", GET_JOB, jobs_pb2.GetJobRequest(job_id=job_id).SerializeToString()),
    ]


# -- what decoding and checking each request costs the server -------------------------

DECODE_REPEATS = {"full": 5, "quick": 5, "smoke": 1}
"""Timings of each step, the best kept."""


def _best_ms(action: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def _decoded_requests() -> dict[str, tuple[type[Message], bytes]]:
    complete = jobs_pb2.CompleteJobRequest(
        job_id="j" * 36, lease_id="l" * 36, result=result_struct()
    )
    return {
        "SaveSnapshot": (snapshots_pb2.SaveSnapshotRequest, snapshot_request(0)),
        "AppendEvents": (events_pb2.AppendEventsRequest, batch_request(0)),
        "AppendEvent": (events_pb2.AppendEventRequest, deep_event_request(0)),
        "EnqueueJobs": (jobs_pb2.EnqueueJobsRequest, enqueue_request(0)),
        "CompleteJob": (jobs_pb2.CompleteJobRequest, complete.SerializeToString()),
        "SaveWorkflowCheckpoint": (
            checkpoints_pb2.SaveWorkflowCheckpointRequest,
            checkpoint_request(0),
        ),
        "append_event job": (jobs_pb2.EnqueueJobRequest, append_job_request(0)),
    }


async def decode_costs(repeats: int) -> dict[str, dict[str, float]]:
    """Per kind, in ms (best of `repeats`, in one process): the server's screen of
    the body on its wire twins, the real decode and the checks beside JSON values; and
    the real decode with the Python checks of every value, as without the screen. Under
    "one wide object", a 2 MB Struct of 95,000 keys (over the key limit) decoded as its
    wire twin and as a Struct."""
    costs: dict[str, dict[str, float]] = {}
    for name, (message_class, data) in _decoded_requests().items():
        screen = screen_for(message_class.DESCRIPTOR)
        assert screen is not None
        twin = screen.screen(data)
        assert twin is not None
        request = message_class.FromString(data)
        costs[name] = {
            "bytes": float(len(data)),
            "screen": _best_ms(lambda: screen.passes(data), repeats),  # noqa: B023 - run at once
            "decode": _best_ms(lambda: message_class.FromString(data), repeats),  # noqa: B023
            "checks beside JSON": _best_ms(
                lambda: check_request(request, screened_twin=twin),  # noqa: B023
                repeats,
            ),
            "checks of every value": _best_ms(
                lambda: check_request(request),  # noqa: B023
                repeats,
            ),
        }
    wide = payloads.wide_struct(limits.MAX_RECORD_BYTES - MARGIN).SerializeToString()
    twin_class = depth_twin(struct_pb2.Struct.DESCRIPTOR)
    costs["one wide object"] = {
        "bytes": float(len(wide)),
        "twin": _best_ms(lambda: twin_class.FromString(wide), repeats),
        "real": _best_ms(lambda: struct_pb2.Struct.FromString(wide), repeats),
    }
    return costs


def decode_rows(costs: dict[str, dict[str, float]]) -> list[Row]:
    """One row per kind: screen + decode + checks beside the decode and checks of before."""
    rows = []
    for name, cost in costs.items():
        size = f"{cost['bytes'] / MB:.2f} MB"
        if name == "one wide object":
            rows.append(
                Row(
                    f"maxsize decode: one object of 95,000 keys ({size}), as its wire twin",
                    figure=cost["twin"],
                    unit="ms",
                    reference="decoded as a google.protobuf.Struct",
                    reference_figure=cost["real"],
                    lower_is_better=True,
                    note="over the key limit: refused before the real decode",
                )
            )
            continue
        total = cost["screen"] + cost["decode"] + cost["checks beside JSON"]
        before = cost["decode"] + cost["checks of every value"]
        rows.append(
            Row(
                f"maxsize decode: {name} ({size}): screen, decode and check",
                figure=total,
                unit="ms",
                reference="decode, then check every JSON value in Python",
                reference_figure=before,
                lower_is_better=True,
                note=(
                    f"screen {cost['screen']:.1f} ms, decode {cost['decode']:.1f} ms, checks"
                    f" beside JSON {cost['checks beside JSON']:.1f} ms; Python checks of every"
                    f" value {cost['checks of every value']:.1f} ms"
                ),
            )
        )
    return rows


# -- scenario ------------------------------------------------------------------------

ALL_AT_ONCE = [
    ["SaveSnapshot", "AppendEvents", "AppendEvent"],
    ["EnqueueJobs", "CompleteJob", "SaveWorkflowCheckpoint"],
    ["ListWorkflowCheckpoints", "append_event job"],
]
"""The kinds of each generator process when every kind runs at once (the fourth probes)."""


def _kind_note(name: str, load: Window, sizes: dict[str, int]) -> str:
    counts = {
        key.split("|", 1)[1]: value
        for key, value in load.extra.items()
        if key.startswith(f"{name}|") and key.split("|", 1)[1] not in ("p50",)
    }
    ok = counts.pop("ok", 0.0)
    others = ", ".join(f"{value:.0f} {outcome}" for outcome, value in sorted(counts.items()))
    return (
        f"{name} ({sizes[name] / MB:.2f} MB): {ok:.0f} ok"
        + (f", {others}" if others else "")
        + f", call p50 {load.extra.get(f'{name}|p50', 0.0) * 1000:.0f} ms"
    )


def _row(
    label: str,
    probe: Window,
    idle: Window,
    loads: Sequence[Window],
    kinds: Sequence[str],
    sizes: dict[str, int],
    server_cpu: float | None,
    lag: Window,
) -> Row:
    merged = Window.merge(list(loads))
    merged.extra = {k: v for load in loads for k, v in load.extra.items()}
    parts = [_kind_note(name, merged, sizes) for name in kinds]
    parts.append(
        "probe p50 "
        + ", ".join(
            f"{call} {probe.extra[f'{call} p50'] * 1000:.2f} ms"
            f" (idle {idle.extra[f'{call} p50'] * 1000:.2f})"
            for call in ("LoadSnapshot", "GetJob")
        )
        + f", {probe.operations} calls"
        + "".join(
            f", {value:.0f} probe calls {key}"
            for key, value in probe.extra.items()
            if key.startswith("failed ")
        )
    )
    if server_cpu is not None:
        parts.append(f"server CPU {100 * server_cpu:.0f}%")
    parts.append(lag_summary(lag))
    if not probe.latencies:
        parts.insert(0, "the probe finished no call inside the window")
        return Row(label, status=ERROR, note="; ".join(parts))
    return Row(
        label,
        figure=probe.p99 * 1000,
        unit="ms",
        reference="same probe, idle server",
        reference_figure=idle.p99 * 1000,
        targets=[Target(P99_TARGET_MS, at_least=False)],
        lower_is_better=True,
        note="; ".join(parts),
    )


Task = tuple[Callable[..., Awaitable[Window]], dict[str, Any]]


def _prepared_probe(bench: Bench, server: servers.ServerProcess) -> Task:
    """The probe's task, once its snapshot and job (and the filter's checkpoints) exist."""
    job_id = bench.generators.run(prepare, target=server.target, checkpoints=STORED_CHECKPOINTS)
    return (latency_probe, {"target": server.target, "calls": probe_calls(job_id)})


def _every_kind_loads(
    target: str, load: Callable[..., Awaitable[Window]] = maxsize_load
) -> list[Task]:
    """The loads of every kind at once, one generator process per group of ALL_AT_ONCE."""
    return [
        (load, {"target": target, "kinds": kinds, "callers": CALLERS_PER_KIND})
        for kinds in ALL_AT_ONCE
    ]


STEP_RATIO_TARGET = 2.0
"""Most own CPU time of any one step of the event loop while every kind runs at once, as a
multiple of the longest step of a bare grpc.aio server moving the same messages."""
TIMED_SERVER = [str(servers.ROOT / "bench" / "timed_server.py")]
ECHO = "/bench.Echo/Echo"


def echo_body(kind: str) -> bytes:
    """The body of a kind's max-size request (CompleteJob's with its result only)."""
    if kind == "CompleteJob":
        return jobs_pb2.CompleteJobRequest(result=result_struct()).SerializeToString()
    builders: dict[str, Callable[[int], bytes]] = {
        "SaveSnapshot": snapshot_request,
        "AppendEvents": batch_request,
        "AppendEvent": deep_event_request,
        "EnqueueJobs": enqueue_request,
        "SaveWorkflowCheckpoint": checkpoint_request,
        "ListWorkflowCheckpoints": filter_request,
        "append_event job": append_job_request,
    }
    return builders[kind](0)


async def echo_load(
    target: str, kinds: Sequence[str], callers: int, start_at: float, duration: float
) -> Window:
    """`callers` callers per kind send its max-size body to the bare echo server, which
    sends it back, in a loop until the window ends."""
    bodies = [echo_body(kind) for kind in kinds for _ in range(callers)]
    channels = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in bodies]
    window = Window(seconds=duration)

    async def loop(channel: grpc.aio.Channel, body: bytes) -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        while time.time() < start_at + duration:
            await raw_unary(channel, ECHO)(body, timeout=CALL_TIMEOUT)
            window.operations += 1

    try:
        await asyncio.gather(*(loop(c, b) for c, b in zip(channels, bodies, strict=True)))
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    return window


def _echo_steps(bench: Bench, report: Path) -> dict[str, Any]:
    """The longest steps of a bare grpc.aio server echoing every kind's body at once."""
    duration = DURATIONS[bench.mode.name]
    echo = servers.ServerProcess("echo", [sys.executable, *TIMED_SERVER, "echo"])
    echo.env[REPORT_ENV] = str(report)
    with echo:
        loads = _every_kind_loads(echo.target, echo_load)
        started = time.time()
        bench.measure_each(
            [(step_window, {"pid": echo.pid}), *loads], None, "maxsize echo steps", duration
        )
        return _read_steps(report, started)


def _read_steps(report: Path, written_after: float) -> dict[str, Any]:
    """The timed server's report of its last window (it writes it on SIGUSR2)."""
    deadline = time.monotonic() + 10
    while not report.exists() or report.stat().st_mtime < written_after:
        if time.monotonic() > deadline:
            raise RuntimeError("the timed server wrote no step report")
        time.sleep(0.05)
    figures: dict[str, Any] = json.loads(report.read_text())
    return figures


def step_row(bench: Bench, store: str) -> Row:
    """How long the event loop's steps take while every kind runs at once, on a server
    timing each step, beside the same server serving the probe alone."""
    duration = DURATIONS[bench.mode.name]
    with tempfile.TemporaryDirectory() as directory:
        report = Path(directory) / "steps.json"
        with bench.statekeeper(
            store, env={REPORT_ENV: str(report)}, launcher=TIMED_SERVER
        ) as server:
            probe = _prepared_probe(bench, server)
            steps = (step_window, {"pid": server.pid})
            started = time.time()
            bench.measure_each([probe, steps], server, "maxsize steps idle", duration)
            idle = _read_steps(report, started)
            loads = _every_kind_loads(server.target)
            started = time.time()
            bench.measure_each(
                [probe, steps, *loads], server, "maxsize steps", 2 * duration, BUILD_LEAD
            )
            loaded = _read_steps(report, started)
        echo = _echo_steps(bench, Path(directory) / "echo.json")
    label = f"maxsize: every kind at once {store_label(store)}: longest event loop step's own CPU"
    if not loaded.get("steps") or not echo.get("steps"):
        return Row(label, status=ERROR, note="a timed server recorded no step")
    return Row(
        label,
        figure=loaded["cpu_max"] * 1000,
        unit="ms",
        reference="bare grpc.aio echoing the same bodies",
        reference_figure=echo["cpu_max"] * 1000,
        targets=[Target(STEP_RATIO_TARGET, at_least=False, on_ratio=True)],
        lower_is_better=True,
        note=(
            f"{loaded['steps']:.0f} steps; own CPU p99.9 {loaded['cpu_p999'] * 1000:.2f} ms,"
            f" {loaded['cpu_over_5ms']:.0f} over 5 ms; wall time (what others waited behind"
            f" a step, GIL waits included) p99 {loaded['wall_p99'] * 1000:.2f} ms, p99.9"
            f" {loaded['wall_p999'] * 1000:.2f} ms, max {loaded['wall_max'] * 1000:.1f} ms,"
            f" {loaded['wall_over_10ms']:.0f} over 10 ms; the echo's own CPU p99.9"
            f" {echo['cpu_p999'] * 1000:.2f} ms over {echo['steps']:.0f} steps; the probe"
            f" alone: longest step {idle['cpu_max'] * 1000:.2f} ms; longest: "
            + ", ".join(f"{cpu * 1000:.1f} ms {what}" for cpu, _, what in loaded["longest"][:3])
        ),
    )


def maxsize(bench: Bench, store: str, with_peers: bool) -> list[Row]:
    """Another caller's p99 beside each kind of max-size request, then beside all of them."""
    rows = decode_rows(bench.generators.run(decode_costs, repeats=DECODE_REPEATS[bench.mode.name]))
    sizes = bench.generators.run(request_sizes)
    http_port = servers.free_port()
    with bench.statekeeper(store, "--http-listen", f"127.0.0.1:{http_port}") as server:
        probe = _prepared_probe(bench, server)
        lag = (loop_lag_window, {"http_port": http_port})
        duration = DURATIONS[bench.mode.name]
        (idle,), _ = bench.measure_each([probe], server, "maxsize idle", duration)
        rss_before = server.rss()
        for kind in KINDS:
            load = (
                maxsize_load,
                {"target": server.target, "kinds": [kind.name], "callers": CALLERS_PER_KIND},
            )
            (measured, loaded, lagged), cpu = bench.measure_each(
                [probe, load, lag], server, f"maxsize {kind.name}", duration, BUILD_LEAD
            )
            rows.append(
                _row(
                    f"maxsize: {kind.name}, {kind.what} {store_label(store)}: other caller's p99",
                    measured,
                    idle,
                    [loaded],
                    [kind.name],
                    sizes,
                    cpu,
                    lagged,
                )
            )
        with_turns, served_with = every_kind_row(
            bench, server, probe, lag, f"every kind at once {store_label(store)}", idle, sizes
        )
        rss_after = server.rss()
        with_turns.note += (
            f"; server RSS {rss_before / MB:.0f} MB before the load, {rss_after / MB:.0f} MB"
            " at the end"
        )
    without_turns, served_without = every_kind_without_turns(bench, store, sizes, idle)
    with_turns.note += f"; large calls served: {served_with} (without turns: {served_without})"
    rows += [with_turns, without_turns, step_row(bench, store)]
    return rows


def every_kind_row(
    bench: Bench,
    server: servers.ServerProcess,
    probe: Task,
    lag: Task,
    what: str,
    idle: Window,
    sizes: dict[str, int],
) -> tuple[Row, int]:
    """Every kind at once against `server` for two windows' time: the probe's row
    (`what` names it) and how many large calls the server answered."""
    (measured, lagged, *loaded), cpu = bench.measure_each(
        [probe, lag, *_every_kind_loads(server.target)],
        server,
        f"maxsize {what}",
        2 * DURATIONS[bench.mode.name],
        BUILD_LEAD,
    )
    row = _row(
        f"maxsize: {what}: other caller's p99",
        measured,
        idle,
        loaded,
        [k.name for k in KINDS],
        sizes,
        cpu,
        lagged,
    )
    return row, served(loaded)


def served(loads: Sequence[Window]) -> int:
    """Max-size calls the loads got answered (refusals aside)."""
    return round(
        sum(value for load in loads for key, value in load.extra.items() if key.endswith("|ok"))
    )


def every_kind_without_turns(
    bench: Bench, store: str, sizes: dict[str, int], idle: Window
) -> tuple[Row, int]:
    """Every kind at once on a server serving every large request at once
    (`--large-request-bytes 0`): what taking turns saves other callers (this row's p99
    beside the row with turns) and what it costs the large requests (calls served).

    Returns the row (information, no target) and the calls it served."""
    http_port = servers.free_port()
    with bench.statekeeper(
        store, "--http-listen", f"127.0.0.1:{http_port}", "--large-request-bytes", "0"
    ) as server:
        row, answered = every_kind_row(
            bench,
            server,
            _prepared_probe(bench, server),
            (loop_lag_window, {"http_port": http_port}),
            f"every kind at once, without turns (--large-request-bytes 0) {store_label(store)}",
            idle,
            sizes,
        )
    row.targets = ()
    return row, answered
