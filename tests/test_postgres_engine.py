"""The PostgreSQL engine: options from URL and settings, and failures as UNAVAILABLE."""

from __future__ import annotations

import asyncpg
import pytest

from statekeeper_server.config import Settings
from statekeeper_server.errors import Unavailable
from statekeeper_server.stores import StoreURLError, open_store
from statekeeper_server.stores.postgres.engine import PostgresEngine, PostgresOptions
from tests.postgres_harness import open_engine, terminate_backend
from tests.test_store_faults import assert_plain

BASE = "postgresql://app:secret@db.example:5433/state"


def test_url_parameters_win_over_settings() -> None:
    settings = Settings.model_construct(
        postgres_schema="from_settings", postgres_pool_size=3, postgres_statement_timeout=9
    )
    options = PostgresOptions.from_url(
        f"{BASE}?schema=from_url&pool_size=7&statement_timeout=1.5&connect_timeout=2", settings
    )
    assert (options.schema, options.pool_size) == ("from_url", 7)
    assert (options.statement_timeout, options.connect_timeout) == (1.5, 2)
    assert options.server_settings["statement_timeout"] == "1500"
    assert options.server_settings["search_path"] == "from_url"


def test_settings_apply_when_the_url_is_silent() -> None:
    settings = Settings.model_construct(
        postgres_schema="tenant_a", postgres_pool_size=4, postgres_statement_timeout=0
    )
    options = PostgresOptions.from_url(BASE, settings)
    assert (options.schema, options.pool_size, options.statement_timeout) == ("tenant_a", 4, 0)
    assert options.channel == "tenant_a_changes"


def test_other_url_parameters_reach_the_driver_and_own_ones_do_not() -> None:
    options = PostgresOptions.from_url(
        f"{BASE}?sslmode=disable&schema=s1&application_name=replica-1", Settings.model_construct()
    )
    assert options.dsn == f"{BASE}?sslmode=disable&application_name=replica-1"
    assert "application_name" not in options.server_settings


def test_connections_name_themselves_unless_the_url_does() -> None:
    options = PostgresOptions.from_url(BASE, Settings.model_construct())
    assert options.server_settings["application_name"] == "statekeeper"


@pytest.mark.parametrize(
    "query",
    [
        "schema=Bad-Name",
        "schema=1abc",
        "pool_size=0",
        "pool_size=2.5",
        "statement_timeout=-1",
        "connect_timeout=x",
    ],
)
def test_invalid_options_are_refused_naming_them(query: str) -> None:
    with pytest.raises(StoreURLError, match=query.split("=")[0]):
        PostgresOptions.from_url(f"{BASE}?{query}", Settings.model_construct())


async def test_an_unknown_store_url_is_named_by_its_scheme_alone() -> None:
    with pytest.raises(StoreURLError) as raised:
        await open_store("postgresq://app:secret@db.example/state")
    assert "'postgresq'" in str(raised.value)
    assert "secret" not in str(raised.value)


async def test_the_postgres_scheme_opens_the_same_store(postgres_url: str) -> None:
    store = await open_store(postgres_url.replace("postgresql://", "postgres://", 1))
    try:
        await store.ping()
    finally:
        await store.close()


async def test_a_statement_past_the_timeout_is_unavailable_with_store_timeout(
    postgres_url: str,
) -> None:
    async with open_engine(f"{postgres_url}&statement_timeout=0.05") as engine:
        with pytest.raises(Unavailable) as raised:
            await engine.fetchval("SELECT pg_sleep(5)")
        assert raised.value.reason == "STORE_TIMEOUT"
        assert_plain(raised.value.message)


async def test_a_connection_killed_mid_transaction_is_unavailable_and_then_replaced(
    postgres_url: str,
) -> None:
    async with open_engine(postgres_url) as engine:
        with pytest.raises(Unavailable) as raised:
            await run_after_own_backend_is_terminated(engine)
        assert raised.value.reason == "STORE_UNAVAILABLE"
        assert_plain(raised.value.message)
        assert await engine.fetchval("SELECT 1") == 1


async def run_after_own_backend_is_terminated(engine: PostgresEngine) -> None:
    async with engine.transaction() as tx:
        await terminate_backend(await tx.conn.fetchval("SELECT pg_backend_pid()"))
        await tx.conn.fetchval("SELECT 1")


async def test_a_faulty_statement_is_not_disguised_as_unavailability(postgres_url: str) -> None:
    async with open_engine(postgres_url) as engine:
        with pytest.raises(asyncpg.exceptions.UndefinedTableError):
            await engine.fetch("SELECT * FROM no_such_table")


async def test_a_closed_engine_is_unavailable_with_store_closed(postgres_url: str) -> None:
    async with open_engine(postgres_url) as engine:
        await engine.ping()
    with pytest.raises(Unavailable) as raised:
        await engine.ping()
    assert raised.value.reason == "STORE_CLOSED"


async def test_an_unreachable_server_at_start_is_unavailable() -> None:
    with pytest.raises(Unavailable) as raised:
        await open_store("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    assert raised.value.reason == "STORE_UNAVAILABLE"
    assert_plain(raised.value.message)


async def test_a_connection_goes_back_to_the_pool_without_another_round_trip(
    postgres_url: str,
) -> None:
    async with open_engine(postgres_url) as engine:
        sent: list[str] = []
        async with engine.transaction() as tx:
            tx.conn.add_query_logger(lambda record: sent.append(record.query))
            await tx.conn.fetchval("SELECT 1")
        assert sent == ["SELECT 1", "COMMIT;"]
