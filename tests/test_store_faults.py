"""Store faults answered right: broken PostgreSQL connections are never reused, every
failure of the database or driver is UNAVAILABLE, and no message carries internals.

A connection killed, broken or left with a statement in flight is closed
instead of going back to the pool; the failure reaches the caller as
UNAVAILABLE with a reason code and plain words, while the driver's text goes
to the server log, once per burst rather than once per call.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
import grpc
import pytest

import statekeeper
from statekeeper.events import custom_event
from statekeeper_server.errors import NotFound, Unavailable
from statekeeper_server.stores import FailureLog
from statekeeper_server.stores.postgres import engine as postgres_engine
from statekeeper_server.stores.postgres.engine import PostgresEngine, store_error
from tests.harness import running_app
from tests.postgres_harness import SERVER_URL, open_engine, terminate_backend
from tests.private_postgres import PrivatePostgres, private_postgres

ENOUGH = 10.0
"""Generous bound on waiting for something that must happen (never a speed assertion)."""
POLL = 0.02


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Return once `check()` is true; fail if it is not within ENOUGH seconds."""
    for _ in range(int(ENOUGH / POLL)):
        if await check():
            return
        await asyncio.sleep(POLL)
    raise AssertionError(f"never: {what}")


_INTERNALS = {
    "SQL": re.compile(
        r"\b(SELECT|INSERT|UPDATE|DELETE|FROM|WHERE|VALUES|INTO|TABLE|BEGIN|COMMIT|ROLLBACK)\b"
        r"|\bpg_\w+|\$\d"
    ),
    "a class name": re.compile(r"[A-Z]\w*(Error|Exception)\b|asyncpg|sqlite|SQLITE_"),
    "a path": re.compile(r"\w/\w|/(tmp|var|home|usr|data)\b|\.db\b"),
    "driver text": re.compile(r"state \d|another operation|32767|[Ee]xpression tree"),
}


def assert_plain(message: str) -> None:
    """`message` says what happened without SQL, class names, paths or driver text."""
    assert message.strip(), "the message is empty"
    for what, pattern in _INTERNALS.items():
        assert not pattern.search(message), f"{message!r} carries {what}"


# -- what callers are told ------------------------------------------------------

DRIVER_FAILURES = [
    pytest.param(
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 15; another operation is in progress"
        ),
        "STORE_UNAVAILABLE",
        id="protocol-state-lost",
    ),
    pytest.param(
        asyncpg.exceptions.InterfaceError(
            "cannot perform operation: another operation is in progress"
        ),
        "STORE_UNAVAILABLE",
        id="connection-busy",
    ),
    pytest.param(
        asyncpg.exceptions.InterfaceError("the number of query arguments cannot exceed 32767"),
        "STORE_UNAVAILABLE",
        id="driver-limit",
    ),
    pytest.param(
        asyncpg.exceptions.ConnectionDoesNotExistError(
            "connection was closed in the middle of operation"
        ),
        "STORE_UNAVAILABLE",
        id="connection-lost",
    ),
    pytest.param(
        ConnectionRefusedError(111, "Connect call failed"), "STORE_UNAVAILABLE", id="refused"
    ),
    pytest.param(TimeoutError(), "STORE_UNAVAILABLE", id="no-answer"),
    pytest.param(
        asyncpg.exceptions.AdminShutdownError(
            "terminating connection due to administrator command"
        ),
        "STORE_UNAVAILABLE",
        id="shutting-down",
    ),
    pytest.param(
        asyncpg.exceptions.ReadOnlySQLTransactionError(
            "cannot execute INSERT in a read-only transaction"
        ),
        "STORE_UNAVAILABLE",
        id="read-only",
    ),
    pytest.param(
        asyncpg.exceptions.DiskFullError(
            'could not extend file "base/16384/2619": No space left on device'
        ),
        "STORE_UNAVAILABLE",
        id="disk-full",
    ),
    pytest.param(
        asyncpg.exceptions.InsufficientPrivilegeError("permission denied for table events"),
        "STORE_UNAVAILABLE",
        id="privilege-revoked",
    ),
    pytest.param(
        asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
        "STORE_TIMEOUT",
        id="statement-timeout",
    ),
    pytest.param(
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        "STORE_CONFLICT",
        id="deadlock",
    ),
]


