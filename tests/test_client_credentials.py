"""What the client sends to prove who it is: the bearer token, from arguments or the
environment, fresh for every call and for every resumption.

A small server records the `authorization` metadata of each call it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

import statekeeper
from statekeeper.v1 import (
    events_pb2,
    events_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    snapshots_pb2,
    snapshots_pb2_grpc,
)
from tests.certificates import CertificateAuthority


class Recorder:
    """The `authorization` value of every call, in order (None when absent)."""

    def __init__(self) -> None:
        self.authorizations: list[str | None] = []

    def record(self, context: grpc.aio.ServicerContext) -> None:
        values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        assert len(values) <= 1
        self.authorizations.append(str(values[0]) if values else None)


class Snapshots(snapshots_pb2_grpc.SnapshotServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def LoadSnapshot(  # noqa: N802
        self, request: snapshots_pb2.LoadSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> snapshots_pb2.LoadSnapshotResponse:
        self.recorder.record(context)
        return snapshots_pb2.LoadSnapshotResponse(
            snapshot=snapshots_pb2.Snapshot(run_id=request.run_id)
        )


class Events(events_pb2_grpc.EventLogServiceServicer):
    """A replay of two events that breaks with `break_with` after the first one
    (or, with `refuse`, refuses every call at once)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.break_with = grpc.StatusCode.UNAVAILABLE
        self.refuse: grpc.StatusCode | None = None

    async def ReplayEvents(  # noqa: N802
        self, request: events_pb2.ReplayEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[events_pb2.ReplayEventsResponse]:
        self.recorder.record(context)
        if self.refuse is not None:
            await context.abort(self.refuse, "refused")
        if request.after_seq == 0:
            yield batch(events_pb2.EventEnvelope(run_id=request.run_id, seq=1))
            await context.abort(self.break_with, "the stream breaks")
        completed = events_pb2.AgentEvent(run_completed=events_pb2.RunCompleted())
        yield batch(events_pb2.EventEnvelope(run_id=request.run_id, seq=2, event=completed))


class Jobs(jobs_pb2_grpc.JobServiceServicer):
    """Leasing fails with UNAVAILABLE once, then hands out a job."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def LeaseJobs(  # noqa: N802
        self, request: jobs_pb2.LeaseJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.LeaseJobsResponse:
        self.recorder.record(context)
        if len(self.recorder.authorizations) == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the store is down")
        return jobs_pb2.LeaseJobsResponse(jobs=[jobs_pb2.Job(job_id="job-1", kind="email")])


def batch(envelope: events_pb2.EventEnvelope) -> events_pb2.ReplayEventsResponse:
    return events_pb2.ReplayEventsResponse(batch=events_pb2.EventBatch(envelopes=[envelope]))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def events(recorder: Recorder) -> Events:
    return Events(recorder)


@pytest.fixture
async def target(recorder: Recorder, events: Events) -> AsyncIterator[str]:
    """host:port of a recording server."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    snapshots_pb2_grpc.add_SnapshotServiceServicer_to_server(Snapshots(recorder), server)
    events_pb2_grpc.add_EventLogServiceServicer_to_server(events, server)
    jobs_pb2_grpc.add_JobServiceServicer_to_server(Jobs(recorder), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def numbered_tokens() -> Callable[[], str]:
    """A token source returning token-1, token-2, ... one per call."""
    counter = itertools.count(1)
    return lambda: f"token-{next(counter)}"


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATEKEEPER_TOKEN", raising=False)
    monkeypatch.delenv("STATEKEEPER_TARGET", raising=False)


async def test_a_static_token_is_sent_as_a_bearer_token_on_every_call(
    target: str, recorder: Recorder
) -> None:
    async with statekeeper.AsyncClient(target, token="s3cret") as client:
        await client.snapshots.load("run-1")
        await client.snapshots.load("run-2")
    assert recorder.authorizations == ["Bearer s3cret", "Bearer s3cret"]


async def test_a_client_without_a_token_sends_no_authorization(
    target: str, recorder: Recorder
) -> None:
    async with statekeeper.AsyncClient(target) as client:
        await client.snapshots.load("run-1")
    assert recorder.authorizations == [None]


async def test_a_callable_token_is_called_for_every_call(target: str, recorder: Recorder) -> None:
    async with statekeeper.AsyncClient(target, token=numbered_tokens()) as client:
        await client.snapshots.load("run-1")
        await client.snapshots.load("run-2")
    assert recorder.authorizations == ["Bearer token-1", "Bearer token-2"]


@pytest.mark.parametrize(
    "break_with",
    [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED],
    ids=["server-gone", "credential-expired"],
)
async def test_a_replay_resumes_a_broken_stream_with_a_fresh_token(
    target: str, recorder: Recorder, events: Events, break_with: grpc.StatusCode
) -> None:
    events.break_with = break_with
    async with statekeeper.AsyncClient(target, token=numbered_tokens()) as client:
        seqs = [envelope.seq async for envelope in client.events.replay("run-1")]
    assert seqs == [1, 2]
    assert recorder.authorizations == ["Bearer token-1", "Bearer token-2"]


async def test_a_replay_refused_as_unauthenticated_when_opened_is_not_retried(
    target: str, recorder: Recorder, events: Events
) -> None:
    events.refuse = grpc.StatusCode.UNAUTHENTICATED
    async with statekeeper.AsyncClient(target, token=numbered_tokens()) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [envelope async for envelope in client.events.replay("run-1")]
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert recorder.authorizations == ["Bearer token-1"]


async def test_a_worker_leasing_again_after_unavailable_sends_a_fresh_token(
    target: str, recorder: Recorder
) -> None:
    async with statekeeper.AsyncClient(target, token=numbered_tokens()) as client:
        work = client.jobs.work("emails", wait=0)
        async with contextlib.aclosing(work):
            job = await anext(work)
    assert job.id == "job-1"
    assert recorder.authorizations == ["Bearer token-1", "Bearer token-2"]


async def test_the_token_comes_from_the_environment_when_not_given(
    target: str, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATEKEEPER_TOKEN", "from-env")
    async with statekeeper.AsyncClient(target) as client:
        await client.snapshots.load("run-1")
    assert recorder.authorizations == ["Bearer from-env"]


async def test_a_given_token_wins_over_the_environment(
    target: str, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATEKEEPER_TOKEN", "from-env")
    async with statekeeper.AsyncClient(target, token="given") as client:
        await client.snapshots.load("run-1")
    assert recorder.authorizations == ["Bearer given"]


async def test_an_empty_token_sends_none_even_with_one_in_the_environment(
    target: str, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATEKEEPER_TOKEN", "from-env")
    async with statekeeper.AsyncClient(target, token="") as client:
        await client.snapshots.load("run-1")
    assert recorder.authorizations == [None]


async def test_the_target_comes_from_the_environment_when_not_given(
    target: str, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATEKEEPER_TARGET", target)
    async with statekeeper.AsyncClient() as client:
        loaded = await client.snapshots.load("run-1")
    assert loaded.run_id == "run-1"
    assert recorder.authorizations == [None]


async def test_the_blocking_client_sends_a_callable_token_too(
    target: str, recorder: Recorder
) -> None:
    def load_twice() -> None:
        with statekeeper.Client(target, token=numbered_tokens()) as client:
            client.snapshots.load("run-1")
            client.snapshots.load("run-2")

    # The recording server runs on this loop: the blocking client gets a thread.
    await asyncio.to_thread(load_twice)
    assert recorder.authorizations == ["Bearer token-1", "Bearer token-2"]


@pytest.mark.parametrize("token", ["two\nlines", " padded", "naïve"])
async def test_a_token_metadata_cannot_carry_is_refused_at_once(token: str) -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        statekeeper.AsyncClient("127.0.0.1:1", token=token)


async def test_a_callable_token_returning_nothing_fails_the_call_before_it_is_sent(
    target: str, recorder: Recorder
) -> None:
    async with statekeeper.AsyncClient(target, token=lambda: "") as client:
        with pytest.raises(ValueError, match="non-empty"):
            await client.snapshots.load("run-1")
    assert recorder.authorizations == []


async def test_a_client_certificate_needs_its_key(tmp_path: Path) -> None:
    cert, _ = CertificateAuthority().issue_client("alice").write(tmp_path, "alice")
    with pytest.raises(ValueError, match="client_cert and client_key go together"):
        statekeeper.AsyncClient("127.0.0.1:1", client_cert=cert)


async def test_ready_credentials_and_tls_arguments_are_not_mixed() -> None:
    with pytest.raises(ValueError, match="not both"):
        statekeeper.AsyncClient(
            "127.0.0.1:1", credentials=grpc.ssl_channel_credentials(), root_certificates=b""
        )
