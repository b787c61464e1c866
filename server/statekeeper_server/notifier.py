"""Wake-ups for waiters on a key (a run, a queue), without holding data.

A waiter takes the key's current `asyncio.Event` *before* it reads the
store, then waits on it; `notify` sets that event and starts a new one. A
commit that lands between the read and the wait has already set the event
the waiter holds, so no wake-up is ever lost. Events are held weakly: a key
nobody waits on costs nothing.

A waiter that must also wake on a timer of its own (a follower owing a
heartbeat) waits with `Wakeup.wait_or`: its timer then wakes it alone,
never every waiter of the key. A thousand followers of one run each
waking all the others at their own heartbeat would otherwise cost a
million wake-ups per heartbeat interval.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable


class Wakeup(asyncio.Event):
    """The event of one key: an asyncio.Event whose waiters may also be woken one at a time.

    Guarantees: `set` wakes every waiter, those of `wait` and of `wait_or`;
    a `wait_or` waiter also wakes, alone, once its own future is done. A
    `wait_or` waiter leaves in constant time (asyncio.Event.wait's waiters
    search a queue of all waiters to leave it).
    """

    def __init__(self) -> None:
        super().__init__()
        self._alone: set[asyncio.Future[None]] = set()

    def set(self) -> None:
        """Set the event and wake every waiter."""
        super().set()
        alone, self._alone = self._alone, set()
        for future in alone:
            if not future.done():
                future.set_result(None)

    async def wait_or(self, future: asyncio.Future[None]) -> None:
        """Until the event is set or `future` is done, whichever comes first. Resolving
        `future` (from a timer, say) wakes this waiter only; `set` resolves it too."""
        if self.is_set():
            return
        self._alone.add(future)
        try:
            await future
        finally:
            self._alone.discard(future)


class Notifier:
    """Per-key wake-up signals for one event loop."""

    def __init__(self) -> None:
        self._events: weakref.WeakValueDictionary[Hashable, Wakeup] = weakref.WeakValueDictionary()
        self._listeners: list[Callable[[Hashable], None]] = []

    def listen(self, listener: Callable[[Hashable], None]) -> None:
        """Call `listener(key)` on every `notify`, whoever watches the key (a waiter on a
        family of keys, such as every run of a namespace). It must be quick."""
        self._listeners.append(listener)

    def unlisten(self, listener: Callable[[Hashable], None]) -> None:
        """Stop calling `listener`."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def watch(self, key: Hashable) -> Wakeup:
        """The event the next `notify(key)` sets; take it before reading."""
        event = self._events.get(key)
        if event is None:
            event = Wakeup()
            self._events[key] = event
        return event

    def notify(self, key: Hashable) -> None:
        """Wake everyone watching `key`, and tell the listeners."""
        event = self._events.pop(key, None)
        if event is not None:
            event.set()
        for listener in self._listeners:
            listener(key)

    def notify_all(self) -> None:
        """Wake every watcher (after a reconnect, when changes may be missed)."""
        events = list(self._events.values())
        self._events.clear()
        for event in events:
            event.set()
