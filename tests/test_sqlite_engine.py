"""The SQLite engine: group commit, isolation of failed writes, schema, locking,
failures in plain words, and the write check of health."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from statekeeper_server.errors import InvalidArgument, Unavailable
from statekeeper_server.stores import FailureLog
from statekeeper_server.stores.sqlite import engine as sqlite_engine
from statekeeper_server.stores.sqlite.engine import (
    HEALTH_MIGRATIONS,
    SchemaTooNewError,
    SQLiteEngine,
    StoreInUseError,
)
from tests.test_store_faults import assert_plain

MIGRATIONS = {
    "items": [["CREATE TABLE items (name TEXT PRIMARY KEY)"]],
    "health": HEALTH_MIGRATIONS,
}


def insert(name: str) -> Callable[[sqlite3.Connection], str]:
    def work(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO items (name) VALUES (?)", (name,))
        return name

    return work


def names(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT name FROM items ORDER BY name")]


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[SQLiteEngine]:
    opened = SQLiteEngine(tmp_path / "db.sqlite", MIGRATIONS)
    await opened.open()
    yield opened
    await opened.close()


async def test_concurrent_writes_share_transactions(engine: SQLiteEngine) -> None:
    results = await asyncio.gather(*(engine.write(insert(f"n{i:03d}")) for i in range(200)))
    assert len(results) == 200
    assert engine.transactions < 200
    assert len(await engine.read(names)) == 200


def insert_then_fail(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO items (name) VALUES ('doomed')")
    raise ValueError("broken")


def refuse(conn: sqlite3.Connection) -> None:
    raise InvalidArgument("name", "is taken")


async def outcome_between_two_inserts(
    engine: SQLiteEngine, middle: Callable[[sqlite3.Connection], None], *, checks_first: bool
) -> object:
    """Write `before`, `middle` and `after` at once; check that both inserts, and only
    they, were stored; return what `middle` gave."""
    outcomes = await asyncio.gather(
        engine.write(insert("before"), checks_first=checks_first),
        engine.write(middle, checks_first=checks_first),
        engine.write(insert("after")),
        return_exceptions=True,
    )
    assert (outcomes[0], outcomes[2]) == ("before", "after")
    assert await engine.read(names) == ["after", "before"]
    return outcomes[1]


async def test_a_failing_write_is_rolled_back_alone(engine: SQLiteEngine) -> None:
    failed = await outcome_between_two_inserts(engine, insert_then_fail, checks_first=False)
    assert isinstance(failed, ValueError)


@pytest.mark.parametrize(
    ("middle", "error", "rollbacks"),
    [
        pytest.param(refuse, InvalidArgument, 0, id="refusing-leaves-the-others-to-commit"),
        pytest.param(insert_then_fail, ValueError, 1, id="failing-after-a-change-is-undone-alone"),
    ],
)
async def test_a_checks_first_write_that_fails_costs_the_others_nothing(
    engine: SQLiteEngine,
    middle: Callable[[sqlite3.Connection], None],
    error: type[Exception],
    rollbacks: int,
) -> None:
    """A refusal needs no rollback; a failure after a change reruns the group once."""
    failed = await outcome_between_two_inserts(engine, middle, checks_first=True)
    assert isinstance(failed, error)
    assert engine.rollbacks == rollbacks


async def test_on_commit_runs_on_the_loop_before_any_writer_of_the_group_resumes(
    engine: SQLiteEngine,
) -> None:
    loop_thread = threading.get_ident()
    seen: list[tuple[str, str, bool]] = []

    def committed(name: str) -> None:
        seen.append(("committed", name, threading.get_ident() == loop_thread))

    async def write(name: str) -> None:
        await engine.write(insert(name), on_commit=committed)
        seen.append(("resumed", name, True))

    await asyncio.gather(write("a"), write("b"))
    assert engine.transactions == 1
    assert seen[:2] == [("committed", "a", True), ("committed", "b", True)]
    assert sorted(seen[2:]) == [("resumed", "a", True), ("resumed", "b", True)]


async def test_on_commit_is_skipped_for_a_write_that_failed(engine: SQLiteEngine) -> None:
    committed: list[object] = []
    outcomes = await asyncio.gather(
        engine.write(refuse, checks_first=True, on_commit=committed.append),
        engine.write(insert_then_fail, on_commit=committed.append),
        engine.write(insert("kept"), on_commit=committed.append),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], InvalidArgument)
    assert isinstance(outcomes[1], ValueError)
    assert committed == ["kept"]


async def test_a_failing_on_commit_leaves_the_write_acknowledged(engine: SQLiteEngine) -> None:
    def broken(_: str) -> None:
        raise RuntimeError("follow-up failed")

    assert await engine.write(insert("kept"), on_commit=broken) == "kept"
    assert await engine.read(names) == ["kept"]


async def test_a_sqlite_error_in_a_write_is_unavailable_in_plain_words(
    engine: SQLiteEngine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller gets plain words; the server log gets SQLite's text."""
    monkeypatch.setattr(sqlite_engine, "failures", FailureLog(sqlite_engine.log))

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    with caplog.at_level(logging.WARNING), pytest.raises(Unavailable) as raised:
        await engine.write(broken)
    assert raised.value.reason == "STORE_UNAVAILABLE"
    assert_plain(raised.value.message)
    assert "no such table: no_such_table" in caplog.text


