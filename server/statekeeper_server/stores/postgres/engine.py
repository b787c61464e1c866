"""PostgreSQL through an asyncpg pool, with every database failure mapped.

Families run their SQL through `PostgresEngine.transaction()` or the
one-statement helpers (`fetch`, `fetchrow`, `fetchval`, `execute`). All of
them turn a failure of the database, or of the connection to it, into
`Unavailable` (reason STORE_UNAVAILABLE; STORE_TIMEOUT for a statement
that ran past the statement timeout; STORE_CONFLICT for a deadlock or
serialization failure), so callers see UNAVAILABLE and never INTERNAL while
PostgreSQL is down. The pool replaces closed connections on the next call,
so the store serves again by itself once the database is back.

Options come from the URL's query string (`schema`, `pool_size`,
`statement_timeout`, `connect_timeout`, in seconds), falling back to the
`postgres_*` settings; every other query parameter goes to asyncpg as in a
libpq URL (`sslmode`, ...) or as a server setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import asyncpg

from statekeeper_server.config import Settings
from statekeeper_server.errors import ServiceError, Unavailable
from statekeeper_server.notifier import Notifier
from statekeeper_server.stores import StoreURLError
from statekeeper_server.stores.postgres.migrations import Migrations, migrate
from statekeeper_server.stores.postgres.notify import Listener, close_quietly, encode_payload

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

SCHEMA_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,49}")
"""Schema names: lowercase, short enough that `<schema>_changes` is a valid channel."""

URL_OPTIONS = ("schema", "pool_size", "statement_timeout", "connect_timeout")
"""Query parameters of the store URL read by statekeeper, not passed to asyncpg."""

Isolation = Literal["read_committed", "repeatable_read", "serializable"]


@dataclass(frozen=True)
class PostgresOptions:
    """How to reach the database and how to use it."""

    dsn: str
    """The URL for asyncpg, without statekeeper's own query parameters."""
    schema: str
    pool_size: int
    statement_timeout: float
    """Seconds; 0 means no limit."""
    connect_timeout: float
    server_settings: Mapping[str, str]
    """Session settings of every connection (search_path, statement_timeout, ...)."""

    @property
    def channel(self) -> str:
        """The NOTIFY channel of this schema (one per schema, so stores never cross)."""
        return f"{self.schema}_changes"

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> PostgresOptions:
        """Options from `url`'s query string, falling back to `settings`.

        Raises StoreURLError naming the parameter that is invalid.
        """
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        own = {name: value for name, value in query if name in URL_OPTIONS}
        passed = [(name, value) for name, value in query if name not in URL_OPTIONS]
        schema = own.get("schema", settings.postgres_schema)
        if SCHEMA_PATTERN.fullmatch(schema) is None:
            raise StoreURLError(
                f"PostgreSQL schema {schema!r} must be 1-50 characters of [a-z0-9_], "
                "not starting with a digit"
            )
        pool_size = int(
            _number(own, "pool_size", settings.postgres_pool_size, minimum=1, whole=True)
        )
        statement_timeout = _number(
            own, "statement_timeout", settings.postgres_statement_timeout, minimum=0
        )
        connect_timeout = _number(
            own, "connect_timeout", settings.postgres_connect_timeout, minimum=0.001
        )
        server_settings = {
            "search_path": schema,
            "statement_timeout": milliseconds(statement_timeout),
        }
        if not any(name == "application_name" for name, _ in passed):
            server_settings["application_name"] = "statekeeper"
        return cls(
            dsn=urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(passed))),
            schema=schema,
            pool_size=pool_size,
            statement_timeout=statement_timeout,
            connect_timeout=connect_timeout,
            server_settings=server_settings,
        )


def _number(
    own: Mapping[str, str], name: str, default: float, *, minimum: float, whole: bool = False
) -> float:
    """The URL's value of `name` (or `default`), checked to be a number >= minimum."""
    if name not in own:
        return default
    try:
        value = float(own[name])
    except ValueError:
        value = minimum - 1
    if not value >= minimum or (whole and not value.is_integer()):
        kind = "a whole number" if whole else "a number"
        raise StoreURLError(f"PostgreSQL URL parameter {name} must be {kind} >= {minimum}")
    return value


def milliseconds(seconds: float) -> str:
    """A PostgreSQL timeout setting for `seconds` (0: none; never rounded down to none)."""
    return str(max(1, round(seconds * 1000)) if seconds > 0 else 0)


_UNREACHABLE = (
    asyncpg.exceptions.PostgresConnectionError,  # connection lost or refused (SQLSTATE 08)
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up (57P0x)
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full (53)
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # reached a standby after a failover
    asyncpg.exceptions.InterfaceError,  # used a connection or pool that closed
    OSError,  # refused, reset, unreachable host
    asyncio.TimeoutError,  # no connection or answer in time
)
_CODE_FAULTS = (asyncpg.exceptions.DataError, asyncpg.exceptions.ClientConfigurationError)
"""InterfaceErrors that are mistakes of the code, not of the database."""


def store_error(exc: BaseException) -> ServiceError | None:
    """What a database failure means to the caller; None for a fault of the code."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, asyncpg.exceptions.QueryCanceledError):
        return Unavailable("STORE_TIMEOUT", f"the store cancelled a statement: {detail}")
    if isinstance(exc, asyncpg.exceptions.TransactionRollbackError):
        return Unavailable("STORE_CONFLICT", f"the store aborted a transaction: {detail}")
    if isinstance(exc, _UNREACHABLE) and not isinstance(exc, _CODE_FAULTS):
        return Unavailable("STORE_UNAVAILABLE", f"the store is unavailable: {detail}")
    return None


@contextlib.contextmanager
def mapped_errors() -> Iterator[None]:
    """Re-raise database failures inside the block as the caller's ServiceError."""
    try:
        yield
    except ServiceError:
        raise
    except Exception as exc:
        error = store_error(exc)
        if error is None:
            raise
        raise error from exc


class Transaction:
    """One open transaction: its connection, and wake-ups to send on commit."""

    def __init__(self, conn: PoolConnectionProxy[asyncpg.Record], channel: str, origin: str):
        self.conn = conn
        self._channel = channel
        self._origin = origin
        self.keys: dict[Hashable, None] = {}

    async def notify(self, key: Hashable) -> None:
        """Wake watchers of `key` on every replica if (and once) this transaction commits.

        `key` must be a tuple of strings and integers, such as
        ("events", namespace, run_id).
        """
        if key not in self.keys:
            await self.conn.execute("SELECT pg_notify($1, $2)", *self.notification(key))
            self.notified(key)

    def notification(self, key: Hashable) -> tuple[str, str]:
        """The channel and payload of `pg_notify` for `key`, for a statement that calls it
        itself (saving a round trip); then `notified(key)` once it did."""
        return self._channel, encode_payload(self._origin, key)

    def notified(self, key: Hashable) -> None:
        """Record that a statement of this transaction called `pg_notify` for `key`."""
        self.keys[key] = None


async def _keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Return a pooled connection as it is, without asyncpg's reset query.

    Nothing is left to undo: statekeeper never leaves session state on a
    pooled connection (no LISTEN, cursor, SET or session-level advisory
    lock; session settings come with the connection), and asyncpg still
    rolls back a transaction left open. The reset query would cost every
    call one more round trip to the database.
    """


class PostgresEngine:
    """An asyncpg pool over one schema, its migrations and its LISTEN connection.

    Guarantees: after `open` the schema is at the newest version of every
    component; every call either succeeds or raises a ServiceError
    (Unavailable for any database failure); watchers of a key are woken
    after every committed `Transaction.notify`, on this replica directly and
    on the others through the listener.
    """

    def __init__(self, options: PostgresOptions, migrations: Migrations, notifier: Notifier):
        self.options = options
        self.notifier = notifier
        self._migrations = migrations
        self._origin = secrets.token_hex(4)
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._closed = False
        self.listener = Listener(self._connect, options.channel, self._origin, notifier)

    async def open(self) -> None:
        """Migrate the schema, open the pool and start listening."""
        with mapped_errors():
            conn = await self._connect(statement_timeout=0)
            try:
                await migrate(conn, self.options.schema, self._migrations)
            finally:
                await close_quietly(conn)
            self._pool = await asyncpg.create_pool(
                self.options.dsn,
                min_size=1,
                max_size=self.options.pool_size,
                timeout=self.options.connect_timeout,
                command_timeout=self._command_timeout(),
                server_settings=dict(self.options.server_settings),
                reset=_keep_session,
            )
            try:
                await self.listener.start()
            except BaseException:
                self._pool.terminate()
                raise

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._closed:
            return
        self._closed = True
        await self.listener.close()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), self.options.connect_timeout)
            except (TimeoutError, Exception):
                self._pool.terminate()

    async def ping(self) -> None:
        """Raise Unavailable unless the database answers a query."""
        await self.fetchval("SELECT 1")

    @contextlib.asynccontextmanager
    async def transaction(
        self, *, isolation: Isolation = "read_committed", readonly: bool = False
    ) -> AsyncIterator[Transaction]:
        """A transaction that commits when the block ends and rolls back if it raises.

        Wake-ups requested with `Transaction.notify` are delivered only after
        the commit. Database failures inside the block surface as Unavailable.
        """
        pool = self._require_pool()
        with mapped_errors():
            async with pool.acquire() as conn:
                tx = Transaction(conn, self.options.channel, self._origin)
                async with conn.transaction(isolation=isolation, readonly=readonly):
                    yield tx
        for key in tx.keys:
            self.notifier.notify(key)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """The rows of one statement, run on its own."""
        pool = self._require_pool()
        with mapped_errors():
            return await pool.fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        """The first row of one statement, run on its own."""
        pool = self._require_pool()
        with mapped_errors():
            return await pool.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        """The first value of the first row of one statement, run on its own."""
        pool = self._require_pool()
        with mapped_errors():
            return await pool.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        """Run one statement on its own; its status tag, such as "DELETE 1"."""
        pool = self._require_pool()
        with mapped_errors():
            return await pool.execute(query, *args)

    # -- internals ---------------------------------------------------------

    def _require_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._closed or self._pool is None:
            raise Unavailable("STORE_CLOSED", "the store is shutting down")
        return self._pool

    def _command_timeout(self) -> float | None:
        """How long the client waits for any statement: the server's limit, then
        `connect_timeout` more for a network that silently drops packets."""
        if self.options.statement_timeout == 0:
            return None
        return self.options.statement_timeout + self.options.connect_timeout

    async def _connect(
        self, *, statement_timeout: float | None = None
    ) -> asyncpg.Connection[asyncpg.Record]:
        """A connection outside the pool (for migrations and LISTEN)."""
        server_settings = dict(self.options.server_settings)
        if statement_timeout is not None:
            server_settings["statement_timeout"] = milliseconds(statement_timeout)
        return await asyncpg.connect(
            self.options.dsn,
            timeout=self.options.connect_timeout,
            server_settings=server_settings,
        )
