"""Which records fit in a page, a batch or a stream message: counted in records and bytes.

A record takes its encoded size plus the framing of the repeated field
that carries it (a one-byte tag, every such field being numbered below 16,
and a length varint). A page holds records while both its count and the
total of those sizes stay within their limits, and always at least one
record, each being smaller than any budget. Every list, lease, watch and
replay decides with `fill_page`, so no response grows past its budget
whatever the records are, and a store reads no more than one record past
what it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from statekeeper_server.limits import PAGE_BUDGET_BYTES

T = TypeVar("T")


def varint_size(value: int) -> int:
    """Bytes of the base-128 varint of a non-negative integer."""
    return max(1, (value.bit_length() + 6) // 7)


def framed_size(size: int) -> int:
    """Bytes a record of `size` encoded bytes takes in a repeated field: tag, length, record."""
    return 1 + varint_size(size) + size


def fill_page(
    records: Iterable[T],
    size_of: Callable[[T], int],
    *,
    max_count: int,
    max_bytes: int = PAGE_BUDGET_BYTES,
) -> tuple[list[T], bool]:
    """The leading `records` that fit, and whether any record was left out.

    `size_of` gives a record's encoded size (framing is added here). The
    page takes records in order while it holds fewer than `max_count` and
    the next one keeps its framed total within `max_bytes`; the first
    record is always taken. `records` is consumed lazily and at most one
    record past the page is read (to learn that there is more).
    """
    # The hot loop of every replay read: framed sizes are computed inline.
    page: list[T] = []
    append = page.append
    room = max_bytes
    for record in records:
        if len(page) >= max_count:
            return page, True
        size = size_of(record)
        size += 2 if size < 0x80 else 3 if size < 0x4000 else 1 + varint_size(size)
        if size > room and page:
            return page, True
        append(record)
        room -= size
    return page, False


def split_by_size(
    records: Iterable[T], size_of: Callable[[T], int], max_bytes: int
) -> Iterable[list[T]]:
    """Consecutive runs of `records`, each as many as fit in `max_bytes` (framing
    included; a record larger than that alone)."""
    run: list[T] = []
    used = 0
    for record in records:
        size = framed_size(size_of(record))
        if run and used + size > max_bytes:
            yield run
            run, used = [], 0
        run.append(record)
        used += size
    if run:
        yield run
