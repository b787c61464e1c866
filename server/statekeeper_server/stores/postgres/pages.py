"""Byte-bounded reads in PostgreSQL: a query's rows only while they fit a budget.

`within_bytes` wraps an ordered, limited query so that the database itself
stops returning rows once their running total of bytes would pass the
budget: the client never receives (and never holds) more than one page.
The sizes are computed with `octet_length`, which reads a stored value's
length without fetching or decompressing it, so rows past the budget are
never read in full either. Each returned row says whether a row of the
query follows it (`followed`), so a listing knows there is a next page
without fetching it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import asyncpg

from statekeeper_server.stores.budget import fill_page

T = TypeVar("T")


class Params:
    """Positional parameters of one statement: `add` returns the placeholder."""

    def __init__(self, *values: object) -> None:
        self.values = list(values)

    def add(self, value: object) -> str:
        """Append `value`; its placeholder, such as `$3`."""
        self.values.append(value)
        return f"${len(self.values)}"


def framed_octets(length: str) -> str:
    """SQL for `stores.budget.framed_size` of a record whose encoded size is the SQL
    expression `length`: the record with its field's tag and length varint."""
    return (
        f"({length} + CASE WHEN {length} < 128 THEN 2 WHEN {length} < 16384 THEN 3"
        f" WHEN {length} < 2097152 THEN 4 WHEN {length} < 268435456 THEN 5 ELSE 6 END)"
    )


def within_bytes(
    query: str, *, columns: str, size: str, order: str, max_bytes: str, max_count: str
) -> str:
    """`query` cut where its rows stop fitting in `max_count` rows and `max_bytes` bytes.

    `query` returns its rows in `order` (an ORDER BY list over its output
    columns) and ends in its LIMIT, one above `max_count` when the caller
    wants to know whether more follow; `size` is an SQL expression over its
    columns giving a row's framed size (see `framed_octets`); `max_bytes`
    and `max_count` are placeholders such as `$4`. The result selects
    `columns` and `followed` (whether the query had a row after this one),
    for the leading rows, at most `max_count`, whose running total of
    `size` stays within `max_bytes`, and always the first row.
    """
    return (
        f"SELECT {columns}, followed FROM ("
        f"SELECT q.*, sum({size}) OVER w AS running_bytes, {size} AS own_bytes,"
        " row_number() OVER w AS ordinal, lead(true, 1, false) OVER w AS followed"
        f" FROM ({query}) AS q WINDOW w AS (ORDER BY {order} ROWS UNBOUNDED PRECEDING)"
        f") AS sized WHERE (running_bytes <= {max_bytes} OR running_bytes = own_bytes)"
        f" AND ordinal <= {max_count} ORDER BY {order}"
    )


def page_rows(
    records: Sequence[asyncpg.Record],
    convert: Callable[[asyncpg.Record], T],
    size_of: Callable[[T], int],
    max_count: int,
) -> tuple[list[T], bool]:
    """The page of the rows of a `within_bytes` query (each `convert`ed), as
    `stores.budget.fill_page` decides it, and whether rows of the query follow."""
    rows, cut = fill_page(map(convert, records), size_of, max_count=max_count)
    return rows, cut or (bool(records) and bool(records[-1]["followed"]))
