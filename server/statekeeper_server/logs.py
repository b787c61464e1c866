"""Logging to stderr, one line per event, that callers can neither forge nor flood.

Log lines quote caller-supplied text (ids, keys, error messages). Every
control character in a message is written as an escape (`\\n`, `\\x1b`, ...),
so a caller cannot start a line of its own, colour a terminal or hide text;
tracebacks of server faults keep their line breaks. `RateLimit` keeps lines
that callers can provoke from flooding the log.
"""

from __future__ import annotations

import logging
import sys
import time

_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_control(text: str) -> str:
    """`text` with every control character (C0, DEL, C1, line separators) escaped."""
    return text.translate(_ESCAPES)


class EscapingFormatter(logging.Formatter):
    """A formatter whose messages never hold a raw control character."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        """The formatted line, with the message's control characters escaped."""
        record.message = escape_control(record.message)
        return super().formatMessage(record)


def configure_logging(level: str, formatter: logging.Formatter | None = None) -> None:
    """Send log lines at `level` and above to stderr, one per event, formatted by
    `formatter` (by default an EscapingFormatter: time, level, logger, message)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        formatter
        or EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc's own debug lines say nothing about the service.
    logging.getLogger("grpc").setLevel(max(root.level, logging.INFO))


class RateLimit:
    """Allows `per_second` lines on average, in bursts of up to `burst`.

    `allow()` says whether to write the next line; `take_suppressed()` how
    many were held back since the last line written, to say so in it.
    """

    def __init__(self, per_second: float = 10.0, burst: int = 50) -> None:
        self._rate = per_second
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._suppressed = 0

    def allow(self) -> bool:
        """Whether a line may be written now (counts it as suppressed if not)."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self._suppressed += 1
        return False

    def take_suppressed(self) -> int:
        """Lines held back since the last call, and start counting again."""
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed
