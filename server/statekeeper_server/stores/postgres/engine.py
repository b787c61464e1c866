"""PostgreSQL through an asyncpg pool, with every database failure mapped.

Families run their SQL through `PostgresEngine.transaction()` or the
one-statement helpers (`fetch`, `fetchrow`, `fetchval`, `execute`). All of
them turn a failure of the database, of the connection to it or of the
driver into `Unavailable` (reason STORE_UNAVAILABLE; STORE_TIMEOUT for a
statement that ran past the statement timeout; STORE_CONFLICT for a deadlock
or serialization failure), so callers see UNAVAILABLE and never INTERNAL
while PostgreSQL is down or restarting. The message says what happened in
plain words; the driver's text goes to the server log (`store_error`).

A connection goes back to the pool only when it is certainly waiting for
its next statement (see `_connection`); one that may be in any other state
(lost, broken by a protocol error, or with a statement still in flight
because the caller was cancelled or timed out) is closed instead, so no
call is ever handed a busy or broken connection. The pool replaces closed
connections on the next call, so the store serves again by itself once the
database is back.

Point reads never wait for the history reads of streams: a statement or
transaction flagged `stream` (a replay or a watch reading its next page;
there may be thousands at once) first takes one of `stream_connections`
slots, at most half the pool, so the other half always serves point reads
and writes however many streams catch up.

Options come from the URL's query string (`schema`, `pool_size`,
`statement_timeout`, `connect_timeout`, in seconds), falling back to the
`postgres_*` settings; every other query parameter goes to asyncpg as in a
libpq URL (`sslmode`, ...) or as a server setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import asyncpg

from statekeeper_server.config import Settings
from statekeeper_server.errors import ServiceError, Unavailable
from statekeeper_server.notifier import Notifier
from statekeeper_server.observability import store_metrics, tracing
from statekeeper_server.stores import FailureLog, StoreURLError
from statekeeper_server.stores.postgres.migrations import Migrations, migrate
from statekeeper_server.stores.postgres.notify import Listener, close_quietly, encode_payload

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger(__name__)
failures = FailureLog(log)

SCHEMA_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,49}")
"""Schema names: lowercase, short enough that `<schema>_changes` is a valid channel."""

URL_OPTIONS = ("schema", "pool_size", "statement_timeout", "connect_timeout")
"""Query parameters of the store URL read by statekeeper, not passed to asyncpg."""

Isolation = Literal["read_committed", "repeatable_read", "serializable"]

HEALTH_MIGRATIONS = [
    [
        """CREATE TABLE health_probe (
            id SMALLINT PRIMARY KEY CHECK (id = 1),
            written_at TIMESTAMPTZ NOT NULL
        )""",
    ],
]
"""Schema steps of the `health` component: the row `check_writes` writes.
A store registers them with its migrations."""

_WRITE_PROBE = (
    "INSERT INTO health_probe (id, written_at) VALUES (1, now())"
    " ON CONFLICT (id) DO UPDATE SET written_at = excluded.written_at"
)


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
    def stream_connections(self) -> int:
        """Most pooled connections the reads of streams use at once: half the pool (at
        least one), leaving the rest to point reads and writes."""
        return max(1, self.pool_size // 2)

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


_CODE_FAULTS = (asyncpg.exceptions.DataError, asyncpg.exceptions.ClientConfigurationError)
"""Driver errors that are mistakes of the code (a wrong argument or option), not failures."""

_FAILURES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str, str], ...] = (
    (
        asyncpg.exceptions.QueryCanceledError,  # ran past statement_timeout (57014)
        "STORE_TIMEOUT",
        "a statement ran past the store's time limit",
    ),
    (
        asyncpg.exceptions.TransactionRollbackError,  # deadlock, serialization failure (40)
        "STORE_CONFLICT",
        "the store aborted a transaction that conflicted with another; nothing was changed",
    ),
    (
        asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby, reached after a failover
        "STORE_UNAVAILABLE",
        "the store's database accepts no writes",
    ),
    (
        asyncpg.exceptions.InsufficientResourcesError,  # disk full, out of memory (53)
        "STORE_UNAVAILABLE",
        "the store's database is out of disk space, memory or connections",
    ),
    (
        (
            asyncpg.exceptions.InsufficientPrivilegeError,  # 42501
            asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # bad credentials (28)
        ),
        "STORE_UNAVAILABLE",
        "the store's database refused access",
    ),
    (
        asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up (57P0x)
        "STORE_UNAVAILABLE",
        "the store's database is shutting down or starting up",
    ),
    (
        TimeoutError,  # no connection or answer in time (before OSError: it is one)
        "STORE_UNAVAILABLE",
        "the store's database did not answer in time",
    ),
    (
        (
            asyncpg.exceptions.PostgresConnectionError,  # connection lost or refused (08)
            OSError,  # refused, reset, unreachable host
        ),
        "STORE_UNAVAILABLE",
        "the store's database cannot be reached",
    ),
    (
        (
            asyncpg.exceptions.InterfaceError,  # used a connection that closed or is busy
            asyncpg.exceptions.InternalClientError,  # the driver lost track of the protocol
        ),
        "STORE_UNAVAILABLE",
        "the connection to the store's database broke",
    ),
)
"""Failures of the database, the connection or the driver: the reason and plain words
for each, first match wins."""

_ERROR_KINDS = {"STORE_TIMEOUT": "timeout", "STORE_CONFLICT": "conflict"}
"""The `kind` of statekeeper_store_errors_total per reason; any other is unavailable."""

_SERVER_SIDE_TROUBLE = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)
"""Errors the server reports about the connection itself rather than a statement."""


def store_error(exc: BaseException) -> ServiceError | None:
    """What a database failure means to the caller; None for a fault of the code.

    The caller gets a reason and plain words; the driver's text (which may
    quote SQL) goes to the server log, rate-limited by `failures`.
    """
    if isinstance(exc, _CODE_FAULTS):
        return None
    for kinds, reason, message in _FAILURES:
        if isinstance(exc, kinds):
            failures.report(message, f"{type(exc).__name__}: {exc}")
            store_metrics.store_error(_ERROR_KINDS.get(reason, "unavailable"))
            return Unavailable(reason, message)
    return None


def known_idle(conn: PoolConnectionProxy[asyncpg.Record], exc: BaseException | None) -> bool:
    """Whether `conn` is certainly waiting for its next statement, after a block of work
    on it ended with `exc` (None: it ended normally).

    It is when the block ended normally, or with an error our own code raised
    between statements (a ServiceError), or with an error the server reported
    about a statement (the server then says it is ready for the next one).
    Anything else (a lost connection, a protocol error, a timeout or a
    cancellation that may have left a statement in flight) makes it unknown.
    """
    if not _is_open(conn) or conn.is_in_transaction():
        return False
    if exc is None or isinstance(exc, ServiceError):
        return True
    if isinstance(exc, _SERVER_SIDE_TROUBLE) and not isinstance(
        exc, asyncpg.exceptions.QueryCanceledError
    ):
        return False
    return isinstance(exc, asyncpg.PostgresError)


def _is_open(conn: PoolConnectionProxy[asyncpg.Record]) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.exceptions.InterfaceError:
        # Already released: the connection ended and its cleanup gave the slot back.
        return False


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


_SPAN_ATTRIBUTES = {"db.system": "postgresql"}
_NO_SPAN = contextlib.nullcontext()


def _span(name: str) -> contextlib.AbstractContextManager[None]:
    """A child span of the traced call around database work (nothing while tracing is
    off, at the cost of one check)."""
    if tracing.tracer is None:
        return _NO_SPAN
    return tracing.store_span(name, _SPAN_ATTRIBUTES)


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
    call one more round trip to the database. Only connections known to be
    idle come back this way; any other is closed (see `_connection`).
    """


