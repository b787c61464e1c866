"""Turns that streams take to read and send a page, so a thousand never all run at once.

When a thousand ReplayEvents followers catch up together, each page of
each of them costs the event loop a read, a message and its send. Were
they all runnable at once, every turn of the loop would run hundreds of
them, and another caller's call, which needs a few turns of the loop,
would wait for all of them each time. A stream therefore takes a turn
before it reads a page and ends it once the page is sent: at most
STREAM_TURNS streams hold one, the others wait (holding no page), and
since only those few read at a time, they share the stream buffer budget
among few and read large pages.

A client that stops reading must not keep its turn: a turn that lasts
longer than TURN_PATIENCE_SECONDS no longer counts, and the next stream
waiting gets one. That stream's page stays with it (its share and what it
borrowed, see `stream_buffers`); it just no longer keeps others waiting.

Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque

STREAM_TURNS = 32
"""Most streams reading or sending a page at once (turns that ran out of patience aside)."""
TURN_PATIENCE_SECONDS = 0.1
"""A turn counts for this long at most: a stream whose send takes longer (its client reads
slowly or not at all) keeps others waiting no longer."""


class Turn:
    """One stream's turn to read and send a page."""

    __slots__ = ("counted", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.counted = True
        """Whether this turn still keeps others waiting (not ended, not run out of patience)."""


class StreamTurns:
    """Hands out turns, first come first served.

    Guarantees: at most `slots` turns count at once; a turn counts from
    `take` until `end` or until it is `patience` seconds old, whichever
    comes first; a stream waits for a turn only while `slots` turns count.
    """

    def __init__(self, slots: int = STREAM_TURNS, patience: float = TURN_PATIENCE_SECONDS):
        self._slots = slots
        self._patience = patience
        self._counted: dict[Turn, None] = {}
        """The turns that count, oldest first."""
        self._waiting: deque[asyncio.Future[Turn]] = deque()
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def counted(self) -> int:
        """Turns that count now."""
        return len(self._counted)

    @property
    def waiting(self) -> int:
        """Streams waiting for a turn now."""
        return len(self._waiting)

    async def take(self) -> Turn:
        """A turn, at once if fewer than `slots` count, else once one ends or runs out."""
        if len(self._counted) < self._slots and not self._waiting:
            return self._start()
        waiter: asyncio.Future[Turn] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._arm_expiry()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
            else:
                self.end(waiter.result())
            raise

    def end(self, turn: Turn) -> None:
        """End `turn` (its page was sent, or the stream ended); the next waiting stream
        gets one. Ending a turn twice, or one that ran out of patience, is harmless."""
        if turn.counted:
            turn.counted = False
            del self._counted[turn]
            self._admit()

    def _start(self) -> Turn:
        turn = Turn(asyncio.get_running_loop().time())
        self._counted[turn] = None
        return turn

    def _admit(self) -> None:
        while self._waiting and len(self._counted) < self._slots:
            waiter = self._waiting.popleft()
            if not waiter.done():  # one cancelled is gone by the time its stream hears of it
                waiter.set_result(self._start())

    def _arm_expiry(self) -> None:
        """Make the oldest turn stop counting once it runs out of patience (while streams
        wait for one)."""
        if self._expiry is None and self._counted:
            oldest = next(iter(self._counted))
            loop = asyncio.get_running_loop()
            self._expiry = loop.call_at(oldest.started + self._patience, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        now = asyncio.get_running_loop().time()
        while self._counted:
            oldest = next(iter(self._counted))
            if oldest.started + self._patience > now:
                break
            oldest.counted = False
            del self._counted[oldest]
        self._admit()
        if self._waiting:
            self._arm_expiry()
