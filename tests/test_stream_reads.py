"""Point reads never queue behind the history reads of streams, on every backend.

A file database serves stream reads on a thread of their own, so a point
read waits for none of them; in memory the writer thread runs at most one
stream read between point reads; PostgreSQL gives stream reads at most
half of its pool.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from statekeeper_server.stores.postgres.engine import PostgresEngine
from statekeeper_server.stores.sqlite.engine import SQLiteEngine
from tests.postgres_harness import open_engine
from tests.waiting import until

WAIT = 10.0
QUEUED_STREAM_READS = 100


@pytest.fixture
async def memory_engine() -> AsyncIterator[SQLiteEngine]:
    engine = SQLiteEngine(None, {})
    await engine.open()
    yield engine
    await engine.close()


class QueuedStreamReads:
    """A stream read that holds its thread until released, and many queued behind it."""

    def __init__(self, engine: SQLiteEngine, order: list[str]) -> None:
        self.release = threading.Event()
        self._order = order
        first = engine.read(self._held, stream=True)
        rest = [engine.read(self._quick, stream=True) for _ in range(QUEUED_STREAM_READS)]
        self.reads = [asyncio.ensure_future(read) for read in (first, *rest)]

    def _held(self, conn: sqlite3.Connection) -> None:
        self.release.wait(WAIT)
        self._order.append("stream")

    def _quick(self, conn: sqlite3.Connection) -> None:
        conn.execute("SELECT 1").fetchone()
        self._order.append("stream")

    async def finish(self) -> None:
        self.release.set()
        await asyncio.gather(*self.reads)


async def test_a_point_read_of_a_file_completes_while_stream_reads_hold_their_thread(
    tmp_path: Path,
) -> None:
    engine = SQLiteEngine(tmp_path / "db.sqlite", {})
    await engine.open()
    try:
        order: list[str] = []
        streams = QueuedStreamReads(engine, order)
        await asyncio.sleep(0)
        await asyncio.wait_for(engine.read(lambda conn: order.append("point")), WAIT)
        assert order == ["point"]
        await streams.finish()
        assert order.count("stream") == QUEUED_STREAM_READS + 1
    finally:
        await engine.close()


async def test_a_point_read_in_memory_waits_for_one_stream_read_at_most(
    memory_engine: SQLiteEngine,
) -> None:
    order: list[str] = []
    streams = QueuedStreamReads(memory_engine, order)
    await asyncio.sleep(0)
    point = asyncio.ensure_future(memory_engine.read(lambda conn: order.append("point")))
    await asyncio.sleep(0)
    streams.release.set()
    await asyncio.wait_for(point, WAIT)
    assert "point" in order[:2]
    await streams.finish()
    assert order.count("stream") == QUEUED_STREAM_READS + 1


async def test_stream_reads_queued_in_memory_all_complete_when_the_engine_closes(
    memory_engine: SQLiteEngine,
) -> None:
    order: list[str] = []
    streams = QueuedStreamReads(memory_engine, order)
    await asyncio.sleep(0)
    streams.release.set()
    await memory_engine.close()
    await asyncio.wait_for(asyncio.gather(*streams.reads), WAIT)
    assert order.count("stream") == QUEUED_STREAM_READS + 1


@pytest.fixture
async def postgres_engine(postgres_url: str) -> AsyncIterator[PostgresEngine]:
    async with open_engine(f"{postgres_url}&pool_size=4") as engine:
        yield engine


async def test_a_postgres_point_read_gets_a_connection_while_stream_reads_fill_their_slots(
    postgres_engine: PostgresEngine,
) -> None:
    release = asyncio.Event()
    inside = 0
    most_inside = 0

    async def held_stream_read() -> None:
        nonlocal inside, most_inside
        async with postgres_engine.transaction(readonly=True, stream=True) as tx:
            await tx.conn.fetchval("SELECT 1")
            inside += 1
            most_inside = max(most_inside, inside)
            await release.wait()
            inside -= 1

    reads = [asyncio.ensure_future(held_stream_read()) for _ in range(QUEUED_STREAM_READS)]
    await until(
        lambda: inside == postgres_engine.options.stream_connections, "stream slots all taken"
    )
    assert await asyncio.wait_for(postgres_engine.fetchval("SELECT 1"), WAIT) == 1
    assert await asyncio.wait_for(postgres_engine.fetch("SELECT 1", stream=False), WAIT)
    release.set()
    await asyncio.wait_for(asyncio.gather(*reads), WAIT)
    assert most_inside == postgres_engine.options.stream_connections == 2