@pytest.mark.parametrize(("failure", "reason"), DRIVER_FAILURES)
def test_a_driver_or_database_failure_is_unavailable_in_plain_words(
    failure: BaseException, reason: str
) -> None:
    error = store_error(failure)
    assert isinstance(error, Unavailable)
    assert error.reason == reason
    assert_plain(error.message)


def test_a_failure_is_logged_with_its_details_once_not_per_call(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_engine, "failures", FailureLog(postgres_engine.log))
    failure = asyncpg.exceptions.ReadOnlySQLTransactionError(
        "cannot execute UPDATE in a read-only transaction"
    )
    with caplog.at_level(logging.WARNING):
        for _ in range(1000):
            store_error(failure)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1
    assert "ReadOnlySQLTransactionError: cannot execute UPDATE" in lines[0]


def test_failures_held_back_are_counted_in_the_next_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = FailureLog(logging.getLogger("test.failures"), every=0.05)
    with caplog.at_level(logging.WARNING):
        for _ in range(10):
            failures.report("the disk is full", "ENOSPC")
        time.sleep(0.06)
        failures.report("the disk is full", "ENOSPC")
    assert [record.getMessage() for record in caplog.records] == [
        "the disk is full: ENOSPC",
        "the disk is full: ENOSPC (and 9 more like it since the last line)",
    ]


def test_a_faulty_argument_is_left_to_surface_as_a_fault_of_the_code() -> None:
    assert store_error(asyncpg.exceptions.DataError("invalid input for query argument $1")) is None


# -- broken connections are never reused ---------------------------------------


@pytest.fixture
def one_connection_url(postgres_url: str) -> str:
    """The test schema through a pool of one connection, so "the next call" gets the
    connection the last one returned, or a new one."""
    return f"{postgres_url}&pool_size=1&connect_timeout=5"


async def backend_pid(engine: PostgresEngine) -> int:
    return int(await engine.fetchval("SELECT pg_backend_pid()"))


async def test_a_pooled_connection_killed_between_calls_is_replaced(
    one_connection_url: str,
) -> None:
    async with open_engine(one_connection_url) as engine:
        killed = await backend_pid(engine)
        await terminate_backend(killed)
        [outcome] = await asyncio.gather(engine.fetchval("SELECT 1"), return_exceptions=True)
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, Unavailable)
            assert outcome.reason == "STORE_UNAVAILABLE"
            assert_plain(outcome.message)
        assert await backend_pid(engine) != killed


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        param
        for param in DRIVER_FAILURES
        if param.id in {"protocol-state-lost", "connection-busy", "no-answer"}
    ],
)
async def test_a_connection_that_failed_in_the_driver_is_closed_not_reused(
    one_connection_url: str, failure: BaseException, reason: str
) -> None:
    async with open_engine(one_connection_url) as engine:
        broken: list[int] = []
        with pytest.raises(Unavailable) as raised:
            await fail_in_a_transaction(engine, failure, broken)
        assert raised.value.reason == reason
        assert_plain(raised.value.message)
        assert await backend_pid(engine) != broken[0]


async def fail_in_a_transaction(
    engine: PostgresEngine, failure: BaseException, pid: list[int]
) -> None:
    """Raise `failure` inside a transaction, as the driver would; note the backend's pid."""
    async with engine.transaction() as tx:
        pid.append(int(await tx.conn.fetchval("SELECT pg_backend_pid()")))
        raise failure


