"""What Python 3.10 lacks, in one place: backports of the standard library's newer parts.

`tomllib` is `tomli` there and `asyncio.timeout`/`timeout_at` come from
`async-timeout` (both installed with the server on 3.10 only). Their
timeouts raise `asyncio.TimeoutError`, which only 3.11 makes the builtin
`TimeoutError`: code waiting on them catches `asyncio.TimeoutError`. SQLite's
errors carry their result code, and `datetime.fromisoformat` reads a `Z`
for UTC, from 3.11 on only.
Drop this module with 3.10.
"""

from __future__ import annotations

import datetime
import sqlite3
import sys

if sys.version_info >= (3, 11):
    from asyncio import timeout, timeout_at

    import tomllib
else:  # pragma: no cover - exercised by CI's Python 3.10 run
    import tomli as tomllib
    from async_timeout import timeout, timeout_at

__all__ = ["fromisoformat", "sqlite_error_code", "timeout", "timeout_at", "tomllib"]

# SQLite's primary result codes (sqlite3.h); the sqlite3 module names them from 3.11 on.
SQLITE_PERM = 3
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_NOMEM = 7
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_NOTADB = 26

_SQLITE_TEXTS = {
    "access permission denied": SQLITE_PERM,
    "database is locked": SQLITE_BUSY,
    "database table is locked": SQLITE_LOCKED,
    "out of memory": SQLITE_NOMEM,
    "attempt to write a readonly database": SQLITE_READONLY,
    "disk I/O error": SQLITE_IOERR,
    "database disk image is malformed": SQLITE_CORRUPT,
    "database or disk is full": SQLITE_FULL,
    "unable to open database file": SQLITE_CANTOPEN,
    "file is not a database": SQLITE_NOTADB,
}
"""SQLite's own words for the codes above (sqlite3_errstr), for 3.10's errors."""


def sqlite_error_code(exc: sqlite3.Error) -> int | None:
    """The SQLite result code of `exc`: its `sqlite_errorcode` (3.11 on), else the
    primary code its message is SQLite's text for; None when neither tells."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code
    text = str(exc)
    return next((code for words, code in _SQLITE_TEXTS.items() if text.startswith(words)), None)


def fromisoformat(text: str) -> datetime.datetime:
    """`datetime.datetime.fromisoformat`, reading a trailing `Z` as UTC on 3.10 too;
    ValueError for text that is not an ISO 8601 date (and time)."""
    if sys.version_info < (3, 11) and text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    return datetime.datetime.fromisoformat(text)
