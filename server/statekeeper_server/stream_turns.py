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

Nor do many streams start their turns in one pass of the event loop: a
commit to a run with a thousand followers, or a thousand followers' timers
going off together, would otherwise wake them all into the same pass, and
the loop would serve nothing else until each had read and sent. At most
TURNS_PER_PASS turns start in a pass; the next ones start in later passes,
and in between the loop serves other callers' calls. A lone stream (a
single replay catching up) never waits for that: it starts one turn per
page, and its pages keep the loop busy while its sends wait on the socket.

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
TURNS_PER_PASS = 16
"""Most turns started in one pass of the event loop; streams woken together beyond these
start theirs in the passes after, other callers' work running in between."""
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
    comes first; at most `per_pass` turns start in one pass of the event
    loop (a round: from a turn starting while none had in the round,
    until the callback that round scheduled runs); a stream waits for a
    turn only while `slots` turns count or `per_pass` turns started in the
    round, and then gets one in a later pass, in the order it came.
    """

    def __init__(
        self,
        slots: int = STREAM_TURNS,
        patience: float = TURN_PATIENCE_SECONDS,
        per_pass: int = TURNS_PER_PASS,
    ):
        self._slots = slots
        self._patience = patience
        self._per_pass = per_pass
        self._counted: dict[Turn, None] = {}
        """The turns that count, oldest first."""
        self._waiting: deque[asyncio.Future[Turn]] = deque()
        self._expiry: asyncio.TimerHandle | None = None
        self._started = 0
        """Turns started in this round; while any has, a callback that ends the round is
        scheduled."""

    @property
    def counted(self) -> int:
        """Turns that count now."""
        return len(self._counted)

    @property
    def waiting(self) -> int:
        """Streams waiting for a turn now."""
        return len(self._waiting)

    async def take(self) -> Turn:
        """A turn: at once if fewer than `slots` count, fewer than `per_pass` started in
        this pass and no stream waits; else in a later pass, once one ends or runs out."""
        if self._free() and not self._waiting:
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

    def _free(self) -> bool:
        """Whether a turn may start now."""
        return len(self._counted) < self._slots and self._started < self._per_pass

    def _start(self) -> Turn:
        loop = asyncio.get_running_loop()
        if self._started == 0:
            loop.call_soon(self._next_round)
        self._started += 1
        turn = Turn(loop.time())
        self._counted[turn] = None
        return turn

    def _next_round(self) -> None:
        """End the round (the loop went on to its next pass): the waiting streams next in
        line start their turns, which they run in the pass after."""
        self._started = 0
        self._admit()

    def _admit(self) -> None:
        while self._waiting and self._free():
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