class PostgresEngine:
    """An asyncpg pool over one schema, its migrations and its LISTEN connection.

    Guarantees: after `open` the schema is at the newest version of every
    component; every call either succeeds or raises a ServiceError
    (Unavailable for any database failure); watchers of a key are woken
    after every committed `Transaction.notify`, on this replica directly and
    on the others through the listener; calls flagged `stream` hold at most
    `options.stream_connections` connections at once.
    """

    def __init__(self, options: PostgresOptions, migrations: Migrations, notifier: Notifier):
        self.options = options
        self.notifier = notifier
        self._migrations = migrations
        self._origin = secrets.token_hex(4)
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()
        """Discarded connections being closed (held here so the tasks live on)."""
        self._stream_slots = asyncio.Semaphore(options.stream_connections)
        self._waiters = 0
        """Calls waiting for a pooled connection now."""
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
        store_metrics.watch_pool(self.pool_state)

    def pool_state(self) -> store_metrics.PoolState:
        """The pool now: connections open, lent out, and calls waiting for one (no I/O)."""
        pool = self._pool
        if pool is None:
            return store_metrics.PoolState(0, 0, self._waiters)
        size = pool.get_size()
        return store_metrics.PoolState(size, size - pool.get_idle_size(), self._waiters)

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._closed:
            return
        self._closed = True
        store_metrics.unwatch_pool(self.pool_state)
        await self.listener.close()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), self.options.connect_timeout)
            except (TimeoutError, Exception):
                self._pool.terminate()

    async def ping(self) -> None:
        """Raise Unavailable unless the database answers a query."""
        await self.fetchval("SELECT 1")

    async def check_writes(self) -> None:
        """Commit one tiny write (the `health_probe` row); raise Unavailable if the
        database cannot, as a read-only standby or a database out of disk cannot.

        Needs the `health` component (HEALTH_MIGRATIONS) in the migrations.
        """
        await self.execute(_WRITE_PROBE)

    @contextlib.asynccontextmanager
    async def transaction(
        self,
        *,
        isolation: Isolation = "read_committed",
        readonly: bool = False,
        stream: bool = False,
    ) -> AsyncIterator[Transaction]:
        """A transaction that commits when the block ends and rolls back if it raises.

        Wake-ups requested with `Transaction.notify` are delivered only after
        the commit. Database failures inside the block surface as Unavailable.
        `stream` marks a stream's read (see the module).
        """
        with _span("postgresql transaction"), mapped_errors():
            async with self._connection(stream=stream) as conn:
                tx = Transaction(conn, self.options.channel, self._origin)
                began = time.perf_counter()
                async with conn.transaction(isolation=isolation, readonly=readonly):
                    yield tx
                    committing = time.perf_counter()
                if not readonly:
                    # Reached only once COMMIT returned; one transaction is one write.
                    committed = time.perf_counter()
                    store_metrics.observe_commit(1, committed - began, committed - committing)
        for key in tx.keys:
            self.notifier.notify(key)

    async def fetch(self, query: str, *args: Any, stream: bool = False) -> list[asyncpg.Record]:
        """The rows of one statement, run on its own; `stream` marks a stream's read (see
        the module)."""
        with _span("postgresql statement"), mapped_errors():
            async with self._connection(stream=stream) as conn:
                return await conn.fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        """The first row of one statement, run on its own."""
        with _span("postgresql statement"), mapped_errors():
            async with self._connection() as conn:
                return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        """The first value of the first row of one statement, run on its own."""
        with _span("postgresql statement"), mapped_errors():
            async with self._connection() as conn:
                return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        """Run one statement on its own; its status tag, such as "DELETE 1"."""
        with _span("postgresql statement"), mapped_errors():
            async with self._connection() as conn:
                return await conn.execute(query, *args)

    # -- internals ---------------------------------------------------------

    def _require_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._closed or self._pool is None:
            raise Unavailable("STORE_CLOSED", "the store is shutting down")
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(
        self, *, stream: bool = False
    ) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        """A pooled connection for the block, taken after one of the stream slots when
        `stream`; back to the pool only if `known_idle`.

        asyncpg's release finishes off a connection that is already closed and
        waits for a cancellation already requested; otherwise it trusts the
        reset to fail on a broken connection. Ours (`_keep_session`) sends
        nothing, so a connection whose protocol was left mid-operation would
        go back to the pool and fail the next call ("another operation is in
        progress"). Any connection that may be in such a state is closed
        instead, in the background: a statement still running is cancelled
        on the server first (asyncpg's close does that), so it holds no
        locks, then the connection ends, within `connect_timeout` or cut.
        """
        pool = self._require_pool()
        async with self._stream_slots if stream else contextlib.nullcontext():
            self._waiters += 1
            try:
                conn = await pool.acquire()
            finally:
                self._waiters -= 1
            try:
                yield conn
            except BaseException as exc:
                if known_idle(conn, exc):
                    await pool.release(conn)
                else:
                    self._discard(conn)
                raise
            if known_idle(conn, None):
                await pool.release(conn)
            else:
                self._discard(conn)

    def _discard(self, conn: PoolConnectionProxy[asyncpg.Record]) -> None:
        """Close `conn` for good; the pool opens a new one when it needs one."""
        if not _is_open(conn):
            # Finishes the cleanup (which gives the slot back to the pool) if nothing did yet.
            with contextlib.suppress(asyncpg.exceptions.InterfaceError):
                conn.terminate()
            return
        task = asyncio.get_running_loop().create_task(self._close(conn))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, conn: PoolConnectionProxy[asyncpg.Record]) -> None:
        try:
            await conn.close(timeout=self.options.connect_timeout)
        except Exception as exc:  # close() has cut the connection by then
            log.debug("closed a discarded connection abruptly: %s", exc)

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
