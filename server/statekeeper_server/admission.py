"""Which calls the server takes: none while draining for shutdown, streams up to limits.

A shutdown first *drains*: every call already received finishes, every new
call is answered UNAVAILABLE (SERVER_STOPPING) at once, so a caller never
has to guess whether a call cut off by the shutdown took effect. Only once
no call is in flight, and no call has arrived for a quiet period (a caller
that just got its answer often sends the next call at once), does the
transport stop: gRPC cancels a call that reaches it while it stops.

Long-lived streams (ReplayEvents, WatchJobs) are counted server-wide and
per connection; past either limit a new stream is RESOURCE_EXHAUSTED
(TOO_MANY_STREAMS), so no number of clients can make the server hold more
streams, and the memory each costs, than its operator allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from statekeeper_server.errors import ResourceExhausted, Unavailable


class Admission:
    """Admits calls and streams; counts those in flight (one event loop)."""

    def __init__(self, max_streams: int, max_streams_per_connection: int) -> None:
        self.max_streams = max_streams
        self.max_streams_per_connection = max_streams_per_connection
        self._draining = False
        self._last_arrival = 0.0
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._streams = 0
        self._streams_by_peer: dict[str, int] = {}
        self._streams_by_method: dict[str, int] = {}

    @property
    def in_flight(self) -> int:
        """Calls admitted that have not finished."""
        return self._in_flight

    @property
    def streams(self) -> int:
        """Streams admitted that have not ended."""
        return self._streams

    @property
    def draining(self) -> bool:
        """Whether the server refuses new calls because it is shutting down."""
        return self._draining

    def streams_by_method(self) -> dict[str, int]:
        """Streams admitted that have not ended, by method path (only methods with some)."""
        return dict(self._streams_by_method)

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Hold one call in flight; Unavailable (SERVER_STOPPING) once draining."""
        self._last_arrival = asyncio.get_running_loop().time()
        if self._draining:
            raise Unavailable(
                "SERVER_STOPPING",
                "the server is shutting down and takes no new calls; retry on another"
                " replica or once it is back",
            )
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    @contextlib.contextmanager
    def stream(self, peer: str, method: str = "") -> Iterator[None]:
        """Hold one stream of the connection `peer`, a call of `method`; ResourceExhausted
        past a limit."""
        if self._streams >= self.max_streams:
            raise _too_many("the server", self.max_streams)
        on_peer = self._streams_by_peer.get(peer, 0)
        if on_peer >= self.max_streams_per_connection:
            raise _too_many("this connection", self.max_streams_per_connection)
        self._streams += 1
        self._streams_by_peer[peer] = on_peer + 1
        by_method = self._streams_by_method
        by_method[method] = by_method.get(method, 0) + 1
        try:
            yield
        finally:
            self._streams -= 1
            _release(self._streams_by_peer, peer)
            _release(by_method, method)

    def start_draining(self) -> None:
        """Refuse every call from now on; those in flight go on."""
        self._draining = True

    async def drained(self, quiet_seconds: float) -> None:
        """Return once no call is in flight and none has arrived for `quiet_seconds`."""
        loop = asyncio.get_running_loop()
        while True:
            await self._idle.wait()
            quiet_for = loop.time() - self._last_arrival
            if quiet_for >= quiet_seconds and self._in_flight == 0:
                return
            await asyncio.sleep(quiet_seconds - quiet_for)


def _release(counts: dict[str, int], key: str) -> None:
    """One fewer for `key`; a key that reaches zero is removed (peers come and go)."""
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


def _too_many(where: str, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        "TOO_MANY_STREAMS",
        f"{where} already serves {limit} streams, its limit; close a stream or retry later",
        limit=limit,
    )