async def test_a_connection_stays_pooled_after_errors_that_leave_it_idle(
    one_connection_url: str,
) -> None:
    """No reconnect (and no reset round trip) for a statement the server refused or a
    refusal of our own between statements."""
    async with open_engine(one_connection_url) as engine:
        kept = await backend_pid(engine)
        with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
            await engine.fetchval("SELECT 1 / 0")
        with pytest.raises(NotFound):
            async with engine.transaction():
                raise NotFound("NOT_FOUND", "no such thing")
        assert await backend_pid(engine) == kept


async def statements_still_running(pattern: str) -> int:
    """How many backends run a statement matching `pattern`."""
    conn = await asyncpg.connect(SERVER_URL, timeout=10)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE state = 'active' AND query LIKE $1 AND pid <> pg_backend_pid()",
                pattern,
            )
        )
    finally:
        await conn.close()


async def until_no_statement_runs(pattern: str) -> None:
    async def none_runs() -> bool:
        return await statements_still_running(pattern) == 0

    await eventually(none_runs, f"no statement like {pattern} runs")


LOCK_KEY = 817_263_541


async def test_calls_cancelled_while_their_statements_wait_leave_no_busy_connection(
    postgres_url: str,
) -> None:
    async with open_engine(f"{postgres_url}&pool_size=2") as engine:
        holder = await asyncpg.connect(SERVER_URL, timeout=10)
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
            waiting = [
                asyncio.create_task(
                    engine.fetchval("SELECT pg_advisory_xact_lock($1) /* waits */", LOCK_KEY)
                )
                for _ in range(2)
            ]

            async def both_wait() -> bool:
                return await statements_still_running("%/* waits */%") == 2

            await eventually(both_wait, "both statements wait for the lock")
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
            # The cancelled statements are stopped on the server, not left waiting.
            await until_no_statement_runs("%/* waits */%")
        finally:
            await holder.close()
        results = await asyncio.gather(*(engine.fetchval("SELECT $1::int", n) for n in range(20)))
        assert results == list(range(20))


async def test_a_call_that_times_out_mid_fetch_leaves_no_busy_connection(
    postgres_url: str,
) -> None:
    async with open_engine(f"{postgres_url}&pool_size=1") as engine:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(engine.fetchval("SELECT pg_sleep(30) /* sleeps */"), 0.2)
        await until_no_statement_runs("%/* sleeps */%")
        for n in range(10):
            assert await engine.fetchval("SELECT $1::int", n) == n


# -- a real restart ------------------------------------------------------------


@pytest.fixture(scope="module")
def own_server() -> Iterator[PrivatePostgres]:
    """A PostgreSQL of this module's own: restarting the shared one would fail other tests."""
    with private_postgres() as server:
        yield server


async def test_restarts_of_postgresql_under_appends_give_only_ok_or_unavailable(
    own_server: PrivatePostgres,
) -> None:
    url = own_server.url("sk_restart") + "&connect_timeout=2&pool_size=4"
    outcomes: Counter[grpc.StatusCode] = Counter()
    messages: set[str] = set()
    done = asyncio.Event()

    async with (
        running_app(url, health_check_interval=0.1) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}", timeout=20) as client,
    ):

        async def append_until_done(run_id: str) -> None:
            while not done.is_set():
                try:
                    await client.events.append(run_id, custom_event("tick"))
                except grpc.aio.AioRpcError as error:
                    outcomes[error.code()] += 1
                    messages.add(error.details() or "")
                    await asyncio.sleep(0.01)
                else:
                    outcomes[grpc.StatusCode.OK] += 1

        async def appends_succeed() -> None:
            wanted = outcomes[grpc.StatusCode.OK] + 30

            async def served() -> bool:
                return outcomes[grpc.StatusCode.OK] >= wanted

            await eventually(served, "appends succeed")

        appenders = [asyncio.create_task(append_until_done(f"run-{n}")) for n in range(6)]
        for _ in range(3):
            await appends_succeed()
            await asyncio.to_thread(own_server.restart)
        await appends_succeed()
        done.set()
        await asyncio.gather(*appenders)

    assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, outcomes
    for message in messages:
        assert_plain(message)
