"""SQLite off the event loop: one writer thread with group commit, and readers.

Writes are functions of a `sqlite3.Connection` queued to the writer thread.
The writer takes every write waiting in its queue, runs each in its own
SAVEPOINT inside one transaction, and commits once: with
`synchronous=FULL` that is one fsync for all of them. A write that raises is
rolled back alone; the others still commit. A caller's future resolves only
after COMMIT returned, so an acknowledged write is on disk.

A write that makes all its checks before its first change (`checks_first`)
runs without a savepoint: its ServiceError leaves nothing to undo. Should it
fail any other way, the whole group is rolled back and run again with a
savepoint around every write. Every statement costs the writer thread the
GIL, which it then has to win back from a busy event loop, so the two
statements a savepoint takes are worth saving on the hottest writes.

Reads run on reader threads with their own connections (WAL lets them read
while the writer writes), each read in its own transaction so it sees one
consistent snapshot. The in-memory database has no readers: its reads run on
the writer thread between batches, outside any transaction.

Point reads never queue behind the history reads of streams. A read flagged
`stream` (a replay or a watch reading its next page: there may be thousands
of them at once) runs on a reader thread of its own (STREAM_READER_THREADS),
point reads (a load, a listing, a job) on the others (READER_THREADS); so
however many streams catch up, a point read waits for no stream's read. In
memory, the writer thread runs at most one stream read between two batches
of writes and point reads, so a point read waits for one stream read at most.

A write may name what follows its commit (`on_commit`, waking whoever waits
for the change): it runs on the event loop in the same callback that
delivers the group's results, before any writer resumes, so nobody waiting
for a commit pays for an extra turn of the loop.

A failure of SQLite reaches the caller as `Unavailable` with a plain message
chosen by SQLite's error code (a full disk, an unwritable or damaged file, a
lock held too long); SQLite's own text goes to the server log only.

One process serves a database file: `open` takes an exclusive lock on the
file itself (see `_lock_database`), so a second server is refused whatever
name it reaches the file by.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from statekeeper_server import compat
from statekeeper_server.errors import ServiceError, Unavailable
from statekeeper_server.observability import store_metrics, tracing
from statekeeper_server.stores import FailureLog

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], Any]
OnCommit = Callable[[Any], None]
Migrations = Mapping[str, Sequence[Sequence[str]]]
"""Per component, its schema steps in order; a step is a list of statements."""

log = logging.getLogger(__name__)
failures = FailureLog(log)

MAX_BATCH = 512
READER_THREADS = 2
"""Threads serving point reads of a file database."""
STREAM_READER_THREADS = 1
"""Threads serving the reads of streams (`read(..., stream=True)`) of a file database."""

HEALTH_MIGRATIONS: Sequence[Sequence[str]] = [
    [
        """CREATE TABLE health_probe (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            written_at INTEGER NOT NULL
        )""",
    ],
]
"""Schema steps of the `health` component: the row `check_writes` writes.
A store registers them with its migrations."""

_WRITE_PROBE = (
    "INSERT INTO health_probe (id, written_at) VALUES (1, ?)"
    " ON CONFLICT (id) DO UPDATE SET written_at = excluded.written_at"
)


class StoreInUseError(RuntimeError):
    """Another process holds the database file."""


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer statekeeper."""


@dataclass(slots=True)
class _Op:
    work: Work
    future: asyncio.Future[Any]
    is_read: bool
    checks_first: bool
    is_stream: bool = False
    on_commit: OnCommit | None = None
    outcome: tuple[bool, Any] = (False, None)


_STOP = object()

_COMMIT_SPAN = {"db.system": "sqlite", "db.operation.name": "COMMIT"}


_FAILURES: dict[int, tuple[str, str]] = {
    compat.SQLITE_FULL: ("STORE_UNAVAILABLE", "the store's disk is full"),
    compat.SQLITE_IOERR: ("STORE_UNAVAILABLE", "the store cannot read or write its database"),
    compat.SQLITE_READONLY: ("STORE_UNAVAILABLE", "the store's database cannot be written"),
    compat.SQLITE_CANTOPEN: ("STORE_UNAVAILABLE", "the store cannot open its database"),
    compat.SQLITE_PERM: ("STORE_UNAVAILABLE", "the store may not use its database"),
    compat.SQLITE_CORRUPT: ("STORE_UNAVAILABLE", "the store's database is damaged"),
    compat.SQLITE_NOTADB: ("STORE_UNAVAILABLE", "the store's database is damaged"),
    compat.SQLITE_NOMEM: ("STORE_UNAVAILABLE", "the store ran out of memory"),
    compat.SQLITE_BUSY: ("STORE_TIMEOUT", "the store's database stayed locked too long"),
    compat.SQLITE_LOCKED: ("STORE_TIMEOUT", "the store's database stayed locked too long"),
}
"""Plain words for SQLite's primary error codes; any other code is a failed statement."""

