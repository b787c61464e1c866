"""Fixtures shared by the whole suite.

`store` is parametrized over every backend: a new backend joins the
conformance suite by adding one entry to BACKENDS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from statekeeper_server.stores import Store, open_store

StoreFactory = Callable[[Path], str]

BACKENDS: dict[str, StoreFactory] = {
    "memory": lambda tmp: "memory:",
    "file": lambda tmp: f"file:{tmp / 'statekeeper.db'}",
}


@pytest.fixture(params=sorted(BACKENDS))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty store of each backend."""
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """A fresh store of each backend, closed after the test."""
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()
