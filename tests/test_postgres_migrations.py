"""PostgreSQL schema migrations: versioned per component, safe under concurrent starts."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import asyncpg
import pytest

from statekeeper_server.stores.postgres import MIGRATIONS
from statekeeper_server.stores.postgres.migrations import Migrations, SchemaTooNewError
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
