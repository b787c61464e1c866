"""Large requests take turns by bytes, so that small calls keep answering quickly.

A request body over 16 KiB that holds JSON costs the server about a
millisecond of its interpreter per hundred kilobytes, nearly all of it
holding the GIL: decoding it, encoding what it stores, the store's own
work. Were every such request served at once, the interpreter would be busy
almost all the time, and each step of a small call (a LoadSnapshot, a
GetJob) would wait behind that work. Large requests are therefore served at
most `budget` bytes of bodies at a time; the others wait their turn, first
come first served, holding nothing but the body gRPC has already received.
Small calls never wait for a turn.

Everything here runs on one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class RequestTurns:
    """Turns of large requests, bounded by the bytes of their bodies.

    Guarantees: the bodies of the requests holding a turn add up to at most
    `budget` bytes, except for a body larger than the budget, which gets a
    turn alone once no other holds one; turns are given in the order they
    were asked for (a large body waiting first keeps smaller ones behind it
    waiting too, so none waits forever); a caller that gives up while
    waiting, or while holding its turn, frees its place. A budget of 0 gives
    every request its turn at once.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._in_progress = 0
        self._holders = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def bytes_in_progress(self) -> int:
        """Bytes of the bodies holding a turn."""
        return self._in_progress

    @property
    def waiting(self) -> int:
        """Requests waiting for a turn."""
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def turn(self, size: int) -> AsyncIterator[None]:
        """Hold a turn for a body of `size` bytes while the block runs."""
        if self._waiting or not self._fits(size):
            granted = asyncio.get_running_loop().create_future()
            entry = (size, granted)
            self._waiting.append(entry)
            try:
                await granted
            except asyncio.CancelledError:
                if not granted.cancelled():
                    self._release(size)  # given just as the caller gave up
                else:
                    with contextlib.suppress(ValueError):  # `_grant` may have dropped it
                        self._waiting.remove(entry)
                    self._grant()
                raise
        else:
            self._take(size)
        try:
            yield
        finally:
            self._release(size)

    def _fits(self, size: int) -> bool:
        return self.budget == 0 or self._holders == 0 or self._in_progress + size <= self.budget

    def _take(self, size: int) -> None:
        self._in_progress += size
        self._holders += 1

    def _release(self, size: int) -> None:
        self._in_progress -= size
        self._holders -= 1
        self._grant()

    def _grant(self) -> None:
        """Give turns to the first waiters, in order, while they fit."""
        while self._waiting and self._fits(self._waiting[0][0]):
            size, granted = self._waiting.popleft()
            if granted.cancelled():
                continue  # its caller gave up; it takes nothing
            self._take(size)
            granted.set_result(None)
