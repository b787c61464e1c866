"""Large requests take turns by the bytes of their bodies (`request_turns`), first come
first served, and through the server every one of them is still served."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable

import grpc
import pytest
from pydantic import ValidationError

from statekeeper.v1 import snapshots_pb2, snapshots_pb2_grpc
from statekeeper_server.app import Application
from statekeeper_server.config import Settings
from statekeeper_server.limits import DEFAULT_LARGE_REQUEST_BYTES, MAX_REQUEST_BYTES_LIMIT
from statekeeper_server.request_turns import RequestTurns
from tests.harness import running_app
from tests.metrics_scrape import scrape
from tests.test_check_workers import large, snapshot_request
from tests.waiting import until_async


class Holder:
    """A task holding a turn of `turns` for `size` bytes until `release` is set."""

    def __init__(self, turns: RequestTurns, size: int) -> None:
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.task = asyncio.create_task(self._hold(turns, size))

    async def _hold(self, turns: RequestTurns, size: int) -> None:
        async with turns.turn(size):
            self.holding.set()
            await self.release.wait()

    async def finish(self) -> None:
        self.release.set()
        await self.task


async def settle() -> None:
    """Let every task that can run, run (turns are given on the event loop)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_requests_within_the_budget_hold_turns_at_once() -> None:
    turns = RequestTurns(10)
    first, second = Holder(turns, 4), Holder(turns, 6)
    await settle()
    assert first.holding.is_set()
    assert second.holding.is_set()
    assert turns.bytes_in_progress == 10
    await first.finish()
    await second.finish()
    assert turns.bytes_in_progress == 0


async def test_a_request_past_the_budget_waits_until_a_holder_finishes() -> None:
    turns = RequestTurns(10)
    first = Holder(turns, 6)
    await settle()
    second = Holder(turns, 6)
    await settle()
    assert not second.holding.is_set()
    assert turns.waiting == 1
    await first.finish()
    await settle()
    assert second.holding.is_set()
    await second.finish()


async def test_a_body_larger_than_the_budget_is_served_alone() -> None:
    turns = RequestTurns(10)
    small = Holder(turns, 1)
    await settle()
    huge = Holder(turns, 50)
    await settle()
    assert not huge.holding.is_set()
    await small.finish()
    await settle()
    assert huge.holding.is_set()
    assert turns.bytes_in_progress == 50
    await huge.finish()


async def test_a_waiting_request_keeps_later_smaller_ones_waiting() -> None:
    turns = RequestTurns(10)
    first = Holder(turns, 5)
    await settle()
    big = Holder(turns, 10)
    await settle()
    small = Holder(turns, 1)
    await settle()
    # 1 byte would fit beside the first, but the 10-byte request asked before it.
    assert not small.holding.is_set()
    await first.finish()
    await settle()
    assert big.holding.is_set()
    assert not small.holding.is_set()
    await big.finish()
    await settle()
    assert small.holding.is_set()
    await small.finish()


async def test_a_waiter_that_gives_up_lets_the_next_one_in() -> None:
    turns = RequestTurns(10)
    first = Holder(turns, 8)
    await settle()
    quitter = Holder(turns, 10)
    after = Holder(turns, 2)
    await settle()
    quitter.task.cancel()
    await settle()
    assert after.holding.is_set()
    assert turns.waiting == 0
    with contextlib.suppress(asyncio.CancelledError):
        await quitter.task
    await first.finish()
    await after.finish()
    assert turns.bytes_in_progress == 0


async def test_a_caller_giving_up_as_its_turn_comes_gives_the_turn_back() -> None:
    turns = RequestTurns(10)
    first = Holder(turns, 10)
    await settle()
    second = Holder(turns, 10)
    await settle()
    first.release.set()
    await asyncio.sleep(0)  # the first ends its turn, giving it to the second ...
    second.task.cancel()  # ... which gives up before it ran
    await first.task
    with contextlib.suppress(asyncio.CancelledError):
        await second.task
    assert not second.holding.is_set()
    assert turns.bytes_in_progress == 0
    third = Holder(turns, 10)
    await settle()
    assert third.holding.is_set()
    await third.finish()


async def test_a_budget_of_zero_gives_every_request_its_turn_at_once() -> None:
    turns = RequestTurns(0)
    holders = [Holder(turns, 1_000_000) for _ in range(5)]
    await settle()
    assert all(holder.holding.is_set() for holder in holders)
    for holder in holders:
        await holder.finish()


def test_the_budget_is_at_most_the_largest_request_limit() -> None:
    assert Settings().large_request_bytes == DEFAULT_LARGE_REQUEST_BYTES
    assert Settings(large_request_bytes=0).large_request_bytes == 0
    with pytest.raises(ValidationError):
        Settings(large_request_bytes=-1)
    with pytest.raises(ValidationError):
        Settings(large_request_bytes=MAX_REQUEST_BYTES_LIMIT + 1)


@pytest.fixture
async def app(store_url: str) -> AsyncIterator[Application]:
    # A budget smaller than any large body: large requests are served one at a time.
    async with running_app(store_url, large_request_bytes=1) as running:
        yield running


@pytest.fixture
async def snapshots(app: Application) -> AsyncIterator[snapshots_pb2_grpc.SnapshotServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield snapshots_pb2_grpc.SnapshotServiceStub(channel)


def numbered_large(index: int) -> snapshots_pb2.SaveSnapshotRequest:
    request = large({"index": index})
    request.snapshot.run_id = f"run-{index}"
    return request


async def test_large_requests_taking_turns_are_each_served(
    snapshots: snapshots_pb2_grpc.SnapshotServiceAsyncStub,
) -> None:
    requests = [numbered_large(index) for index in range(6)]
    small = snapshot_request({"small": True})
    small.snapshot.run_id = "run-small"
    await asyncio.gather(*(snapshots.SaveSnapshot(request) for request in [*requests, small]))
    for request in [*requests, small]:
        loaded = await snapshots.LoadSnapshot(
            snapshots_pb2.LoadSnapshotRequest(run_id=request.snapshot.run_id)
        )
        assert loaded.snapshot.request.metadata == request.snapshot.request.metadata


async def test_a_large_request_waiting_for_its_turn_is_counted_until_it_is_served(
    app: Application, snapshots: snapshots_pb2_grpc.SnapshotServiceAsyncStub
) -> None:
    async def waiting() -> float:
        return (await scrape(app.http_port)).value("statekeeper_large_requests_waiting")

    assert await waiting() == 0
    async with app.request_turns.turn(1):
        call = asyncio.ensure_future(snapshots.SaveSnapshot(numbered_large(1)))
        await until_async(lambda: _equals(waiting(), 1), "the request waits for its turn")
        assert not call.done()
        # A small call passes the waiting large one.
        small = snapshot_request({"small": True})
        small.snapshot.run_id = "run-small"
        await snapshots.SaveSnapshot(small)
        assert not call.done()
    await call
    assert await waiting() == 0


async def _equals(value: Awaitable[float], expected: float) -> bool:
    return await value == expected
