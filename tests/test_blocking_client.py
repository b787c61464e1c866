"""The blocking client against scripted grpcio-testing channels: no server.

Each test makes its calls on a worker thread while the test plays the server
through `grpc_testing`: it takes each call the client makes, looks at its
request and metadata, and answers it, fails it or drops it. A recording
channel between the client and the scripted one sees the deadline of every
call, which the testing channel itself keeps no record of. Retries are the
client's own (statekeeper._calls.Attempts), so a scripted channel sees them
as a real one does.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc_testing
import pytest
from google.protobuf import descriptor, json_format

import statekeeper
import statekeeper.jobs
from statekeeper.errors import StatekeeperError
from statekeeper.events import custom_event
from statekeeper.v1 import events_pb2, jobs_pb2, snapshots_pb2
from statekeeper_server.errors import InvalidArgument, NotFound, Unavailable

T = TypeVar("T")
SERVICES = [
    snapshots_pb2.DESCRIPTOR.services_by_name["SnapshotService"],
    events_pb2.DESCRIPTOR.services_by_name["EventLogService"],
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"],
]
LOAD = SERVICES[0].methods_by_name["LoadSnapshot"]
APPEND = SERVICES[1].methods_by_name["AppendEvent"]
REPLAY = SERVICES[1].methods_by_name["ReplayEvents"]
LEASE = SERVICES[2].methods_by_name["LeaseJobs"]
HEARTBEAT = SERVICES[2].methods_by_name["HeartbeatJob"]
COMPLETE = SERVICES[2].methods_by_name["CompleteJob"]
FAIL = SERVICES[2].methods_by_name["FailJob"]
NO_METADATA: tuple[tuple[str, str], ...] = ()
OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class Recorder(grpc.Channel):
    """A channel passing every call on to a scripted one, recording its method and
    deadline (the scripted channel takes the deadline but keeps no record of it)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self.calls: list[tuple[str, float | None]] = []

    def _recording(self, method: str, multicallable: Any) -> Any:
        def call(request: Any, timeout: float | None = None, **options: Any) -> Any:
            self.calls.append((method, timeout))
            return multicallable(request, timeout=timeout, metadata=options.get("metadata"))

        return call

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._recording(method, self._channel.unary_unary(method))

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._recording(method, self._channel.unary_stream(method))

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel.stream_unary(method)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel.stream_stream(method)

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def timeouts(self, method: descriptor.MethodDescriptor) -> list[float | None]:
        """The deadlines (seconds left) of the calls of `method`, in order."""
        path = f"/{method.containing_service.full_name}/{method.name}"
        return [timeout for name, timeout in self.calls if name == path]


