"""How thread checkpoints are kept: the channel versions of a checkpoint in one column, and
the migration that moves them there from a row per channel, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from statekeeper_server.stores import open_store
from statekeeper_server.stores.postgres import thread_checkpoints as pg_threads
from statekeeper_server.stores.sqlite import thread_checkpoints as sqlite_threads
from statekeeper_server.stores.sqlite.engine import SQLiteEngine
from statekeeper_server.stores.thread_checkpoints import decode_versions, encode_versions
from tests.postgres_harness import open_engine

VERSIONS = {"messages": "00000000000000000000000000000002.0.25", "a:1": "7:x", "": "", "é": "9"}


def test_encoded_versions_decode_to_the_same_pairs_in_channel_order() -> None:
    encoded = encode_versions(VERSIONS)

    assert decode_versions(encoded) == sorted(VERSIONS.items())


def test_no_versions_encode_to_nothing() -> None:
    assert encode_versions({}) == ""
    assert decode_versions("") == []


ROWS = [
    # The tables as the first schema step had them: cp-1 names two channels, cp-2 names
    # one of them at a newer version and one whose value was never stored. {state} is the
    # PostgreSQL column of state bytes; <x> is the bytes of x.
    "INSERT INTO threads VALUES ('ns', 't', 0, NULL)",
    "INSERT INTO thread_checkpoints VALUES ('ns', 't', '', 'cp-1', '', 'b', <c1>, 'b', <m>,"
    " '{}', NULL{state})",
    "INSERT INTO thread_checkpoints VALUES ('ns', 't', '', 'cp-2', 'cp-1', 'b', <c2>, 'b', <m>,"
    " '{}', NULL{state})",
    "INSERT INTO thread_versions VALUES ('ns', 't', '', 'cp-1', 'a:1', '1')",
    "INSERT INTO thread_versions VALUES ('ns', 't', '', 'cp-1', 'b', '1')",
    "INSERT INTO thread_versions VALUES ('ns', 't', '', 'cp-2', 'a:1', '22')",
    "INSERT INTO thread_versions VALUES ('ns', 't', '', 'cp-2', 'b', '1')",
    "INSERT INTO thread_versions VALUES ('ns', 't', '', 'cp-2', 'gone', '3')",
    "INSERT INTO thread_values VALUES ('ns', 't', '', 'a:1', '1', 'b', <a1>)",
    "INSERT INTO thread_values VALUES ('ns', 't', '', 'a:1', '22', 'b', <a22>)",
    "INSERT INTO thread_values VALUES ('ns', 't', '', 'b', '1', 'b', <b1>)",
]


def in_postgres(statement: str) -> str:
    return re.sub(r"<(\w+)>", r"'\1'::bytea", statement.replace("{state}", ", 0"))


def in_sqlite(statement: str) -> str:
    return re.sub(r"<(\w+)>", r"CAST('\1' AS BLOB)", statement.replace("{state}", ""))


async def named_values(url: str, checkpoint_id: str) -> list[tuple[str, str, bytes | None]]:
    """Each channel version a stored checkpoint names, with its value (None if not stored)."""
    store = await open_store(url)
    try:
        found = await store.threads.get_checkpoint("ns", "t", "", checkpoint_id, 1)
    finally:
        await store.close()
    values = {(v.channel, v.version): v.value.data for v in found.channel_values}
    return [
        (v.channel, v.version, values.get((v.channel, v.version))) for v in found.channel_versions
    ]


async def test_postgres_migration_keeps_the_versions_and_values_each_checkpoint_names(
    postgres_url: str,
) -> None:
    async with open_engine(postgres_url, {"thread_checkpoints": pg_threads.MIGRATIONS[:1]}) as e:
        for statement in ROWS:
            await e.execute(in_postgres(statement))

    assert await named_values(postgres_url, "cp-1") == [("a:1", "1", b"a1"), ("b", "1", b"b1")]
    assert await named_values(postgres_url, "cp-2") == [
        ("a:1", "22", b"a22"),
        ("b", "1", b"b1"),
        ("gone", "3", None),
    ]


async def test_sqlite_migration_keeps_the_versions_and_values_each_checkpoint_names(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    engine = SQLiteEngine(path, {"thread_checkpoints": sqlite_threads.MIGRATIONS[:1]})
    await engine.open()

    def fill(conn: sqlite3.Connection) -> None:
        for statement in ROWS:
            conn.execute(in_sqlite(statement))

    await engine.write(fill)
    await engine.close()

    url = f"file:{path}"
    assert await named_values(url, "cp-1") == [("a:1", "1", b"a1"), ("b", "1", b"b1")]
    assert await named_values(url, "cp-2") == [
        ("a:1", "22", b"a22"),
        ("b", "1", b"b1"),
        ("gone", "3", None),
    ]
