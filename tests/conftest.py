"""Fixtures shared by the whole suite.

`store` is parametrized over every backend: a new backend joins the
conformance suite by adding one entry to BACKENDS. With
`STATEKEEPER_TEST_AUTH=tokens`, every test not marked `own_access_control`
runs with access control on (tests/suite_access.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pytest

from statekeeper_server.stores import Store, open_store
from tests import suite_access
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{suite_access.MARKER}: the test configures access control itself or needs a"
        f" server without it; {suite_access.MODE_ENV} leaves it as it is",
    )
    suite_access.requested()  # an unknown mode stops the run before any test


@pytest.fixture(scope="session")
def suite_tokens(tmp_path_factory: pytest.TempPathFactory) -> suite_access.SuiteAccess:
    """The tokens file and token of the run with access control on."""
    return suite_access.create(tmp_path_factory.mktemp("suite-access"))


@pytest.fixture(autouse=True)
def suite_access_for_test(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the run with access control on, the test's servers demand the suite's token and
    its clients send it (not for tests marked `own_access_control`)."""
    if not suite_access.requested() or request.node.get_closest_marker(suite_access.MARKER):
        return
    suite_access.enable(request.getfixturevalue("suite_tokens"), monkeypatch)
