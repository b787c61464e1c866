"""Wake-ups across replicas through PostgreSQL LISTEN/NOTIFY.

A transaction that changes something waiters follow calls `pg_notify` on
the store's channel with a payload naming the notifier key; PostgreSQL
delivers it to every listening session only when (and if) that transaction
commits. Each replica keeps one dedicated listening connection and turns
payloads back into `Notifier.notify(key)`.

A notification is only a wake-up: waiters always re-read the tables. A
notification lost while the listening connection was down can therefore
delay a wake-up but never lose data, and once the connection is back every
waiter is woken (`notify_all`) to re-read whatever it may have missed.

Payload: a compact JSON array of strings (integers allowed), the sending
replica's origin first, then the parts of the key, e.g.
`["5f1c09ab","events","default","run-1"]`. JSON quoting keeps any part
unambiguous, whatever characters it holds. A payload with no key parts
(sent when a key would not fit PostgreSQL's 8000-byte limit) wakes everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any

from statekeeper_server.notifier import Notifier
from statekeeper_server.observability import store_metrics

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

NotifyKey = tuple[str | int, ...]
"""A notifier key that can cross replicas: a tuple of strings and integers."""

MAX_PAYLOAD_BYTES = 7999
"""PostgreSQL refuses NOTIFY payloads of 8000 bytes or more."""

Connect = Callable[[], Awaitable["asyncpg.Connection[asyncpg.Record]"]]


def encode_payload(origin: str, key: Hashable) -> str:
    """The NOTIFY payload that wakes watchers of `key` on every other replica.

    Raises TypeError for a key that is not a tuple of strings and integers
    (such a key could not be rebuilt on the other side).
    """
    if not isinstance(key, tuple) or not all(
        isinstance(part, (str, int)) and not isinstance(part, bool) for part in key
    ):
        raise TypeError(f"a notifier key crossing replicas must be a tuple of str/int: {key!r}")
    payload = json.dumps([origin, *key], separators=(",", ":"), ensure_ascii=False)
    if len(payload.encode()) > MAX_PAYLOAD_BYTES:
        return json.dumps([origin])
    return payload


def decode_payload(payload: str) -> tuple[str, NotifyKey | None]:
    """The origin and key of a payload; key None means "wake every watcher".

    A payload this module did not write also decodes to "wake everyone", so
    that a stray message costs a re-read, never a missed wake-up.
    """
    try:
        parts = json.loads(payload)
    except ValueError:
        return "", None
    if (
        not isinstance(parts, list)
        or not parts
        or not all(isinstance(part, (str, int)) and not isinstance(part, bool) for part in parts)
    ):
        return "", None
    origin, *key = parts
    return str(origin), (tuple(key) if key else None)


class Listener:
    """One LISTEN connection per replica that keeps itself connected.

    Guarantees: while connected, every notification of another origin on the
    channel wakes its key's watchers; after the connection is lost it
    reconnects with exponential backoff, LISTENs again and only then wakes
    every watcher, so no change committed during the gap goes unnoticed.
    A silent network is caught by a probe every `check_interval` seconds.
    """

    def __init__(
        self,
        connect: Connect,
        channel: str,
        origin: str,
        notifier: Notifier,
        *,
        check_interval: float = 10.0,
        check_timeout: float = 5.0,
        first_backoff: float = 0.05,
        max_backoff: float = 2.0,
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._origin = origin
        self._notifier = notifier
        self._check_interval = check_interval
        self._check_timeout = check_timeout
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def server_pid(self) -> int | None:
        """The PostgreSQL backend pid of the listening connection, if connected."""
        conn = self._conn
        return None if conn is None or conn.is_closed() else conn.get_server_pid()

    async def start(self) -> None:
        """LISTEN, then keep listening in the background; raises if the first connect fails."""
        self._conn = await self._listen()
        self._task = asyncio.create_task(self._run(), name=f"listen {self._channel}")

    async def close(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None:
            await close_quietly(self._conn)
            self._conn = None

    async def _listen(self) -> asyncpg.Connection[asyncpg.Record]:
        conn = await self._connect()
        try:
            await conn.add_listener(self._channel, self._on_notification)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _run(self) -> None:
        while True:
            assert self._conn is not None
            await self._until_lost(self._conn)
            log.warning("lost the LISTEN connection of %s; reconnecting", self._channel)
            self._conn = await self._reconnect()
            store_metrics.POSTGRES_LISTEN_RECONNECTS.inc()
            log.info("listening on %s again; waking every watcher to re-read", self._channel)
            self._notifier.notify_all()

    async def _until_lost(self, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        """Return once `conn` is closed or stops answering (and is then closed)."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        while not conn.is_closed():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(lost.wait(), self._check_interval)
                break
            try:
                await conn.execute("SELECT 1", timeout=self._check_timeout)
            except Exception as exc:
                log.warning("the LISTEN connection of %s stopped answering: %s", self._channel, exc)
                break
        conn.terminate()

    async def _reconnect(self) -> asyncpg.Connection[asyncpg.Record]:
        delay = self._first_backoff
        while True:
            try:
                return await self._listen()
            except Exception as exc:
                log.debug(
                    "cannot LISTEN on %s yet (%s); retrying in %.2f s", self._channel, exc, delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff)

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        origin, key = decode_payload(str(payload))
        if origin == self._origin:
            return  # the committing transaction already woke this replica's watchers
        if key is None:
            self._notifier.notify_all()
        else:
            self._notifier.notify(key)


async def close_quietly(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Close `conn` politely if the server still answers, abruptly if not; never raises."""
    try:
        await conn.close(timeout=2.0)
    except Exception:
        conn.terminate()