def refuse_writes(conn: sqlite3.Connection) -> None:
    """Make the writer's connection refuse every change from now on, as a database
    file that turned read-only would (even the BEGIN of the next group fails)."""
    conn.execute("PRAGMA query_only = ON")


async def test_a_write_the_database_refuses_is_unavailable_in_plain_words(
    engine: SQLiteEngine,
) -> None:
    await engine.write(refuse_writes)
    with pytest.raises(Unavailable) as raised:
        await engine.write(insert("refused"))
    assert raised.value.reason == "STORE_UNAVAILABLE"
    assert raised.value.message == "the store's database cannot be written"


async def test_the_write_check_commits_through_the_writer(engine: SQLiteEngine) -> None:
    committed = engine.transactions
    await engine.check_writes()
    assert engine.transactions == committed + 1


async def test_the_write_check_fails_while_the_database_refuses_writes(
    engine: SQLiteEngine,
) -> None:
    await engine.check_writes()
    await engine.write(refuse_writes)
    with pytest.raises(Unavailable):
        await engine.check_writes()
    assert await engine.read(names) == []  # reads still work


async def test_writes_are_durable_once_acknowledged(tmp_path: Path) -> None:
    engine = SQLiteEngine(tmp_path / "db.sqlite", MIGRATIONS)
    await engine.open()
    await engine.write(insert("kept"))
    # Read through an independent connection, as another process would.
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    assert names(conn) == ["kept"]
    conn.close()
    await engine.close()


async def test_database_uses_wal_and_full_sync(engine: SQLiteEngine) -> None:
    def pragmas(conn: sqlite3.Connection) -> tuple[str, int]:
        return (
            conn.execute("PRAGMA journal_mode").fetchone()[0],
            conn.execute("PRAGMA synchronous").fetchone()[0],
        )

    assert await engine.read(pragmas) == ("wal", 2)


async def test_schema_versions_are_recorded_per_component(engine: SQLiteEngine) -> None:
    def versions(conn: sqlite3.Connection) -> list[tuple[str, int]]:
        return list(conn.execute("SELECT component, version FROM schema_migrations"))

    assert sorted(await engine.read(versions)) == [("health", 1), ("items", 1)]


async def test_reopening_applies_only_new_migration_steps(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    first = SQLiteEngine(path, MIGRATIONS)
    await first.open()
    await first.write(insert("old"))
    await first.close()
    grown = {"items": [*MIGRATIONS["items"], ["ALTER TABLE items ADD COLUMN size INTEGER"]]}
    second = SQLiteEngine(path, grown)
    await second.open()

    def columns(conn: sqlite3.Connection) -> list[str]:
        return [row[1] for row in conn.execute("PRAGMA table_info(items)")]

    assert await second.read(columns) == ["name", "size"]
    assert await second.read(names) == ["old"]
    await second.close()


async def test_a_schema_newer_than_the_code_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    grown = {"items": [*MIGRATIONS["items"], ["ALTER TABLE items ADD COLUMN size INTEGER"]]}
    first = SQLiteEngine(path, grown)
    await first.open()
    await first.close()
    with pytest.raises(SchemaTooNewError):
        await SQLiteEngine(path, MIGRATIONS).open()


def hard_link(path: Path) -> Path:
    other = path.with_name("hard-link.sqlite")
    os.link(path, other)
    return other


def symlink(path: Path) -> Path:
    other = path.with_name("symlink.sqlite")
    other.symlink_to(path)
    return other


@pytest.mark.parametrize(
    "other_name",
    [
        pytest.param(lambda path: path, id="same-path"),
        pytest.param(hard_link, id="hard-link"),
        pytest.param(symlink, id="symlink"),
    ],
)
async def test_a_second_engine_on_the_same_file_fails_fast(
    engine: SQLiteEngine, other_name: Callable[[Path], Path]
) -> None:
    assert engine.path is not None
    with pytest.raises(
        StoreInUseError, match=f"in use by another statekeeper process \\(pid {os.getpid()}\\)"
    ):
        await SQLiteEngine(other_name(engine.path), MIGRATIONS).open()
    await engine.write(insert("still served"))


async def test_a_refused_open_releases_the_file(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    grown = {**MIGRATIONS, "items": [*MIGRATIONS["items"], ["ALTER TABLE items ADD COLUMN n"]]}
    newer = SQLiteEngine(path, grown)
    await newer.open()
    await newer.close()
    with pytest.raises(SchemaTooNewError):
        await SQLiteEngine(path, MIGRATIONS).open()
    again = SQLiteEngine(path, grown)
    await again.open()
    await again.close()


async def test_the_file_is_free_again_after_close(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    first = SQLiteEngine(path, MIGRATIONS)
    await first.open()
    await first.close()
    second = SQLiteEngine(path, MIGRATIONS)
    await second.open()
    await second.close()


async def test_in_memory_engine_reads_its_own_writes() -> None:
    engine = SQLiteEngine(None, MIGRATIONS)
    await engine.open()
    await engine.write(insert("x"))
    assert await engine.read(names) == ["x"]
    await engine.close()


async def test_calls_after_close_are_unavailable(tmp_path: Path) -> None:
    engine = SQLiteEngine(tmp_path / "db.sqlite", MIGRATIONS)
    await engine.open()
    await engine.close()
    with pytest.raises(Unavailable):
        await engine.write(insert("late"))
    with pytest.raises(Unavailable):
        await engine.read(names)
