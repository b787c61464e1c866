"""PostgreSQL schema migrations: versioned per component, safe under concurrent starts."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import asyncpg
import pytest

from statekeeper_server.stores.postgres import MIGRATIONS
from statekeeper_server.stores.postgres.migrations import (
    Migrations,
    SchemaTooNewError,
    fast_compression,
)
from tests.postgres_harness import open_engine

WIDGET_STEPS = [
    ["CREATE TABLE widgets (name TEXT PRIMARY KEY)"],
    ["INSERT INTO widgets (name) VALUES ('first')"],
    ["ALTER TABLE widgets ADD COLUMN size INTEGER NOT NULL DEFAULT 1"],
]


async def start(url: str, migrations: Migrations) -> None:
    """Start a replica with `migrations` (migrating the schema), then stop it."""
    async with open_engine(url, migrations) as engine:
        await engine.ping()


async def versions(engine_url: str) -> dict[str, int]:
    async with open_engine(engine_url, migrations={}) as engine:
        rows = await engine.fetch("SELECT component, version FROM schema_migrations")
    return {row["component"]: row["version"] for row in rows}


async def test_replicas_starting_at_once_leave_one_schema_at_the_newest_version(
    postgres_url: str,
) -> None:
    migrations = {**MIGRATIONS, "widgets": WIDGET_STEPS}
    async with AsyncExitStack() as stack:
        engines = await asyncio.gather(
            *(stack.enter_async_context(open_engine(postgres_url, migrations)) for _ in range(5))
        )
        # The data step ran exactly once, whichever replica applied it.
        assert await engines[0].fetchval("SELECT count(*) FROM widgets") == 1
    assert await versions(postgres_url) == {
        component: len(steps) for component, steps in migrations.items()
    }


async def test_a_later_start_applies_only_the_new_steps(postgres_url: str) -> None:
    await start(postgres_url, {"widgets": WIDGET_STEPS[:2]})
    async with open_engine(postgres_url, {"widgets": WIDGET_STEPS}) as engine:
        rows = await engine.fetch("SELECT name, size FROM widgets")
    assert [tuple(row) for row in rows] == [("first", 1)]
    assert await versions(postgres_url) == {"widgets": 3}


async def test_a_schema_newer_than_the_code_is_refused(postgres_url: str) -> None:
    await start(postgres_url, {"widgets": WIDGET_STEPS})
    with pytest.raises(SchemaTooNewError, match="widgets"):
        await start(postgres_url, {"widgets": WIDGET_STEPS[:2]})


async def test_a_failing_step_leaves_the_schema_at_the_previous_version(
    postgres_url: str,
) -> None:
    broken = [
        WIDGET_STEPS[0],
        ["CREATE TABLE gadgets (name TEXT)", "INSERT INTO no_such_table VALUES (1)"],
    ]
    with pytest.raises(asyncpg.exceptions.UndefinedTableError):
        await start(postgres_url, {"widgets": broken})
    assert await versions(postgres_url) == {"widgets": 1}
    async with open_engine(postgres_url, migrations={}) as engine:
        assert await engine.fetchval("SELECT to_regclass('gadgets')") is None


async def test_every_store_table_lives_in_the_configured_schema(postgres_url: str) -> None:
    async with open_engine(postgres_url) as engine:
        tables = await engine.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            engine.options.schema,
        )
    assert {"schema_migrations", "snapshots"} <= {row["table_name"] for row in tables}


LARGE_RECORD_COLUMNS = {
    ("snapshots", "data"),
    ("events", "envelope"),
    ("jobs", "payload"),
    ("jobs", "result"),
    ("job_changes", "result"),
    ("workflow_checkpoints", "data"),
    ("workflow_checkpoints", "metadata"),
    ("agent_checkpoints", "data"),
    ("thread_checkpoints", "checkpoint_data"),
    ("thread_checkpoints", "metadata_data"),
    ("thread_checkpoints", "metadata"),
    ("thread_values", "data"),
    ("thread_writes", "data"),
}
"""Every column that holds a caller's record, up to the record limit."""


async def test_every_column_holding_large_records_is_compressed_with_lz4(
    postgres_url: str,
) -> None:
    async with open_engine(postgres_url) as engine:
        rows = await engine.fetch(
            "SELECT c.relname, a.attname, a.attcompression::text FROM pg_attribute AS a"
            " JOIN pg_class AS c ON c.oid = a.attrelid"
            " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relkind = 'r' AND a.attnum > 0"
            " AND NOT a.attisdropped AND a.atttypid IN ('bytea'::regtype, 'jsonb'::regtype)",
            engine.options.schema,
        )
    lz4 = {(row["relname"], row["attname"]) for row in rows if row["attcompression"] == "l"}
    assert lz4 == LARGE_RECORD_COLUMNS


async def test_a_value_written_after_the_step_is_stored_lz4_compressed(postgres_url: str) -> None:
    steps = [["CREATE TABLE blobs (data BYTEA NOT NULL)"], [fast_compression("blobs", "data")]]
    async with open_engine(postgres_url, {"blobs": steps}) as engine:
        await engine.execute("INSERT INTO blobs (data) VALUES ($1)", b"statekeeper " * 10_000)
        method = await engine.fetchval("SELECT pg_column_compression(data) FROM blobs")
    assert method == "lz4"


async def test_values_stored_before_the_step_stay_readable(postgres_url: str) -> None:
    create = ["CREATE TABLE blobs (data BYTEA NOT NULL)"]
    value = b"statekeeper " * 10_000
    async with open_engine(postgres_url, {"blobs": [create]}) as engine:
        await engine.execute("INSERT INTO blobs (data) VALUES ($1)", value)
    async with open_engine(
        postgres_url, {"blobs": [create, [fast_compression("blobs", "data")]]}
    ) as engine:
        assert await engine.fetchval("SELECT pg_column_compression(data) FROM blobs") == "pglz"
        assert await engine.fetchval("SELECT data FROM blobs") == value
