"""The newest events of each recently appended run, kept in memory for its followers.

When an append commits, every follower of the run wakes up and asks for
the events after its position, which for a follower that was caught up is
the page the append just wrote, or the last few commits when it fell a
little behind. `RecentCommits` keeps a short tail of committed envelopes
per run, so those followers share it instead of each reading the store for
the same bytes. It is a cache of committed data, never a queue: a follower
whose position lies outside the tail reads the store as usual, each tail is
capped, and the whole cache is held under a byte budget, oldest runs
dropped first.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import NamedTuple

from statekeeper_server.stores.events import EventPage, RunState

DEFAULT_BUDGET_BYTES = 8 * 1024 * 1024
MAX_TAIL_BYTES = 256 * 1024
MAX_TAIL_ENVELOPES = 128
"""A run's tail keeps at most this many envelopes and bytes, dropping its oldest."""


class _Tail(NamedTuple):
    after_seq: int
    """The seq just before the first envelope held."""
    run: RunState
    """The run's state after its newest commit."""
    envelopes: list[bytes]
    size: int


class RecentCommits:
    """Per key, the newest committed envelopes of a run, contiguous, and its state.

    Guarantees: `page_after(key, n)` returns a page only if it holds, in
    order, envelopes committed right after seq `n` with no gap, and the
    run's state after the newest commit published for that key; what is
    held never exceeds the byte budget.
    """

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self._budget = budget_bytes
        self._size = 0
        self._tails: dict[Hashable, _Tail] = {}

    def publish(self, key: Hashable, after_seq: int, run: RunState, envelopes: list[bytes]) -> None:
        """Add `envelopes`, committed right after `after_seq` and leaving the run as
        `run`, to the tail of `key`.

        Call it after the commit and before waking the followers. A commit
        that does not follow the tail starts a new one; a commit older than
        the tail (published late) is ignored.
        """
        size = sum(len(data) for data in envelopes)
        held = self._tails.get(key)
        if held is not None and held.run.create_us == run.create_us:
            if held.run.last_seq >= run.last_seq:
                return
            if held.run.last_seq == after_seq:
                after_seq, envelopes = held.after_seq, held.envelopes + envelopes
                size += held.size
        self.forget(key)
        drop = max(0, len(envelopes) - MAX_TAIL_ENVELOPES)
        size -= sum(len(data) for data in envelopes[:drop])
        while size > MAX_TAIL_BYTES and drop < len(envelopes):
            size -= len(envelopes[drop])
            drop += 1
        if drop == len(envelopes):
            return
        if drop:
            after_seq, envelopes = after_seq + drop, envelopes[drop:]
        self._tails[key] = _Tail(after_seq, run, envelopes, size)
        self._size += size
        while self._size > self._budget:
            self.forget(next(iter(self._tails)))

    def forget(self, key: Hashable) -> None:
        """Drop what is held for `key` (its run was truncated or deleted)."""
        held = self._tails.pop(key, None)
        if held is not None:
            self._size -= held.size

    def page_after(self, key: Hashable, after_seq: int, limit: int) -> EventPage | None:
        """Up to `limit` held envelopes of `key` right after `after_seq` (none when it is
        the newest seq), or None when the tail does not reach back to `after_seq`."""
        held = self._tails.get(key)
        if held is None or not held.after_seq <= after_seq <= held.run.last_seq:
            return None
        start = after_seq - held.after_seq
        envelopes = held.envelopes[start : start + limit]
        return EventPage(held.run, envelopes, after_seq + len(envelopes))
