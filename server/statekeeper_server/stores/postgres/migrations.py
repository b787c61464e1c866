"""Schema migrations for PostgreSQL, safe when several replicas start at once.

Each component (family) lists its schema steps in order; a step is a list
of statements. `schema_migrations` in the store's schema records the
version (number of steps applied) of every component. Migrating holds a
session advisory lock keyed by the schema name, so replicas starting
together take turns: the first applies the missing steps, the others then
find nothing left to do. Each step commits in one transaction with its
version, so a failed step leaves the schema at the previous version.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

Migrations = Mapping[str, Sequence[Sequence[str]]]
"""Per component, its schema steps in order; a step is a list of statements."""


def fast_compression(table: str, *columns: str) -> str:
    """A statement having PostgreSQL compress `columns` of `table` with lz4 where it can.

    PostgreSQL compresses each value over about 2 KB before storing it. With
    its default method (pglz) a 2 MB record costs the database about 40 ms
    of CPU to write, with lz4 under 1 ms, for about a quarter more space:
    on a machine whose cores the database shares with statekeeper, that CPU
    is taken from every other caller. A server built without lz4, or older
    than PostgreSQL 14, keeps pglz (the statement then changes nothing).
    Values already stored keep their method; both stay readable.
    """
    alter = f"ALTER TABLE {table} " + ", ".join(
        f"ALTER COLUMN {column} SET COMPRESSION lz4" for column in columns
    )
    return (
        f"DO $$ BEGIN EXECUTE '{alter}';"
        " EXCEPTION WHEN feature_not_supported OR syntax_error THEN NULL; END $$"
    )


class SchemaTooNewError(RuntimeError):
    """The schema was migrated by a newer statekeeper."""


def migration_lock_key(schema: str) -> int:
    """The advisory lock (a signed 64-bit key) that serialises migrations of `schema`."""
    digest = hashlib.blake2b(f"statekeeper migrate {schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def migrate(
    conn: asyncpg.Connection[asyncpg.Record], schema: str, migrations: Migrations
) -> None:
    """Create `schema` if needed and bring every component to its newest version.

    `conn` must have `schema` alone on its search_path and no statement
    timeout (waiting for another replica's migration may take a while).
    Raises SchemaTooNewError if a component is newer than `migrations`.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", migration_lock_key(schema))
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
            " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        for component, steps in migrations.items():
            await _migrate_component(conn, schema, component, steps)
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", migration_lock_key(schema))


async def _migrate_component(
    conn: asyncpg.Connection[asyncpg.Record],
    schema: str,
    component: str,
    steps: Sequence[Sequence[str]],
) -> None:
    current = await conn.fetchval(
        f'SELECT version FROM "{schema}".schema_migrations WHERE component = $1', component
    )
    current = current or 0
    if current > len(steps):
        raise SchemaTooNewError(
            f"the {component} schema in {schema} is at version {current}, newer than this "
            f"statekeeper knows ({len(steps)}); upgrade statekeeper"
        )
    for version in range(current + 1, len(steps) + 1):
        async with conn.transaction():
            for statement in steps[version - 1]:
                await conn.execute(statement)
            await conn.execute(
                f'INSERT INTO "{schema}".schema_migrations (component, version) VALUES ($1, $2)'
                " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                component,
                version,
            )
        log.info("migrated %s schema in %s to version %d", component, schema, version)
