"""Wake-ups for waiters on a key (a run, a queue), without holding data.

A waiter takes the key's current `asyncio.Event` *before* it reads the
store, then waits on it; `notify` sets that event and starts a new one. A
commit that lands between the read and the wait has already set the event
the waiter holds, so no wake-up is ever lost. Events are held weakly: a key
nobody waits on costs nothing.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable


class Notifier:
    """Per-key wake-up signals for one event loop."""

    def __init__(self) -> None:
        self._events: weakref.WeakValueDictionary[Hashable, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )
        self._listeners: list[Callable[[Hashable], None]] = []

    def listen(self, listener: Callable[[Hashable], None]) -> None:
        """Call `listener(key)` on every `notify`, whoever watches the key (a waiter on a
        family of keys, such as every run of a namespace). It must be quick."""
        self._listeners.append(listener)

    def unlisten(self, listener: Callable[[Hashable], None]) -> None:
        """Stop calling `listener`."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def watch(self, key: Hashable) -> asyncio.Event:
        """The event the next `notify(key)` sets; take it before reading."""
        event = self._events.get(key)
        if event is None:
            event = asyncio.Event()
            self._events[key] = event
        return event

    def notify(self, key: Hashable) -> None:
        """Wake everyone watching `key`, and tell the listeners."""
        self._wake(key)
        for listener in self._listeners:
            listener(key)

    def wake_at(self, when: float, key: Hashable) -> asyncio.TimerHandle:
        """Wake everyone watching `key` at loop time `when` (a timer, not a commit)."""
        return asyncio.get_running_loop().call_at(when, self._wake, key)

    def _wake(self, key: Hashable) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def notify_all(self) -> None:
        """Wake every watcher (after a reconnect, when changes may be missed)."""
        events = list(self._events.values())
        self._events.clear()
        for event in events:
            event.set()
