"""What the console's HTTP-level tests share: a server with its console on the
memory store, a gRPC client of it, a visitor's cookie-keeping session and the
helpers that read its pages."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pytest

import statekeeper
from statekeeper_server.app import Application
from tests.harness import running_app


@pytest.fixture
async def app() -> AsyncIterator[Application]:
    """A server on the memory store, its console on a free port of loopback."""
    async with running_app("memory:") as running:
        yield running


@pytest.fixture
async def client(app: Application) -> AsyncIterator[statekeeper.AsyncClient]:
    """A gRPC client of `app` in the default namespace."""
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}", token="") as grpc_client:
        yield grpc_client


def visitor(app: Application) -> aiohttp.ClientSession:
    """A new visitor of `app`'s console, keeping its cookies."""
    return aiohttp.ClientSession(
        base_url=f"http://127.0.0.1:{app.http_port}",
        cookie_jar=aiohttp.CookieJar(unsafe=True),  # keep cookies of an IP-address host
    )


@pytest.fixture
async def browser(app: Application) -> AsyncIterator[aiohttp.ClientSession]:
    """One visitor of `app`'s console."""
    async with visitor(app) as session:
        yield session


async def page(session: aiohttp.ClientSession, path: str, status: int = 200) -> str:
    """The HTML page at `path`, checked to answer `status`."""
    async with session.get(path) as response:
        text = await response.text()
        assert response.status == status, text
        assert response.content_type == "text/html"
        return text


def csrf_of(text: str) -> str:
    """The CSRF token of the page's forms."""
    found = re.search(r'name="csrf" value="([^"]+)"', text)
    assert found, "no CSRF token in the page"
    return found.group(1)
