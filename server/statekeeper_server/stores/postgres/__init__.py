"""The shared store: PostgreSQL, for several statekeeper replicas over one database.

Every replica migrates the schema at start (safely, under an advisory
lock), serves from a connection pool, and wakes its watchers after commits
made by any replica through LISTEN/NOTIFY.

A family lives in one module, `stores/postgres/<family>.py`, which holds its
`MIGRATIONS` (schema steps, each a list of statements; released steps are
never edited, new ones are appended) and a class implementing the family's
interface from `stores/<family>.py` over a `PostgresEngine`. The family is
registered below twice: its steps in `MIGRATIONS` under the family's name,
and its store in the `Store(...)` that `open_postgres_store` returns.
"""

from __future__ import annotations

from statekeeper_server.config import Settings
from statekeeper_server.notifier import Notifier
from statekeeper_server.stores import Store
from statekeeper_server.stores.postgres import (
    checkpoints,
    events,
    jobs,
    relays,
    snapshots,
    thread_checkpoints,
)
from statekeeper_server.stores.postgres.engine import (
    HEALTH_MIGRATIONS,
    PostgresEngine,
    PostgresOptions,
)
from statekeeper_server.stores.postgres.migrations import Migrations

MIGRATIONS: Migrations = {
    "checkpoints": checkpoints.MIGRATIONS,
    "thread_checkpoints": thread_checkpoints.MIGRATIONS,
    "events": events.MIGRATIONS,
    "jobs": jobs.MIGRATIONS,
    "relays": relays.MIGRATIONS,
    "snapshots": snapshots.MIGRATIONS,
    "health": HEALTH_MIGRATIONS,
}


async def open_postgres_store(url: str, settings: Settings | None = None) -> Store:
    """A Store on the PostgreSQL database at `url`, its schema migrated.

    Options come from the URL's query string, then from `settings` (see
    `PostgresOptions.from_url`). Raises Unavailable if the database cannot
    be reached, StoreURLError for a bad option.
    """
    options = PostgresOptions.from_url(url, settings or Settings.model_construct())
    notifier = Notifier()
    engine = PostgresEngine(options, MIGRATIONS, notifier)
    await engine.open()
    return Store(
        snapshots=snapshots.PostgresSnapshotStore(engine),
        checkpoints=checkpoints.PostgresCheckpointStore(engine),
        events=events.PostgresEventStore(engine),
        jobs=jobs.PostgresJobStore(engine),
        relays=relays.PostgresRelayStore(engine),
        threads=thread_checkpoints.PostgresThreadCheckpointStore(engine),
        notifier=notifier,
        close=engine.close,
        ping=engine.ping,
        check_writes=engine.check_writes,
    )