_FAILED_STATEMENT = ("STORE_UNAVAILABLE", "the store failed to run a statement")

_ERROR_KINDS = {
    compat.SQLITE_BUSY: "timeout",
    compat.SQLITE_LOCKED: "timeout",
    compat.SQLITE_CORRUPT: "corrupt",
    compat.SQLITE_NOTADB: "corrupt",
}
"""The `kind` of statekeeper_store_errors_total per primary code; any other is unavailable."""


def _failure(exc: sqlite3.Error) -> tuple[str, str]:
    """The reason and plain words for `exc`; SQLite's own text goes to the log."""
    code = compat.sqlite_error_code(exc)
    reason, message = _FAILURES.get(code & 0xFF, _FAILED_STATEMENT) if code else _FAILED_STATEMENT
    store_metrics.store_error(
        _ERROR_KINDS.get(code & 0xFF, "unavailable") if code else "unavailable"
    )
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    failures.report(message, f"{name}: {exc}")
    return reason, message


def _unavailable(exc: sqlite3.Error) -> ServiceError:
    """What `exc` means to the caller (see `_failure`)."""
    return Unavailable(*_failure(exc))


class SQLiteEngine:
    """Runs reads and writes of one SQLite database without blocking the loop.

    Guarantees: a write's result is delivered only after its transaction
    committed (durably, for a file); writes are applied in queue order;
    a failed write leaves no trace; a point read never waits behind more
    than one stream read (see the module).
    """

    def __init__(self, path: Path | None, migrations: Migrations) -> None:
        """`path` None means an in-memory database that lives with the engine."""
        self._path = path
        self._migrations = migrations
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._stream_readers: ThreadPoolExecutor | None = None
        self._reader_local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self.transactions = 0
        """Group transactions committed so far (for tests and benchmarks)."""
        self.rollbacks = 0
        """Group transactions rolled back so far: whatever the writer thread remembers of
        what it wrote is stale once this moves."""

    @property
    def path(self) -> Path | None:
        """The database file, or None in memory."""
        return self._path

    async def open(self) -> None:
        """Lock the file, open the connections and migrate the schema.

        Raises StoreInUseError if another process (or another engine of this
        one) serves the same file, by this name or any other.
        """
        self._loop = asyncio.get_running_loop()
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock_database(self._path)
        ready: asyncio.Future[None] = self._loop.create_future()
        self._writer = threading.Thread(
            target=self._run_writer, args=(ready,), name="sqlite-writer", daemon=True
        )
        self._writer.start()
        try:
            await ready
        except BaseException:
            self._release_lock()
            raise
        if self._path is not None:
            self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="sqlite-reader")
            self._stream_readers = ThreadPoolExecutor(
                STREAM_READER_THREADS, thread_name_prefix="sqlite-stream-reader"
            )

    async def write(
        self,
        work: Callable[[sqlite3.Connection], T],
        *,
        checks_first: bool = False,
        on_commit: Callable[[T], None] | None = None,
    ) -> T:
        """Run `work` in the next group transaction; return after COMMIT.

        `checks_first` promises that `work` raises a ServiceError only before
        its first change, so it needs no savepoint of its own. `on_commit`
        gets the result on the event loop once the write committed, before
        this call (or any other of the group) returns; never for a write
        that failed.
        """
        return cast(
            T,
            await self._submit(work, is_read=False, checks_first=checks_first, on_commit=on_commit),
        )

    async def check_writes(self) -> None:
        """Commit one tiny write through the writer, as every write goes.

        Returns once the write committed (and, for a file, was fsynced);
        raises Unavailable if it could not, as when the disk is full or the
        file cannot be written. Needs the `health` component
        (HEALTH_MIGRATIONS) in the engine's migrations.
        """
        await self.write(_write_probe, checks_first=True)

    async def read(self, work: Callable[[sqlite3.Connection], T], *, stream: bool = False) -> T:
        """Run `work` on a consistent snapshot of committed data.

        `stream` marks the read of a stream's next page: it runs beside point
        reads, never ahead of them (see the module).
        """
        readers = self._stream_readers if stream else self._readers
        if readers is None or self._closed:
            return cast(T, await self._submit(work, is_read=True, is_stream=stream))
        loop = self._loop
        assert loop is not None
        return cast(T, await loop.run_in_executor(readers, self._read_on_reader, work))

    async def close(self) -> None:
        """Finish queued writes, close every connection and release the file."""
        if self._closed:
            return
        self._closed = True
        for readers in (self._readers, self._stream_readers):
            if readers is not None:
                await asyncio.get_running_loop().run_in_executor(None, readers.shutdown, True)
        for conn in self._reader_conns:
            conn.close()
        if self._writer is not None:
            self._queue.put(_STOP)
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join)
        self._release_lock()

    # -- internals ---------------------------------------------------------

    async def _submit(
        self,
        work: Work,
        *,
        is_read: bool,
        is_stream: bool = False,
        checks_first: bool = False,
        on_commit: OnCommit | None = None,
    ) -> Any:
        if self._closed:
            raise Unavailable("STORE_CLOSED", "the store is shutting down")
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Op(work, future, is_read, checks_first, is_stream, on_commit))
        if is_read or tracing.tracer is None:
            return await future
        # The caller's wait for its write's group commit, in the caller's trace.
        with tracing.store_span("sqlite group commit", _COMMIT_SPAN):
            return await future

    def _connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        target = str(self._path) if self._path is not None else ":memory:"
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        if self._path is not None and not read_only:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot enable WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        if read_only:
            conn.execute("PRAGMA query_only = ON")
        return conn

    def _read_on_reader(self, work: Work) -> Any:
        conn: sqlite3.Connection | None = getattr(self._reader_local, "conn", None)
        if conn is None:
            try:
                conn = self._connect(read_only=True)
            except sqlite3.Error as exc:
                raise _unavailable(exc) from exc
            self._reader_local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        try:
            conn.execute("BEGIN")
            try:
                return work(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _roll_back(conn)
            raise _unavailable(exc) from exc

    def _run_writer(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            self._conn = self._connect()
            _migrate(self._conn, self._migrations)
        except BaseException as exc:
            # Closed here, before `open` releases the file lock (see _lock_database).
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            loop.call_soon_threadsafe(_settle, ready, (False, exc))
            return
        loop.call_soon_threadsafe(_settle, ready, (True, None))
        # Stream reads wait here, one run after each batch of writes and point reads.
        streams: deque[_Op] = deque()
        stopping = False
        while not stopping:
            batch: list[_Op] = []
            try:
                item = self._queue.get(block=not streams)
            except queue.Empty:
                item = None
            while item is not None:
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, _Op)
                if item.is_stream:
                    streams.append(item)
                else:
                    batch.append(item)
                    if len(batch) >= MAX_BATCH:
                        break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            if batch:
                self._run_batch(batch)
            if streams:
                self._run_reads([streams.popleft()])
        self._run_reads(list(streams))
        self._conn.close()

    def _run_batch(self, batch: list[_Op]) -> None:
        conn = self._conn
        assert conn is not None
        assert self._loop is not None
        writes = [op for op in batch if not op.is_read]
        if writes:
            try:
                began = time.perf_counter()
                if not _apply(conn, writes, guard_all=False):
                    conn.execute("ROLLBACK")
                    self.rollbacks += 1
                    _apply(conn, writes, guard_all=True)
                committing = time.perf_counter()
                conn.execute("COMMIT")
                committed = time.perf_counter()
                self.transactions += 1
                store_metrics.observe_commit(
                    len(writes),
                    committed - began,
                    committed - committing if self._path is not None else None,
                )
            except sqlite3.Error as exc:
                reason, message = _failure(exc)
                _roll_back(conn)
                self.rollbacks += 1
                for op in writes:
                    op.outcome = (False, Unavailable(reason, message))
        self._run_reads([op for op in batch if op.is_read], settle=False)
        self._loop.call_soon_threadsafe(_settle_all, batch)

    def _run_reads(self, reads: list[_Op], *, settle: bool = True) -> None:
        """Run `reads` on the writer's connection, outside any transaction; deliver their
        results unless the caller delivers them with its batch."""
        conn = self._conn
        assert conn is not None
        assert self._loop is not None
        for op in reads:
            op.outcome = _run_plain(conn, op.work)
        if settle and reads:
            self._loop.call_soon_threadsafe(_settle_all, reads)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _apply(conn: sqlite3.Connection, writes: list[_Op], *, guard_all: bool) -> bool:
    """Begin the group transaction and run `writes`, setting each one's outcome.

    False when a `checks_first` write failed other than with a ServiceError
    (it may have changed something): the caller rolls back and applies the
    group again with `guard_all`, a savepoint around every write.
    """
    conn.execute("BEGIN IMMEDIATE")
    for op in writes:
        if op.checks_first and not guard_all:
            try:
                op.outcome = (True, op.work(conn))
            except ServiceError as exc:
                op.outcome = (False, exc)
            except Exception:
                return False
        else:
            op.outcome = _run_in_savepoint(conn, op.work)
    return True


def _run_in_savepoint(conn: sqlite3.Connection, work: Work) -> tuple[bool, Any]:
    conn.execute("SAVEPOINT op")
    try:
        result = work(conn)
    except Exception as exc:
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        return False, _unavailable(exc) if isinstance(exc, sqlite3.Error) else exc
    conn.execute("RELEASE op")
    return True, result


def _run_plain(conn: sqlite3.Connection, work: Work) -> tuple[bool, Any]:
    try:
        return True, work(conn)
    except sqlite3.Error as exc:
        return False, _unavailable(exc)
    except Exception as exc:
        return False, exc


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.cancelled():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _settle_all(batch: list[_Op]) -> None:
    for op in batch:
        ok, value = op.outcome
        if ok and op.on_commit is not None:
            try:
                op.on_commit(value)
            except Exception:
                # The write is committed whatever its follow-up does: report, don't fail it.
                log.exception("the follow-up of a committed write failed")
    for op in batch:
        _settle(op.future, op.outcome)


def _roll_back(conn: sqlite3.Connection) -> None:
    """End the open transaction, if any, without letting a failure stop the writer."""
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        # SQLite rolls back by itself what it cannot keep; the next BEGIN tells.
        _failure(exc)


def _write_probe(conn: sqlite3.Connection) -> None:
    conn.execute(_WRITE_PROBE, (time.time_ns() // 1000,))


def _lock_database(path: Path) -> int:
    """Hold an exclusive lock on the database file itself; the descriptor holding it.

    The lock is taken on the file (its inode), not on a name beside it, so a
    second server is refused whether it names the file by the same path, a
    hard link or a symlink; each of those would otherwise open its own WAL
    and corrupt the store.

    It is a `flock` lock. SQLite locks the file with POSIX record locks
    (`fcntl`), which on Linux are independent of `flock` locks, so this one
    never gets in SQLite's way. But a process drops every POSIX lock it
    holds on a file when it closes any descriptor of that file, so the
    descriptor returned here must stay open until every SQLite connection
    to the file is closed, or closing it would silently drop SQLite's
    locks. (On NFS Linux emulates `flock` with POSIX locks; a file store
    does not work there anyway, WAL mode needs local shared memory.)
    """
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _flock_holder(fd)
        os.close(fd)
        raise StoreInUseError(
            f"{path} is in use by another statekeeper process"
            f"{f' (pid {holder})' if holder else ''}, perhaps under another name"
            " (a hard link or symlink); each file store is served by exactly one process"
        ) from None
    return fd


def _flock_holder(fd: int) -> int | None:
    """The pid holding a `flock` lock on the file of `fd`, from /proc/locks (Linux); None
    when it cannot tell."""
    info = os.fstat(fd)
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == device:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None


def _migrate(conn: sqlite3.Connection, migrations: Migrations) -> None:
    """Bring every component's schema to its newest version, one step a transaction."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    for component, steps in migrations.items():
        row = conn.execute(
            "SELECT version FROM schema_migrations WHERE component = ?", (component,)
        ).fetchone()
        current = row[0] if row else 0
        if current > len(steps):
            raise SchemaTooNewError(
                f"the {component} schema is at version {current}, newer than this "
                f"statekeeper knows ({len(steps)}); upgrade statekeeper"
            )
        for version in range(current + 1, len(steps) + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in steps[version - 1]:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (component, version) VALUES (?, ?)"
                    " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                    (component, version),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("migrated %s schema to version %d", component, version)
