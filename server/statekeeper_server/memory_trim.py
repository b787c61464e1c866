"""Giving the heap memory that streams freed back to the operating system.

When streams end, Python frees what they held, but glibc keeps freed heap
memory for later instead of returning it, so the server's RSS stays at its
peak until `malloc_trim` is called. `MemoryTrimmer` calls glibc's
`malloc_trim(0)` a few seconds after streams ended (TRIM_DELAY_SECONDS, so
that the streams ending in a burst share one trim), at most once every
TRIM_INTERVAL_SECONDS: a trim takes milliseconds (tens on a large fragmented
heap) and holds glibc's arena locks meanwhile. It runs on a worker thread
(ctypes releases the GIL during the call), so the event loop keeps serving.
Where the C library is not glibc, there is nothing to call and it does
nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_DELAY_SECONDS = 3.0
"""Seconds after the last stream ended before the trim."""
TRIM_INTERVAL_SECONDS = 30.0
"""Fewest seconds between two trims."""

Trim = Callable[[], object]


def glibc_malloc_trim() -> Trim | None:
    """A call of glibc's `malloc_trim(0)`, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        malloc_trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return lambda: malloc_trim(0)


class MemoryTrimmer:
    """Trims the heap on a worker thread after streams ended (see the module).

    Guarantees: `trim` never runs on the event loop, never twice at once,
    and never sooner than `interval` seconds after the previous trim began;
    every `request` is followed by a trim beginning after it: `delay`
    seconds later, or `interval` seconds after the previous trim if that is
    later (requests meanwhile share that trim).
    """

    def __init__(
        self,
        trim: Trim | None,
        *,
        delay: float = TRIM_DELAY_SECONDS,
        interval: float = TRIM_INTERVAL_SECONDS,
    ) -> None:
        """`trim` is the call that gives memory back (`glibc_malloc_trim()`); None does
        nothing."""
        self._trim = trim
        self._delay = delay
        self._interval = interval
        self._requested = asyncio.Event()
        self.trims = 0
        """Trims run so far."""

    def request(self) -> None:
        """Ask for a trim soon: memory was just freed (a stream ended)."""
        self._requested.set()

    async def run(self) -> None:
        """Trim after each request (see the class) until cancelled."""
        if self._trim is None:
            return
        loop = asyncio.get_running_loop()
        last = -self._interval
        while True:
            await self._requested.wait()
            await asyncio.sleep(self._delay)
            await asyncio.sleep(max(0.0, last + self._interval - loop.time()))
            # Requests made from here on are for memory freed after this trim began.
            self._requested.clear()
            try:
                await asyncio.to_thread(self._trim)
            except Exception:
                log.exception("trimming the heap failed")
            self.trims += 1
            last = loop.time()
