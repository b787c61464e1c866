"""Waiting in tests for something that must happen, with a generous bound (never a speed check)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

ENOUGH = 10.0
"""Seconds after which what must happen counts as never happening."""
POLL = 0.01


async def until(condition: Callable[[], bool], what: str) -> None:
    """Return once `condition()` is true; fail naming `what` if it is not within ENOUGH s."""
    for _ in range(int(ENOUGH / POLL)):
        if condition():
            return
        await asyncio.sleep(POLL)
    raise AssertionError(f"never: {what}")


async def until_async(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """`until` for a condition that must be awaited (a scrape, a call)."""
    for _ in range(int(ENOUGH / POLL)):
        if await condition():
            return
        await asyncio.sleep(POLL)
    raise AssertionError(f"never: {what}")
