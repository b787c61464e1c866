"""Server-Sent Events for the console's live views: the stream a page listens to,
fed by one gRPC response stream, and the cap on how many are open at once.

Each SSE stream forwards one gRPC stream and asks it for the next message
only once the previous one was written to the visitor, so what it holds is
bounded by gRPC's own flow control (and the server's stream budget): a slow
visitor slows its stream, never grows a queue. The visitor leaving ends it:
the connection is checked every POLL_SECONDS and the gRPC call cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

HEARTBEAT_SECONDS = 15.0
"""An idle SSE stream sends a comment this often, so proxies keep it open."""

POLL_SECONDS = 0.5
"""How often an idle stream checks that its visitor is still connected."""

MAX_STREAMS = 100
"""SSE streams (run tails and job watches) one console serves at once."""

RETRY_MILLISECONDS = 3000
"""How long a browser waits before reconnecting a stream that broke."""


class Slots:
    """A count of open streams with a limit: `take` refuses beyond it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0

    def take(self) -> bool:
        """Take a slot; False (and nothing taken) when all `limit` are taken."""
        if self.taken >= self.limit:
            return False
        self.taken += 1
        return True

    def give(self) -> None:
        """Give back a slot taken with `take`."""
        self.taken -= 1


def _field(name: str, value: str) -> str:
    """An SSE field; a value of several lines becomes one `data:` line each."""
    return "".join(f"{name}: {line}\n" for line in value.split("\n"))


class EventStream:
    """One visitor's `text/event-stream` response."""

    def __init__(self, request: web.Request, signed_in: Callable[[], bool]) -> None:
        """`signed_in` tells whether the visitor's sign-in still holds: once it does
        not (signed out or expired), the stream counts as left."""
        self._request = request
        self._signed_in = signed_in
        self._response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        self.last_write = 0.0

    @property
    def response(self) -> web.StreamResponse:
        """The response the handler returns."""
        return self._response

    async def open(self) -> None:
        """Send the headers and the reconnection delay."""
        await self._response.prepare(self._request)
        await self._write(f"retry: {RETRY_MILLISECONDS}\n\n")

    async def send(self, event: str, data: str, event_id: str | None = None) -> None:
        """Send one event named `event` (its `data` as given: the caller escapes it)."""
        text = _field("event", event) + _field("data", data.strip("\n"))
        if event_id is not None:
            text += _field("id", event_id)
        await self._write(text + "\n")

    async def heartbeat(self) -> None:
        """Send a comment (ignored by browsers) that keeps proxies from closing the stream."""
        await self._write(": heartbeat\n\n")

    async def _write(self, text: str) -> None:
        await self._response.write(text.encode())
        self.last_write = asyncio.get_running_loop().time()

    def visitor_left(self) -> bool:
        """Whether the visitor's connection is closed or their sign-in ended."""
        transport = self._request.transport
        return transport is None or transport.is_closing() or not self._signed_in()


async def forward(
    stream: EventStream,
    call: grpc.aio.UnaryStreamCall[Any, Any],
    on_message: Callable[[Any], Awaitable[bool]],
    heartbeat: float,
) -> bool:
    """Pass each message of `call` to `on_message` (which writes to `stream`) until the
    call ends (True), or `on_message` returns False or the visitor leaves (False); an
    idle stream sends a heartbeat every `heartbeat` seconds. The call is cancelled on
    the way out.

    Raises grpc.aio.AioRpcError when the call fails, and ConnectionError when a
    write finds the visitor gone.
    """
    loop = asyncio.get_running_loop()
    reading: asyncio.Future[Any] | None = None
    try:
        while True:
            if stream.visitor_left():
                return False
            if reading is None:
                reading = asyncio.ensure_future(call.read())
            await asyncio.wait({reading}, timeout=min(POLL_SECONDS, heartbeat))
            if not reading.done():
                if stream.visitor_left():
                    return False
                if loop.time() - stream.last_write >= heartbeat:
                    await stream.heartbeat()
                continue
            message = reading.result()
            reading = None
            if message is grpc.aio.EOF:
                return True
            if not await on_message(message):
                return False
    finally:
        if reading is not None:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reading
        call.cancel()
