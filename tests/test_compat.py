"""What statekeeper_server.compat gives on every supported Python (CI runs 3.10 and the
machine's newer one)."""

from __future__ import annotations

import asyncio
import datetime
import sqlite3
from pathlib import Path

import pytest

from statekeeper_server import compat


def test_a_file_that_is_no_database_is_named_by_its_sqlite_code(tmp_path: Path) -> None:
    path = tmp_path / "not-a.db"
    path.write_bytes(b"this is not an SQLite database, only text" * 100)
    connection = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError) as caught:
            connection.execute("SELECT * FROM sqlite_master").fetchall()
    finally:
        connection.close()
    assert compat.sqlite_error_code(caught.value) == compat.SQLITE_NOTADB


def test_a_locked_database_is_named_by_its_sqlite_code(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    waiter = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError) as caught:
            waiter.execute("BEGIN EXCLUSIVE")
    finally:
        holder.close()
        waiter.close()
    assert compat.sqlite_error_code(caught.value) == compat.SQLITE_BUSY


def test_an_error_sqlite_did_not_raise_has_no_code() -> None:
    assert compat.sqlite_error_code(sqlite3.OperationalError("no such table: x")) is None


def test_an_iso_time_with_a_z_is_utc() -> None:
    assert compat.fromisoformat("2026-12-31T08:00:00Z") == datetime.datetime(
        2026, 12, 31, 8, tzinfo=datetime.timezone.utc
    )


async def test_a_timeout_that_passes_raises_asyncio_timeout_error() -> None:
    with pytest.raises(asyncio.TimeoutError):
        async with compat.timeout(0.01):
            await asyncio.sleep(1)


async def test_a_deadline_that_passes_raises_asyncio_timeout_error() -> None:
    deadline = asyncio.get_running_loop().time() + 0.01
    with pytest.raises(asyncio.TimeoutError):
        async with compat.timeout_at(deadline):
            await asyncio.sleep(1)


def test_toml_is_read() -> None:
    assert compat.tomllib.loads('[[tokens]]\nname = "ci"\n') == {"tokens": [{"name": "ci"}]}
