"""What an error message and the server's log must never hold.

One list of patterns serves both sides: the checks look for them in every
error message, and the generator keeps them out of the text it sends, so a
message that merely quotes the caller's own text is never mistaken for a
leak.
"""

from __future__ import annotations

import re

LEAK_PATTERNS: dict[str, re.Pattern[str]] = {
    "traceback": re.compile(r"Traceback \(most recent call last\)|File \"[^\"]*\", line \d+"),
    "python class name": re.compile(
        r"\b[A-Z][A-Za-z0-9_]*(?:Error|Exception|Warning)\b|<class '|\bobject at 0x[0-9a-f]+"
    ),
    "python module path": re.compile(
        r"\b(?:statekeeper_server|asyncpg|sqlite3|aiosqlite|builtins|pydantic|grpc\._cython"
        r"|google\.(?:protobuf|_upb)|json\.decoder|concurrent\.futures|asyncio)\b"
        r"|\b\w+_pb2\b|\b\w+\.py\b"
    ),
    "file path": re.compile(
        r"/(?:tmp|home|usr|var|work|opt|etc|srv|root|proc|lib|data)/|site-packages"
        r"|\b[\w-]+\.(?:db|sqlite3?|db-wal|db-shm)\b"
    ),
    "SQL": re.compile(
        r"\b(?:SELECT|INSERT INTO|DELETE FROM|UPDATE \w+ SET|CREATE TABLE|ALTER TABLE|WHERE"
        r"|RETURNING|ON CONFLICT|SQLSTATE|SQL)\b"
        r"|(?i:\bsqlite\b|\basyncpg\b|\bpsycopg|too many \w+ variables|no such (?:table|column)"
        r"|database is locked|UNIQUE constraint|syntax error at|relation \"|duplicate key value"
        r"|invalid input syntax|out of range for type|numeric field overflow"
        r"|value too long for type|violates \w+ constraint|expression tree is too large"
        r"|string or blob too big|parser stack overflow|datatype mismatch|no such function"
        r"|could not determine data type|invalid input for query argument|query argument \$\d)"
    ),
}


def leaks(text: str) -> list[str]:
    """The kinds of internals `text` reveals, each with the matching snippet."""
    found = []
    for kind, pattern in LEAK_PATTERNS.items():
        match = pattern.search(text)
        if match:
            found.append(f"{kind} ({match.group(0)!r})")
    return found


def scrub(text: str) -> str:
    """`text` with every match of a leak pattern defused, so sending it proves nothing."""
    for pattern in LEAK_PATTERNS.values():
        text = pattern.sub(lambda match: "x" * len(match.group(0)), text)
    return text


RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""Control characters (tab and newline excepted) that must never reach the log raw."""
