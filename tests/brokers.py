"""The real brokers of the machine for tests: a JetStream stream and Redis stream keys
of the test's own, removed afterwards, and a TCP gate to take a broker "down".

NATS (with JetStream) listens on 127.0.0.1:4222 and Redis on 127.0.0.1:6379
here and on the CI machine; NATS_URL and REDIS_URL override them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import nats
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg, StreamConfig
from redis.asyncio import Redis

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def unique(prefix: str) -> str:
    """A name no other test (or test run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class JetStreamStream:
    """A JetStream stream taking every subject under `prefix.>`."""

    name: str
    prefix: str
    js: JetStreamContext = field(repr=False)

    async def messages(self) -> list[RawStreamMsg]:
        """Every message the stream holds, in stream order (headers decoded)."""
        js = self.js
        assert isinstance(js, JetStreamContext)
        info = await js.stream_info(self.name)
        if not info.state.messages:
            return []
        return [
            await js.get_msg(self.name, seq)
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]

    async def count(self) -> int:
        """How many messages the stream holds."""
        return int((await self.js.stream_info(self.name)).state.messages)

    async def headers(self, count: int) -> list[dict[str, str]]:
        """The headers of the stream's first `count` messages, in stream order, read by
        an ordered consumer of the test's own (fails if fewer arrive in time)."""
        subscription = await self.js.subscribe(f"{self.prefix}.>", ordered_consumer=True)
        try:
            return [
                dict((await subscription.next_msg(timeout=10)).headers or {}) for _ in range(count)
            ]
        finally:
            await subscription.unsubscribe()


@contextlib.asynccontextmanager
async def jetstream_stream(max_msg_size: int = -1) -> AsyncIterator[JetStreamStream]:
    """A fresh stream of the test's own (deleted on exit)."""
    client = await nats.connect(NATS_URL)
    js = client.jetstream()
    name = unique("sktest").upper()
    prefix = name.lower()
    await js.add_stream(
        StreamConfig(
            name=name,
            subjects=[f"{prefix}.>"],
            max_msg_size=max_msg_size,
            duplicate_window=120.0,
        )
    )
    try:
        yield JetStreamStream(name, prefix, js)
    finally:
        await js.delete_stream(name)
        await client.close()


@contextlib.asynccontextmanager
async def jetstream_cleanup(name: str) -> AsyncIterator[None]:
    """Delete the JetStream stream `name` on exit, if something made it."""
    try:
        yield
    finally:
        client = await nats.connect(NATS_URL)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await client.jetstream().delete_stream(name)
        await client.close()


@contextlib.asynccontextmanager
async def redis_keys(prefix: str = "") -> AsyncIterator[tuple[Redis, str]]:
    """A Redis client and a key prefix of the test's own (`prefix`, else a new one);
    its keys are deleted on exit."""
    client = Redis.from_url(REDIS_URL)
    prefix = prefix or unique("sktest")
    try:
        yield client, prefix
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


class TcpGate:
    """A TCP forwarder on a port of its own in front of a broker: `close` takes the
    broker away (refusing and cutting every connection), `open` brings it back on
    the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> TcpGate:
        """Accept connections (on the port it had, if it had one)."""
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(_pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        sink.transport.abort()


@contextlib.asynccontextmanager
async def gate(url: str) -> AsyncIterator[TcpGate]:
    """An open TcpGate in front of the broker at `url` (host:port of the URL)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    opened = await TcpGate(parts.hostname, parts.port).open()
    try:
        yield opened
    finally:
        await opened.close()
