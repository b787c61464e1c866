"""The embedded event store's own ways: few statements per batch, run state kept by the writer."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from statekeeper.v1 import events_pb2
from statekeeper_server.notifier import Notifier
from statekeeper_server.stores.events import RunFilter
from statekeeper_server.stores.sqlite.engine import SQLiteEngine
from statekeeper_server.stores.sqlite.events import (
    MAX_ROWS_PER_INSERT,
    MIGRATIONS,
    SQLiteEventStore,
    _row_chunks,
    _runs_query,
)


@pytest.mark.parametrize("count", [1, 2, 3, 100, 255, 256, 257, 1000])
def test_row_chunks_cover_every_row_in_powers_of_two(count: int) -> None:
    chunks = _row_chunks(count)
    assert sum(chunks) == count
    assert all(size & (size - 1) == 0 and size <= MAX_ROWS_PER_INSERT for size in chunks)
    assert chunks == sorted(chunks, reverse=True)


def test_a_batch_of_a_hundred_takes_three_statements() -> None:
    assert _row_chunks(100) == [64, 32, 4]


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[SQLiteEngine]:
    opened = SQLiteEngine(tmp_path / "db.sqlite", {"events": MIGRATIONS})
    await opened.open()
    yield opened
    await opened.close()


def custom() -> events_pb2.EventInput:
    return events_pb2.EventInput(
        event=events_pb2.AgentEvent(custom=events_pb2.CustomEvent(type="step"))
    )


def seqs(envelopes: list[bytes]) -> list[int]:
    return [events_pb2.EventEnvelope.FromString(data).seq for data in envelopes]


async def test_appends_rerun_after_a_rolled_back_group_keep_their_seqs(
    engine: SQLiteEngine,
) -> None:
    store = SQLiteEventStore(engine, Notifier())
    await store.append("default", "run-1", [custom()], None)

    def break_midway(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM event_runs")
        raise ValueError("broken")

    # Hold the writer so that the three writes below form one group.
    release = threading.Event()
    holding = asyncio.ensure_future(engine.write(lambda conn: release.wait(5)))
    group = asyncio.gather(
        store.append("default", "run-1", [custom()], None),
        engine.write(break_midway, checks_first=True),
        store.append("default", "run-1", [custom(), custom()], None),
        return_exceptions=True,
    )
    await asyncio.sleep(0.05)
    release.set()
    await holding
    outcomes = await group
    assert isinstance(outcomes[1], ValueError)
    assert engine.rollbacks == 1
    assert sorted(seqs(outcomes[0]) + seqs(outcomes[2])) == [2, 3, 4]  # type: ignore[arg-type]
    assert seqs(await store.append("default", "run-1", [custom()], None)) == [5]


async def test_truncated_and_deleted_runs_are_seen_by_the_next_append(
    engine: SQLiteEngine,
) -> None:
    store = SQLiteEventStore(engine, Notifier())
    await store.append("default", "run-1", [custom(), custom()], None)
    await store.truncate("default", "run-1", 2)
    assert seqs(await store.append("default", "run-1", [custom()], None)) == [3]
    assert (await store.read("default", "run-1", 2, 10)).run.first_seq == 3  # type: ignore[union-attr]
    await store.delete_run("default", "run-1")
    assert seqs(await store.append("default", "run-1", [custom()], None)) == [1]


# -- run listings ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "index", "bounds"),
    [
        (RunFilter(), "PRIMARY KEY", "run_id>?"),
        (RunFilter(prefix="run-1"), "PRIMARY KEY", "run_id>? AND run_id<?"),
        (RunFilter(session_id="s-1"), "INDEX event_runs_by_session", "session_id=? AND run_id>?"),
        (RunFilter(terminal=True), "INDEX event_runs_by_terminal", "terminal=? AND run_id>?"),
        (
            RunFilter(prefix="run-1", terminal=False),
            "INDEX event_runs_by_terminal",
            "terminal=? AND run_id>? AND run_id<?",
        ),
        (
            RunFilter(prefix="run-1", session_id="s-1", terminal=True),
            "INDEX event_runs_by_session",
            "session_id=? AND run_id>? AND run_id<?",
        ),
    ],
)
def test_a_filtered_page_of_runs_is_one_index_range(
    where: RunFilter, index: str, bounds: str
) -> None:
    conn = sqlite3.connect(":memory:")
    for migration in MIGRATIONS:
        for statement in migration:
            conn.execute(statement)
    sql, params = _runs_query("default", "run-0", where, 51)
    plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    assert plan == [f"SEARCH event_runs USING {index} (namespace=? AND {bounds})"]
