"""The server-wide budget of bytes that streams hold between reading and sending.

A ReplayEvents or WatchJobs stream reads a page from the store, then sends
it; while its client does not read, what it read stays in server memory.
Every live stream may always hold its share (STREAM_SHARE_BYTES) of such
bytes. Whatever it reads beyond its share it borrows from one budget shared
by the whole server (`--stream-buffer-bytes`): it takes only what is free at
that moment, never waiting for more, and gives it back as the page is sent.
A stream whose client keeps up therefore reads and sends large pages, and a
thousand streams whose clients stopped reading hold at most a thousand
shares plus the budget, however long the history behind them.

A page always holds at least one record, so a record larger than what a
stream was granted is still read: its bytes beyond the grant are charged to
the budget, which may then run over until that record is sent, and nobody
borrows meanwhile.

Everything here runs on the event loop (no locks).
"""

from __future__ import annotations

from collections.abc import Callable

from statekeeper_server.limits import STREAM_SHARE_BYTES


class Grant:
    """Bytes one page of a stream may hold: `own` of the stream's share, `borrowed` from
    the shared budget."""

    __slots__ = ("borrowed", "own")

    def __init__(self, own: int, borrowed: int) -> None:
        self.own = own
        self.borrowed = borrowed

    @property
    def size(self) -> int:
        """Bytes granted in all: the most the page may be filled with."""
        return self.own + self.borrowed


class StreamBuffer:
    """The bytes one stream holds: its share first, then what it borrowed.

    Guarantees: the stream's grants never hold more of its share than the
    share, nor borrow more than the budget had free when granted (except
    what `settle` charges for a single record larger than its grant);
    `close` gives everything back, whatever grants are still out.
    """

    __slots__ = ("_borrowed", "_buffers", "_closed", "_own")

    def __init__(self, buffers: StreamBuffers) -> None:
        self._buffers = buffers
        self._own = 0
        self._borrowed = 0
        self._closed = False

    @property
    def held(self) -> int:
        """Bytes this stream's grants hold now."""
        return self._own + self._borrowed

    def grant(self, most: int, *, minimum: int = 1) -> Grant | None:
        """Up to `most` bytes for a page: what is left of the share, then what the budget
        has free now; None (and nothing taken) when that is under `minimum`."""
        buffers = self._buffers
        own = min(most, buffers.share - self._own)
        borrowed = min(most - own, buffers.free)
        if own + borrowed < minimum:
            return None
        self._add(own, borrowed)
        return Grant(own, borrowed)

    def settle(self, grant: Grant, used: int) -> None:
        """Make `grant` hold `used` bytes: give back what the page does not use (borrowed
        bytes first), or charge what a record larger than the grant took beyond it (to
        the share if any is left, else to the budget, even past its end). Does nothing
        once the stream is closed."""
        if self._closed:
            return
        change = used - grant.size
        if change < 0:
            borrowed = max(change, -grant.borrowed)
            own = max(change - borrowed, -grant.own)
        else:
            own = min(change, self._buffers.share - self._own)
            borrowed = change - own
        grant.own += own
        grant.borrowed += borrowed
        self._add(own, borrowed)

    def release(self, grant: Grant) -> None:
        """Give back all that `grant` holds (its page was sent, or dropped)."""
        self.settle(grant, 0)

    def close(self) -> None:
        """Give back everything this stream holds; call it when the stream ends."""
        if self._closed:
            return
        self._add(-self._own, -self._borrowed)
        self._closed = True
        self._buffers.stream_ended()

    def _add(self, own: int, borrowed: int) -> None:
        """Count `own` more bytes of the share and `borrowed` more of the budget held."""
        self._own += own
        self._borrowed += borrowed
        self._buffers.borrowed += borrowed
        self._buffers.held += own + borrowed


class StreamBuffers:
    """The budget every stream of the server borrows from beyond its share.

    Guarantees: `borrowed` never exceeds `budget` except by records larger
    than their grant (see the module), so `held` never exceeds
    `open_streams` shares plus `budget` but by such records; `open_streams`
    counts the streams opened and not yet closed.
    """

    def __init__(
        self,
        budget: int,
        share: int = STREAM_SHARE_BYTES,
        *,
        on_stream_end: Callable[[], None] | None = None,
    ) -> None:
        """`on_stream_end` is called each time a stream closes (to trim memory soon)."""
        self.budget = budget
        self.share = share
        self.borrowed = 0
        """Bytes of the budget out on loan now."""
        self.held = 0
        """Bytes all streams hold now: their shares in use and what they borrowed."""
        self.open_streams = 0
        self._on_stream_end = on_stream_end

    @property
    def free(self) -> int:
        """Bytes of the budget that may be borrowed now."""
        return max(0, self.budget - self.borrowed)

    def open(self) -> StreamBuffer:
        """The buffer of a new stream; `close` it when the stream ends."""
        self.open_streams += 1
        return StreamBuffer(self)

    def stream_ended(self) -> None:
        """Count a stream out (called by `StreamBuffer.close`)."""
        self.open_streams -= 1
        if self._on_stream_end is not None:
            self._on_stream_end()
