"""The PostgreSQL of the test machine: a fresh schema per test, and outages on demand.

The server is `STATEKEEPER_TEST_POSTGRES` (default
postgresql://postgres@127.0.0.1:5432/test). Each test gets its own schema,
dropped afterwards. When no server answers, PostgreSQL tests skip with the
reason, except in CI (`CI=true`), where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import asyncpg

from statekeeper_server.config import Settings
from statekeeper_server.notifier import Notifier
from statekeeper_server.stores.postgres import MIGRATIONS
from statekeeper_server.stores.postgres.engine import PostgresEngine, PostgresOptions
from statekeeper_server.stores.postgres.migrations import Migrations
from tests.unavailable import skip_or_fail

T = TypeVar("T")

SERVER_URL = os.environ.get(
    "STATEKEEPER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)

_server_problem: list[str] = []
"""Why the server cannot be used (probed once per test session); empty if it can."""


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on its own loop in another thread.

    Lets synchronous fixtures talk to PostgreSQL without touching the event
    loop of the test they serve.
    """
    with ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, coro).result()


async def _probe() -> str:
    try:
        conn = await asyncpg.connect(SERVER_URL, timeout=5)
    except Exception as exc:
        return f"no PostgreSQL answers at {SERVER_URL} ({exc}); set STATEKEEPER_TEST_POSTGRES"
    await conn.close()
    return ""


def require_server() -> None:
    """Skip the test (fail it in CI) unless the test server answers."""
    if not _server_problem:
        _server_problem.append(run_sync(_probe()))
    problem = _server_problem[0]
    if problem:
        skip_or_fail(problem)


def schema_url(schema: str, *, port: int | None = None) -> str:
    """The store URL of `schema` on the test server (through `port` on loopback if given)."""
    parts = urllib.parse.urlsplit(SERVER_URL)
    if port is not None:
        credentials = parts.netloc.rpartition("@")[0]
        parts = parts._replace(netloc=f"{credentials}@127.0.0.1:{port}".lstrip("@"))
    query = [*urllib.parse.parse_qsl(parts.query), ("schema", schema)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


async def drop_schema(schema: str) -> None:
    """Drop `schema` and everything in it."""
    conn = await asyncpg.connect(SERVER_URL, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """The URL of a fresh schema on the test server, dropped on exit."""
    require_server()
    schema = f"sk_test_{secrets.token_hex(6)}"
    try:
        yield schema_url(schema)
    finally:
        run_sync(drop_schema(schema))


async def terminate_backend(pid: int) -> None:
    """End the server process of one connection, as an administrator would."""
    conn = await asyncpg.connect(SERVER_URL, timeout=10)
    try:
        await conn.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


class TcpProxy:
    """A loopback TCP relay to the test server that can go down and come back.

    `stop` refuses new connections and resets every open one, as a database
    host that vanished would; `start` accepts again on the same port.
    `silence` keeps every connection open but relays nothing, as a network
    that drops packets would, until `resume`.
    """

    def __init__(self) -> None:
        target = urllib.parse.urlsplit(SERVER_URL)
        self._target = (target.hostname or "127.0.0.1", target.port or 5432)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    def silence(self) -> None:
        """Hold every byte in either direction; connections stay open."""
        self._flowing.clear()

    def resume(self) -> None:
        """Relay again, starting with what was held."""
        self._flowing.set()

    async def start(self) -> None:
        """Accept connections on `port` (a free one the first time)."""
        self._server = await asyncio.start_server(
            self._relay, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting and reset every relayed connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[TcpProxy]:
        """The proxy, started, stopped on exit."""
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    async def _relay(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server = await asyncio.open_connection(*self._target)
        except OSError:
            client.transport.abort()
            return
        self._open.update((client, server))
        await asyncio.gather(
            self._pipe(client_reader, server),
            self._pipe(server_reader, client),
            return_exceptions=True,
        )
        for writer in (client, server):
            self._open.discard(writer)
            writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self._flowing.wait()
            writer.write(data)
            await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def open_engine(
    url: str, migrations: Migrations | None = None, notifier: Notifier | None = None
) -> AsyncIterator[PostgresEngine]:
    """An open PostgresEngine on `url` (the store's own migrations by default)."""
    options = PostgresOptions.from_url(url, Settings.model_construct())
    engine = PostgresEngine(
        options, MIGRATIONS if migrations is None else migrations, notifier or Notifier()
    )
    await engine.open()
    try:
        yield engine
    finally:
        await engine.close()
