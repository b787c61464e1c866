"""The heap is trimmed on a worker thread after streams ended, and never on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable

import statekeeper
from statekeeper.v1 import events_pb2
from statekeeper_server.memory_trim import MemoryTrimmer, glibc_malloc_trim
from tests.harness import running_app
from tests.waiting import until

WAIT = 10.0


@contextlib.asynccontextmanager
async def running(trimmer: MemoryTrimmer) -> AsyncIterator[None]:
    task = asyncio.create_task(trimmer.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def recording_trim() -> tuple[Callable[[], None], list[str], asyncio.Event]:
    """A trim that records the thread it ran on, and an event set once it ran."""
    loop = asyncio.get_running_loop()
    threads: list[str] = []
    ran = asyncio.Event()

    def trim() -> None:
        threads.append(threading.current_thread().name)
        loop.call_soon_threadsafe(ran.set)

    return trim, threads, ran


async def test_a_request_is_followed_by_a_trim_on_a_worker_thread() -> None:
    trim, threads, ran = recording_trim()
    trimmer = MemoryTrimmer(trim, delay=0, interval=0)
    async with running(trimmer):
        trimmer.request()
        await asyncio.wait_for(ran.wait(), WAIT)
    assert threads
    assert threading.main_thread().name not in threads


async def test_the_event_loop_keeps_serving_while_a_trim_runs() -> None:
    started = threading.Event()
    finish = threading.Event()
    finished_by_the_loop: list[bool] = []

    def slow_trim() -> None:
        # Only the event loop sets `finish`: were the trim on the loop, this would time out.
        started.set()
        finished_by_the_loop.append(finish.wait(WAIT))

    trimmer = MemoryTrimmer(slow_trim, delay=0, interval=0)
    async with running(trimmer):
        trimmer.request()
        await until(started.is_set, "the trim started")
        finish.set()
        await until(lambda: bool(finished_by_the_loop), "the trim ended")
    assert finished_by_the_loop == [True]


async def test_without_a_request_nothing_is_trimmed() -> None:
    trim, threads, _ = recording_trim()
    trimmer = MemoryTrimmer(trim, delay=0, interval=0)
    async with running(trimmer):
        for _ in range(10):
            await asyncio.sleep(0)
    assert threads == []


async def test_requests_made_together_share_one_trim() -> None:
    trim, threads, ran = recording_trim()
    trimmer = MemoryTrimmer(trim, delay=0, interval=0)
    async with running(trimmer):
        for _ in range(100):
            trimmer.request()
        await asyncio.wait_for(ran.wait(), WAIT)
        for _ in range(10):
            await asyncio.sleep(0)
    assert len(threads) == 1


async def test_a_trimmer_without_a_trim_call_does_nothing() -> None:
    trimmer = MemoryTrimmer(None)
    trimmer.request()
    await asyncio.wait_for(trimmer.run(), WAIT)
    assert trimmer.trims == 0


def test_glibc_trim_is_found_here_and_callable() -> None:
    # The test machines run glibc; elsewhere glibc_malloc_trim() is None and nothing trims.
    trim = glibc_malloc_trim()
    assert trim is not None
    assert trim() in (0, 1)


async def test_the_server_trims_its_heap_after_a_stream_ended() -> None:
    async with (
        running_app("memory:") as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        event = events_pb2.AgentEvent(custom=events_pb2.CustomEvent(type="note"))
        await client.events.append("run-1", event)
        assert app.trimmer.trims == 0
        assert [e.seq async for e in client.events.replay("run-1", follow=False)] == [1]
        await until(lambda: app.trimmer.trims > 0, "a trim after the stream ended")
