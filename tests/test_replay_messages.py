"""How ReplayEvents packs envelopes into messages, end to end on every store.

A message holds envelopes up to REPLAY_MESSAGE_BYTES (each with its field
framing) and is closed before an envelope would take it past that; an
envelope larger than that goes alone in its own message. History and live
events are packed the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import struct_pb2

import statekeeper
from statekeeper.v1 import events_pb2, events_pb2_grpc
from statekeeper_server.limits import REPLAY_MESSAGE_BYTES
from tests.harness import running_app

WAIT = 10.0


@pytest.fixture
async def stub(store_url: str) -> AsyncIterator[events_pb2_grpc.EventLogServiceStub]:
    async with (
        running_app(store_url) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        yield events_pb2_grpc.EventLogServiceStub(client.channel)


def event(size: int) -> events_pb2.EventInput:
    data = struct_pb2.Struct()
    data.update({"text": "x" * size})
    return events_pb2.EventInput(
        event=events_pb2.AgentEvent(custom=events_pb2.CustomEvent(type="blob", data=data))
    )


async def append(stub: events_pb2_grpc.EventLogServiceStub, *sizes: int) -> None:
    for size in sizes:
        await stub.AppendEvent(events_pb2.AppendEventRequest(run_id="run-1", input=event(size)))


def batch_size(batch: events_pb2.EventBatch) -> int:
    """The bytes of a message's envelopes, each with its field framing."""
    return batch.ByteSize()


async def replayed_batches(
    stub: events_pb2_grpc.EventLogServiceStub, *, until_seq: int, follow: bool = False
) -> list[events_pb2.EventBatch]:
    """The batches of a replay from the start of run-1 until seq `until_seq` arrived."""
    call = stub.ReplayEvents(events_pb2.ReplayEventsRequest(run_id="run-1", follow=follow))
    batches: list[events_pb2.EventBatch] = []
    try:
        while not batches or batches[-1].envelopes[-1].seq < until_seq:
            message = await asyncio.wait_for(call.read(), WAIT)
            assert message is not grpc.aio.EOF
            if message.HasField("batch"):
                batches.append(message.batch)
    finally:
        call.cancel()
    return batches


def assert_packed_within_the_limit(batches: list[events_pb2.EventBatch]) -> None:
    for batch in batches:
        assert len(batch.envelopes) == 1 or batch_size(batch) <= REPLAY_MESSAGE_BYTES


async def test_replay_sends_a_large_envelope_after_a_small_one_in_its_own_message(
    stub: events_pb2_grpc.EventLogServiceStub,
) -> None:
    await append(stub, 100, 1_500_000)
    batches = await replayed_batches(stub, until_seq=2)
    assert [[e.seq for e in batch.envelopes] for batch in batches] == [[1], [2]]
    assert batch_size(batches[1]) > REPLAY_MESSAGE_BYTES


async def test_replay_messages_hold_at_most_replay_message_bytes_of_envelopes(
    stub: events_pb2_grpc.EventLogServiceStub,
) -> None:
    await stub.AppendEvents(
        events_pb2.AppendEventsRequest(run_id="run-1", inputs=[event(10_000) for _ in range(40)])
    )
    batches = await replayed_batches(stub, until_seq=40)
    assert_packed_within_the_limit(batches)
    assert all(len(batch.envelopes) > 1 for batch in batches)
    assert [e.seq for batch in batches for e in batch.envelopes] == list(range(1, 41))


async def test_a_message_holds_envelopes_up_to_the_limit_and_closes_before_it_would_pass_it(
    stub: events_pb2_grpc.EventLogServiceStub,
) -> None:
    await stub.AppendEvents(
        events_pb2.AppendEventsRequest(
            run_id="run-1", inputs=[event(REPLAY_MESSAGE_BYTES // 3) for _ in range(3)]
        )
    )
    batches = await replayed_batches(stub, until_seq=3)
    assert [[e.seq for e in batch.envelopes] for batch in batches] == [[1, 2], [3]]


async def test_a_follower_gets_large_live_events_alone_and_small_ones_packed(
    stub: events_pb2_grpc.EventLogServiceStub,
) -> None:
    await append(stub, 100)
    call = stub.ReplayEvents(events_pb2.ReplayEventsRequest(run_id="run-1", follow=True))
    try:
        while not (await asyncio.wait_for(call.read(), WAIT)).HasField("caught_up"):
            continue
        await append(stub, 1_500_000, 100)
        seqs: list[list[int]] = []
        while not seqs or seqs[-1][-1] < 3:
            message = await asyncio.wait_for(call.read(), WAIT)
            if message.HasField("batch"):
                assert_packed_within_the_limit([message.batch])
                seqs.append([e.seq for e in message.batch.envelopes])
    finally:
        call.cancel()
    assert [seq for batch in seqs for seq in batch] == [2, 3]
    assert [2] in seqs
