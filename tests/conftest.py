"""Fixtures shared by the whole suite.

`store` is parametrized over every backend: a new backend joins the
conformance suite by adding one entry to BACKENDS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pytest

from statekeeper_server.stores import Store, open_store
from tests.postgres_harness import postgres_schema

StoreFactory = Callable[[Path], AbstractContextManager[str]]
"""Makes the URL of a fresh store and removes the store on exit."""

BACKENDS: dict[str, StoreFactory] = {
    "memory": lambda tmp: nullcontext("memory:"),
    "file": lambda tmp: nullcontext(f"file:{tmp / 'statekeeper.db'}"),
    "postgres": lambda tmp: postgres_schema(),
}


@pytest.fixture(params=sorted(BACKENDS))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, empty store of each backend."""
    with BACKENDS[request.param](tmp_path) as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a fresh PostgreSQL schema, for tests of that backend alone."""
    with postgres_schema() as url:
        yield url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """A fresh store of each backend, closed after the test."""
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()
