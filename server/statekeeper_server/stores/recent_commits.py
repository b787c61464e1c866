"""The newest commit of each recently appended run, kept in memory for its followers.

When an append commits, every follower of the run wakes up and asks for
the events after its position, which for a follower that was caught up is
exactly the page the append just wrote. `RecentCommits` keeps that page per
run, so those followers share it instead of each reading the store for the
same bytes. It is a cache of committed data, never a queue: a follower
whose position is anything but the page's start reads the store as usual,
and the whole cache is held under a byte budget, oldest runs dropped first.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import NamedTuple

from statekeeper_server.stores.events import EventPage, RunState

DEFAULT_BUDGET_BYTES = 8 * 1024 * 1024
MAX_PAGE_BYTES = 256 * 1024
"""Commits larger than this are not kept: their followers read the store."""


class _Commit(NamedTuple):
    after_seq: int
    create_us: int
    page: EventPage
    size: int


class RecentCommits:
    """Per key, the envelopes of the newest commit and the run's state after it.

    Guarantees: `page_after(key, n)` returns a page only if it holds every
    envelope committed right after seq `n` up to the page's `through_seq`,
    in order, from the newest commit published for that key; the pages
    held never exceed the byte budget.
    """

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self._budget = budget_bytes
        self._size = 0
        self._commits: dict[Hashable, _Commit] = {}

    def publish(self, key: Hashable, after_seq: int, run: RunState, envelopes: list[bytes]) -> None:
        """Keep `envelopes`, committed right after `after_seq` and leaving the run as
        `run`, as the newest commit of `key`.

        Call it after the commit and before waking the followers. A commit
        older than the one held (published late) is ignored.
        """
        held = self._commits.get(key)
        if (
            held is not None
            and held.create_us == run.create_us
            and held.page.through_seq >= run.last_seq
        ):
            return
        self.forget(key)
        size = sum(len(data) for data in envelopes)
        if size > MAX_PAGE_BYTES:
            return
        page = EventPage(run, envelopes, run.last_seq)
        self._commits[key] = _Commit(after_seq, run.create_us, page, size)
        self._size += size
        while self._size > self._budget:
            self.forget(next(iter(self._commits)))

    def forget(self, key: Hashable) -> None:
        """Drop what is held for `key` (its run was truncated or deleted)."""
        held = self._commits.pop(key, None)
        if held is not None:
            self._size -= held.size

    def page_after(self, key: Hashable, after_seq: int, limit: int) -> EventPage | None:
        """The held page of `key` if it starts right after `after_seq` and fits `limit`."""
        held = self._commits.get(key)
        if held is None or held.after_seq != after_seq or len(held.page.envelopes) > limit:
            return None
        return held.page
