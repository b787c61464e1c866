"""A clean stop under load leaves no call in doubt: every call the server received
finishes, every later one is refused as UNAVAILABLE and stores nothing."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import pytest

from statekeeper.v1 import events_pb2, events_pb2_grpc
from statekeeper_server.admission import Admission
from statekeeper_server.errors import Unavailable
from tests.harness import ServerProcess, data_file, running_app
from tests.rpc_errors import error_info

APPENDERS = 8


def custom_event(event_id: str) -> events_pb2.EventInput:
    return events_pb2.EventInput(
        event_id=event_id,
        event=events_pb2.AgentEvent(custom=events_pb2.CustomEvent(type="tick")),
    )


async def append_until_refused(
    target: str, run_id: str, outcomes: dict[str, grpc.StatusCode], busy: asyncio.Event
) -> None:
    """Append events with ids to `run_id` until a call fails; record each outcome.

    Sets `busy` once the appenders together have 200 outcomes.
    """
    async with grpc.aio.insecure_channel(target) as channel:
        stub = events_pb2_grpc.EventLogServiceStub(channel)
        for index in range(100_000):
            event_id = f"{run_id}-{index}"
            try:
                await stub.AppendEvent(
                    events_pb2.AppendEventRequest(run_id=run_id, input=custom_event(event_id)),
                    timeout=10,
                )
            except grpc.aio.AioRpcError as error:
                outcomes[event_id] = error.code()
                return
            outcomes[event_id] = grpc.StatusCode.OK
            if len(outcomes) >= 200:
                busy.set()


async def stored_event_ids(target: str, run_id: str) -> set[str]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = events_pb2_grpc.EventLogServiceStub(channel)
        ids: set[str] = set()
        after = 0
        while True:
            page = await stub.ListEvents(
                events_pb2.ListEventsRequest(run_id=run_id, after_seq=after, limit=1000)
            )
            if not page.envelopes:
                return ids
            ids.update(envelope.event_id for envelope in page.envelopes)
            after = page.envelopes[-1].seq


async def test_sigterm_under_load_answers_every_call_ok_or_unavailable(tmp_path: Path) -> None:
    server = ServerProcess(data_file(tmp_path)).start()
    outcomes: dict[str, grpc.StatusCode] = {}
    busy = asyncio.Event()
    runs = [f"run-{n}" for n in range(APPENDERS)]
    try:
        appenders = [
            asyncio.create_task(append_until_refused(server.target, run_id, outcomes, busy))
            for run_id in runs
        ]
        await busy.wait()
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        await asyncio.gather(*appenders)
        assert await asyncio.to_thread(server.process.wait, 30) == 0
    finally:
        server.stop()
    codes = set(outcomes.values())
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    server.start()
    try:
        stored = set()
        for run_id in runs:
            stored |= await stored_event_ids(server.target, run_id)
    finally:
        server.stop()
    acknowledged = {event_id for event_id, code in outcomes.items() if code == grpc.StatusCode.OK}
    refused = set(outcomes) - acknowledged
    assert acknowledged <= stored
    assert not refused & stored


async def test_a_call_arriving_while_draining_is_unavailable_server_stopping(
    store_url: str,
) -> None:
    async with running_app(store_url) as app:
        app.admission.start_draining()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = events_pb2_grpc.EventLogServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListRuns(events_pb2.ListRunsRequest())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "SERVER_STOPPING"


async def test_draining_waits_for_calls_in_flight() -> None:
    admission = Admission(max_streams=10, max_streams_per_connection=10)
    finished = asyncio.Event()

    async def call_in_flight() -> None:
        with admission.call():
            await finished.wait()

    task = asyncio.create_task(call_in_flight())
    await asyncio.sleep(0)
    admission.start_draining()
    drained = asyncio.create_task(admission.drained(0.01))
    await asyncio.sleep(0.05)
    assert not drained.done()
    finished.set()
    await drained
    await task
    with pytest.raises(Unavailable):
        admission.call().__enter__()
