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

from statekeeper_server.limits import PAGE_BUDGET_BYTES
from statekeeper_server.stores.budget import fill_page
from statekeeper_server.stores.events import EventPage, RunState

DEFAULT_BUDGET_BYTES = 8 * 1024 * 1024
MAX_TAIL_BYTES = 256 * 1024
MAX_TAIL_ENVELOPES = 128
"""A run's tail keeps at most this many envelopes and bytes, dropping its oldest."""


class _Tail:
    """One run's newest envelopes, contiguous after `after_seq`, grown in place."""

    __slots__ = ("after_seq", "envelopes", "run", "size")

    def __init__(self, after_seq: int, run: RunState) -> None:
        self.after_seq = after_seq
        """The seq just before the first envelope held."""
        self.run = run
        """The run's state after its newest commit."""
        self.envelopes: list[bytes] = []
        self.size = 0


class RecentCommits:
    """Per key, the newest committed envelopes of a run, contiguous, and its state.

    Guarantees: `page_after(key, n)` returns a page only if it holds, in
    order, envelopes committed right after seq `n` with no gap, and the
    run's state after the newest commit published for that key; what is
    held never exceeds the byte budget. Publishing costs in proportion to
    the envelopes published, not to the tail they join: it runs for every
    append.
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
        held = self._tails.get(key)
        same_run = held is not None and held.run.create_us == run.create_us
        if held is not None and same_run and held.run.last_seq >= run.last_seq:
            return
        if held is not None and same_run and held.run.last_seq == after_seq:
            # Put back below, at the end: the dict stays ordered by publication.
            del self._tails[key]
            tail = held
        else:
            self.forget(key)
            tail = _Tail(after_seq, run)
        tail.run = run
        tail.envelopes += envelopes
        added = sum(map(len, envelopes))
        tail.size += added
        self._size += added
        self._trim(tail)
        if tail.envelopes:
            self._tails[key] = tail
        while self._size > self._budget:
            self.forget(next(iter(self._tails)))

    def _trim(self, tail: _Tail) -> None:
        """Drop the tail's oldest envelopes beyond its count and byte limits."""
        held = tail.envelopes
        drop = max(0, len(held) - MAX_TAIL_ENVELOPES)
        dropped = sum(map(len, held[:drop]))
        while tail.size - dropped > MAX_TAIL_BYTES and drop < len(held):
            dropped += len(held[drop])
            drop += 1
        if drop:
            del held[:drop]
            tail.after_seq += drop
            tail.size -= dropped
            self._size -= dropped

    def forget(self, key: Hashable) -> None:
        """Drop what is held for `key` (its run was truncated or deleted)."""
        held = self._tails.pop(key, None)
        if held is not None:
            self._size -= held.size

    def page_after(
        self, key: Hashable, after_seq: int, limit: int, max_bytes: int = PAGE_BUDGET_BYTES
    ) -> EventPage | None:
        """The held envelopes of `key` right after `after_seq` (none when it is the newest
        seq), at most `limit` and `max_bytes` of them as `stores.budget.fill_page` counts,
        or None when the tail does not reach back to `after_seq`."""
        held = self._tails.get(key)
        if held is None or not held.after_seq <= after_seq <= held.run.last_seq:
            return None
        start = after_seq - held.after_seq
        envelopes, _ = fill_page(
            held.envelopes[start : start + limit], len, max_count=limit, max_bytes=max_bytes
        )
        return EventPage(held.run, envelopes, after_seq + len(envelopes))