@dataclass
class Scripted:
    """A blocking client over a scripted channel, and a thread to make its calls on."""

    channel: Any
    client: statekeeper.Client
    recorder: Recorder
    pool: ThreadPoolExecutor

    def call(self, function: Callable[[], T]) -> Future[T]:
        """Start `function` (which makes calls) on the client's thread."""
        return self.pool.submit(function)


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    channel = grpc_testing.channel(SERVICES, grpc_testing.strict_real_time())
    recorder = Recorder(channel)
    client = statekeeper.Client.from_channel(
        recorder, namespace="acme", timeout=7.0, token="secret"
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield Scripted(channel, client, recorder, pool)


def snapshot(run_id: str = "run-1") -> snapshots_pb2.Snapshot:
    return snapshots_pb2.Snapshot(run_id=run_id, session_id="session-1", version=3)


def answer_load(
    scripted: Scripted, code: grpc.StatusCode = OK
) -> snapshots_pb2.LoadSnapshotRequest:
    """Take the next LoadSnapshot call; answer it with a snapshot, or fail it with `code`."""
    _, request, rpc = scripted.channel.take_unary_unary(LOAD)
    response = snapshots_pb2.LoadSnapshotResponse(snapshot=snapshot(request.run_id))
    rpc.terminate(response, NO_METADATA, code, "" if code == OK else code.name)
    return request  # type: ignore[no-any-return]


def envelope(seq: int, *, terminal: bool = False) -> events_pb2.EventEnvelope:
    event = (
        events_pb2.AgentEvent(run_completed=events_pb2.RunCompleted())
        if terminal
        else custom_event("step", {"n": seq})
    )
    return events_pb2.EventEnvelope(run_id="run-1", seq=seq, event=event)


def batch(*envelopes: events_pb2.EventEnvelope) -> events_pb2.ReplayEventsResponse:
    return events_pb2.ReplayEventsResponse(batch=events_pb2.EventBatch(envelopes=list(envelopes)))


def leased_job(job_id: str = "job-1") -> jobs_pb2.Job:
    return jobs_pb2.Job(
        job_id=job_id,
        kind="email.send",
        state=jobs_pb2.JOB_STATE_RUNNING,
        attempt=1,
        lease=jobs_pb2.JobLease(lease_id=f"lease-of-{job_id}", worker_id="w"),
    )


# -- calls, metadata and deadlines ------------------------------------------------


def test_a_call_carries_the_namespace_and_the_token(scripted: Scripted) -> None:
    loading = scripted.call(lambda: scripted.client.snapshots.load("run-1"))
    metadata, request, rpc = scripted.channel.take_unary_unary(LOAD)
    rpc.terminate(snapshots_pb2.LoadSnapshotResponse(snapshot=snapshot()), (), OK, "")
    assert loading.result(timeout=5) == snapshot()
    assert request == snapshots_pb2.LoadSnapshotRequest(run_id="run-1")
    assert ("x-statekeeper-namespace", "acme") in metadata
    assert ("authorization", "Bearer secret") in metadata


def test_a_call_carries_the_clients_deadline(scripted: Scripted) -> None:
    loading = scripted.call(lambda: scripted.client.snapshots.load("run-1"))
    answer_load(scripted)
    loading.result(timeout=5)
    [timeout] = scripted.recorder.timeouts(LOAD)
    assert timeout is not None
    assert 6.0 < timeout <= 7.0


def test_a_long_poll_adds_its_wait_to_the_deadline(scripted: Scripted) -> None:
    leasing = scripted.call(lambda: scripted.client.jobs.lease("emails", worker_id="w", wait=20))
    _, request, rpc = scripted.channel.take_unary_unary(LEASE)
    rpc.terminate(jobs_pb2.LeaseJobsResponse(), (), OK, "")
    assert leasing.result(timeout=5) == []
    assert request.wait.seconds == 20
    [timeout] = scripted.recorder.timeouts(LEASE)
    assert timeout is not None
    assert 26.0 < timeout <= 27.0


def test_a_client_without_a_timeout_sends_no_deadline() -> None:
    channel = grpc_testing.channel(SERVICES, grpc_testing.strict_real_time())
    recorder = Recorder(channel)
    client = statekeeper.Client.from_channel(recorder, timeout=None)
    with ThreadPoolExecutor(max_workers=1) as pool:
        loading = pool.submit(client.snapshots.load, "run-1")
        answer_load(Scripted(channel, client, recorder, pool))
        loading.result(timeout=5)
    assert recorder.timeouts(LOAD) == [None]


# -- retries ------------------------------------------------------------------------


def test_a_read_is_tried_again_after_unavailable_and_succeeds(scripted: Scripted) -> None:
    loading = scripted.call(lambda: scripted.client.snapshots.load("run-1"))
    first = answer_load(scripted, UNAVAILABLE)
    second = answer_load(scripted, UNAVAILABLE)
    third = answer_load(scripted)
    assert loading.result(timeout=5) == snapshot()
    assert first == second == third


def test_a_retried_call_keeps_one_deadline_across_its_attempts(scripted: Scripted) -> None:
    loading = scripted.call(lambda: scripted.client.snapshots.load("run-1"))
    time.sleep(0.3)  # the first attempt takes this long before it fails
    answer_load(scripted, UNAVAILABLE)
    answer_load(scripted)
    loading.result(timeout=5)
    first, second = scripted.recorder.timeouts(LOAD)
    assert first is not None
    assert second is not None
    assert second <= first - 0.3


def test_a_read_fails_with_unavailable_after_five_attempts(scripted: Scripted) -> None:
    loading = scripted.call(lambda: scripted.client.snapshots.load("run-1"))
    for _ in range(5):
        answer_load(scripted, UNAVAILABLE)
    with pytest.raises(StatekeeperError) as caught:
        loading.result(timeout=10)
    assert caught.value.code() == UNAVAILABLE
    assert len(scripted.recorder.timeouts(LOAD)) == 5


def test_an_append_is_not_tried_again_after_unavailable(scripted: Scripted) -> None:
    appending = scripted.call(lambda: scripted.client.events.append("run-1", custom_event("step")))
    _, _, rpc = scripted.channel.take_unary_unary(APPEND)
    rpc.terminate(events_pb2.AppendEventResponse(), (), UNAVAILABLE, "down")
    with pytest.raises(StatekeeperError) as caught:
        appending.result(timeout=5)
    assert caught.value.code() == UNAVAILABLE
    assert len(scripted.recorder.timeouts(APPEND)) == 1


def test_a_refusal_is_not_tried_again(scripted: Scripted) -> None:
    loading = scripted.call(lambda: scripted.client.snapshots.load("run-1"))
    answer_load(scripted, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(StatekeeperError) as caught:
        loading.result(timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(scripted.recorder.timeouts(LOAD)) == 1


# -- errors ------------------------------------------------------------------------


def test_the_servers_error_info_is_read_into_the_exception(scripted: Scripted) -> None:
    refusal = NotFound("SNAPSHOT_NOT_FOUND", "no snapshot for run-1", run_id="run-1").to_status()
    loading = scripted.call(lambda: scripted.client.snapshots.load("run-1"))
    _, _, rpc = scripted.channel.take_unary_unary(LOAD)
    rpc.terminate(None, refusal.trailing_metadata, refusal.code, refusal.details)
    with pytest.raises(StatekeeperError) as caught:
        loading.result(timeout=5)
    error = caught.value
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "no snapshot for run-1"
    assert error.reason == "SNAPSHOT_NOT_FOUND"
    assert error.info is not None
    assert error.info.domain == "statekeeper.dev"
    assert dict(error.info.metadata) == {"run_id": "run-1"}
    assert error.field_violations == ()


def test_a_bad_request_names_its_field_in_the_exception(scripted: Scripted) -> None:
    refusal = InvalidArgument("run_id", "must not be empty").to_status()
    loading = scripted.call(lambda: scripted.client.snapshots.load(""))
    _, _, rpc = scripted.channel.take_unary_unary(LOAD)
    rpc.terminate(None, refusal.trailing_metadata, refusal.code, refusal.details)
    with pytest.raises(StatekeeperError) as caught:
        loading.result(timeout=5)
    assert caught.value.reason == "INVALID_ARGUMENT"
    [violation] = caught.value.field_violations
    assert (violation.field, violation.description) == ("run_id", "must not be empty")


def test_an_error_without_details_has_no_reason(scripted: Scripted) -> None:
    loading = scripted.call(lambda: scripted.client.snapshots.load("run-1"))
    answer_load(scripted, grpc.StatusCode.PERMISSION_DENIED)
    with pytest.raises(StatekeeperError) as caught:
        loading.result(timeout=5)
    assert caught.value.reason == ""
    assert caught.value.info is None


# -- replay ------------------------------------------------------------------------


def test_replay_resumes_after_a_dropped_stream_from_the_last_seq(scripted: Scripted) -> None:
    delivered: queue.Queue[int] = queue.Queue()

    def consume() -> None:
        for envelope in scripted.client.events.replay("run-1"):
            delivered.put(envelope.seq)

    replaying = scripted.call(consume)
    _, first, rpc = scripted.channel.take_unary_stream(REPLAY)
    rpc.send_response(batch(envelope(1), envelope(2)))
    assert [delivered.get(timeout=5), delivered.get(timeout=5)] == [1, 2]
    dropped = Unavailable("SERVER_STOPPING", "the server is stopping").to_status()
    rpc.terminate(dropped.trailing_metadata, dropped.code, dropped.details)
    _, second, rpc = scripted.channel.take_unary_stream(REPLAY)
    # The server may send again what the client has: it is not delivered twice.
    rpc.send_response(batch(envelope(2), envelope(3, terminal=True)))
    replaying.result(timeout=5)
    assert list(delivered.queue) == [3]
    assert (first.after_seq, first.follow) == (0, True)
    assert (second.after_seq, second.follow) == (2, True)


def test_replay_goes_on_reconnecting_when_a_stopping_server_cancels_a_reopened_stream(
    scripted: Scripted,
) -> None:
    replaying = scripted.call(lambda: [e.seq for e in scripted.client.events.replay("run-1")])
    stopping = Unavailable("SERVER_STOPPING", "the server is stopping").to_status()
    _, _, rpc = scripted.channel.take_unary_stream(REPLAY)
    rpc.terminate(stopping.trailing_metadata, stopping.code, stopping.details)
    _, _, rpc = scripted.channel.take_unary_stream(REPLAY)
    rpc.terminate((), grpc.StatusCode.CANCELLED, "CANCELLED")
    _, resumed, rpc = scripted.channel.take_unary_stream(REPLAY)
    rpc.send_response(batch(envelope(1, terminal=True)))
    assert replaying.result(timeout=5) == [1]
    assert resumed.after_seq == 0


def test_replay_raises_a_cancellation_that_comes_outside_an_outage(scripted: Scripted) -> None:
    replaying = scripted.call(lambda: list(scripted.client.events.replay("run-1")))
    _, _, rpc = scripted.channel.take_unary_stream(REPLAY)
    rpc.terminate((), grpc.StatusCode.CANCELLED, "CANCELLED")
    with pytest.raises(StatekeeperError) as caught:
        replaying.result(timeout=5)
    assert caught.value.code() == grpc.StatusCode.CANCELLED


def test_replay_raises_a_refusal_at_once(scripted: Scripted) -> None:
    replaying = scripted.call(lambda: list(scripted.client.events.replay("run-1")))
    _, _, rpc = scripted.channel.take_unary_stream(REPLAY)
    refusal = NotFound("RUN_NOT_FOUND", "no run run-1").to_status()
    rpc.terminate(refusal.trailing_metadata, refusal.code, refusal.details)
    with pytest.raises(StatekeeperError) as caught:
        replaying.result(timeout=5)
    assert caught.value.reason == "RUN_NOT_FOUND"


# -- the worker loop ----------------------------------------------------------------


def test_work_heartbeats_a_held_job_until_its_body_completes_it(scripted: Scripted) -> None:
    released = threading.Event()

    def work_one() -> statekeeper.jobs.BlockingWorkItem:
        for item in scripted.client.jobs.work("emails", lease_duration=1.5, wait=1):
            with item:
                assert released.wait(5)
                item.result = {"sent": True}
            return item
        raise AssertionError("the loop ended")

    working = scripted.call(work_one)
    _, lease, rpc = scripted.channel.take_unary_unary(LEASE)
    rpc.terminate(jobs_pb2.LeaseJobsResponse(jobs=[leased_job()]), (), OK, "")
    beats = []
    for _ in range(2):
        _, beat, rpc = scripted.channel.take_unary_unary(HEARTBEAT)
        beats.append(beat)
        rpc.terminate(jobs_pb2.HeartbeatJobResponse(), (), OK, "")
    released.set()
    _, completion, rpc = scripted.channel.take_unary_unary(COMPLETE)
    rpc.terminate(jobs_pb2.CompleteJobResponse(job=leased_job()), (), OK, "")
    item = working.result(timeout=5)
    assert (lease.queue, lease.lease_duration.ToTimedelta().total_seconds()) == ("emails", 1.5)
    assert [(b.job_id, b.lease_id) for b in beats] == [("job-1", "lease-of-job-1")] * 2
    assert {b.lease_duration.ToTimedelta().total_seconds() for b in beats} == {1.5}
    assert (completion.job_id, completion.lease_id) == ("job-1", "lease-of-job-1")
    assert json_format.MessageToDict(completion.result) == {"sent": True}
    assert item.done
    assert not item.cancelled


def test_work_tells_the_body_when_a_heartbeat_learns_of_a_cancellation(
    scripted: Scripted,
) -> None:
    def work_one() -> bool:
        for item in scripted.client.jobs.work("emails", lease_duration=0.6, wait=1):
            with item:
                deadline = time.monotonic() + 5
                while not item.cancelled and time.monotonic() < deadline:
                    time.sleep(0.01)
            return item.cancelled
        raise AssertionError("the loop ended")

    working = scripted.call(work_one)
    _, _, rpc = scripted.channel.take_unary_unary(LEASE)
    rpc.terminate(jobs_pb2.LeaseJobsResponse(jobs=[leased_job()]), (), OK, "")
    _, _, rpc = scripted.channel.take_unary_unary(HEARTBEAT)
    rpc.terminate(jobs_pb2.HeartbeatJobResponse(cancelled=True), (), OK, "")
    # The body returns normally, so the loop completes the job; the server refuses.
    _, _, rpc = scripted.channel.take_unary_unary(COMPLETE)
    rpc.terminate(None, (), grpc.StatusCode.FAILED_PRECONDITION, "the job was cancelled")
    assert working.result(timeout=5) is True


def test_work_fails_the_attempt_when_the_body_raises(scripted: Scripted) -> None:
    def work_one() -> None:
        for item in scripted.client.jobs.work("emails", wait=1):
            with item:
                raise RuntimeError("smtp down")
            return

    working = scripted.call(work_one)
    _, _, rpc = scripted.channel.take_unary_unary(LEASE)
    rpc.terminate(jobs_pb2.LeaseJobsResponse(jobs=[leased_job()]), (), OK, "")
    _, failure, rpc = scripted.channel.take_unary_unary(FAIL)
    rpc.terminate(jobs_pb2.FailJobResponse(job=leased_job()), (), OK, "")
    working.result(timeout=5)
    assert (failure.job_id, failure.error, failure.retryable) == (
        "job-1",
        "RuntimeError: smtp down",
        True,
    )


def test_work_leases_again_after_unavailable(scripted: Scripted) -> None:
    def work_one() -> str:
        for item in scripted.client.jobs.work("emails", wait=1):
            item.done = True  # settled elsewhere: the loop must not complete it
            return item.id
        raise AssertionError("the loop ended")

    working = scripted.call(work_one)
    _, _, rpc = scripted.channel.take_unary_unary(LEASE)
    rpc.terminate(None, (), UNAVAILABLE, "down")
    _, _, rpc = scripted.channel.take_unary_unary(LEASE)
    rpc.terminate(jobs_pb2.LeaseJobsResponse(jobs=[leased_job("job-2")]), (), OK, "")
    assert working.result(timeout=5) == "job-2"
