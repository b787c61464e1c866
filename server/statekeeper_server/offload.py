"""CPU work on large inputs runs off the event loop.

Converting or walking a large JSON value in Python takes milliseconds per
hundred kilobytes, and on the event loop every other caller would wait for
it. `off_loop_if_large` runs such work inline when its input is small (a
thread hop costs more than the work) and on a worker thread otherwise,
where the interpreter hands the loop a turn every millisecond;
`off_loop_if_many` does the same for work on many small items.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from statekeeper_server.limits import INLINE_BATCH_ITEMS, INLINE_CHECK_BYTES

P = ParamSpec("P")
T = TypeVar("T")


async def off_loop_if_large(
    size: int, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """`work(*args, **kwargs)`, on a worker thread when `size` (bytes of input) is large."""
    if size <= INLINE_CHECK_BYTES:
        return work(*args, **kwargs)
    return await asyncio.to_thread(work, *args, **kwargs)


async def off_loop_if_many(
    count: int, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """`work(*args, **kwargs)`, on a worker thread when it handles more than
    INLINE_BATCH_ITEMS items (`count`): each costs the loop some microseconds, however
    small."""
    if count <= INLINE_BATCH_ITEMS:
        return work(*args, **kwargs)
    return await asyncio.to_thread(work, *args, **kwargs)
