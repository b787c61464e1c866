"""Byte-bounded reads in SQLite: step a query's rows only while they fit a page."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from statekeeper_server.limits import PAGE_BUDGET_BYTES
from statekeeper_server.stores.budget import fill_page


def read_page(
    conn: sqlite3.Connection,
    sql: str,
    params: Sequence[object],
    size_of: Callable[[Any], int],
    *,
    max_count: int,
    max_bytes: int = PAGE_BUDGET_BYTES,
) -> tuple[list[Any], bool]:
    """The page `stores.budget.fill_page` makes of the rows of `sql`, and whether rows
    follow it.

    Rows are stepped one at a time and the statement is closed as soon as
    the page is full, so at most one row past the page is ever read.
    """
    cursor = conn.execute(sql, params)
    try:
        return fill_page(cursor, size_of, max_count=max_count, max_bytes=max_bytes)
    finally:
        cursor.close()
