"""Turns of streams: a few at once, first come first served, and none kept by a stalled stream."""

from __future__ import annotations

import asyncio

import pytest

from statekeeper_server.stream_turns import StreamTurns
from tests.waiting import ENOUGH

PATIENT = 3600.0
"""A patience no test outlasts: turns count until they end."""


async def test_a_stream_gets_a_turn_at_once_while_fewer_than_the_slots_are_taken() -> None:
    turns = StreamTurns(slots=2, patience=PATIENT)
    await asyncio.wait_for(turns.take(), ENOUGH)
    await asyncio.wait_for(turns.take(), ENOUGH)
    assert turns.counted == 2


async def test_a_stream_waits_while_every_turn_is_taken_and_gets_the_first_one_ended() -> None:
    turns = StreamTurns(slots=2, patience=PATIENT)
    first = await turns.take()
    await turns.take()
    waiting = asyncio.ensure_future(turns.take())
    await asyncio.sleep(0)
    assert not waiting.done()
    assert turns.waiting == 1
    turns.end(first)
    await asyncio.wait_for(waiting, ENOUGH)
    assert (turns.counted, turns.waiting) == (2, 0)


async def test_waiting_streams_get_their_turns_in_the_order_they_came() -> None:
    turns = StreamTurns(slots=1, patience=PATIENT)
    held = await turns.take()
    order: list[int] = []

    async def take(index: int) -> None:
        turns.end(await turns.take())
        order.append(index)

    waiting = [asyncio.ensure_future(take(i)) for i in range(5)]
    await asyncio.sleep(0)
    turns.end(held)
    await asyncio.wait_for(asyncio.gather(*waiting), ENOUGH)
    assert order == [0, 1, 2, 3, 4]


async def test_a_turn_that_outlasts_its_patience_lets_the_next_stream_in() -> None:
    turns = StreamTurns(slots=1, patience=0.01)
    stalled = await turns.take()
    await asyncio.wait_for(turns.take(), ENOUGH)
    assert not stalled.counted
    turns.end(stalled)
    assert turns.counted == 1


async def test_ending_a_turn_twice_frees_one_slot() -> None:
    turns = StreamTurns(slots=2, patience=PATIENT)
    first = await turns.take()
    await turns.take()
    turns.end(first)
    turns.end(first)
    assert turns.counted == 1


async def test_a_stream_cancelled_while_waiting_takes_no_turn() -> None:
    turns = StreamTurns(slots=1, patience=PATIENT)
    held = await turns.take()
    cancelled = asyncio.ensure_future(turns.take())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    turns.end(held)
    assert (turns.counted, turns.waiting) == (0, 0)


async def test_a_stream_cancelled_just_as_it_got_a_turn_gives_it_back() -> None:
    turns = StreamTurns(slots=1, patience=PATIENT)
    held = await turns.take()
    cancelled = asyncio.ensure_future(turns.take())
    await asyncio.sleep(0)
    turns.end(held)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert (turns.counted, turns.waiting) == (0, 0)


async def test_at_most_per_pass_turns_start_before_the_loop_runs_other_work() -> None:
    turns = StreamTurns(slots=100, patience=PATIENT, per_pass=2)
    started: list[int] = []

    async def stream(index: int) -> None:
        await turns.take()
        started.append(index)

    streams = [asyncio.ensure_future(stream(i)) for i in range(6)]
    seen: list[int] = []
    asyncio.get_running_loop().call_soon(lambda: seen.append(len(started)))
    await asyncio.wait_for(asyncio.gather(*streams), ENOUGH)
    assert seen == [2]
    assert started == [0, 1, 2, 3, 4, 5]


async def test_a_call_needing_several_passes_completes_before_a_crowd_of_streams_all_start() -> (
    None
):
    turns = StreamTurns(slots=100, patience=PATIENT, per_pass=2)
    started = 0

    async def stream() -> None:
        nonlocal started
        turns.end(await turns.take())
        started += 1

    async def other_call() -> int:
        for _ in range(5):  # a unary call takes a few passes of the loop: read, handle, send
            await asyncio.sleep(0)
        return started

    streams = [asyncio.ensure_future(stream()) for _ in range(100)]
    started_by_then = await asyncio.wait_for(other_call(), ENOUGH)
    await asyncio.wait_for(asyncio.gather(*streams), ENOUGH)
    assert started_by_then <= 2 * 6
    assert started == 100


async def test_turns_ended_in_the_pass_they_started_leave_no_stream_waiting() -> None:
    turns = StreamTurns(slots=100, patience=PATIENT, per_pass=1)

    async def stream() -> None:
        turns.end(await turns.take())

    await asyncio.wait_for(asyncio.gather(*(stream() for _ in range(5))), ENOUGH)
    assert (turns.counted, turns.waiting) == (0, 0)
