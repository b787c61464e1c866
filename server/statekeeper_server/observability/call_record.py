"""What the layers of one call learn about it, for the lines and spans written when it ends.

The outer layers (traces, access log) read what inner code records: the
ErrorInfo reason of a refused call (error layer) and the bytes of its
request and responses (request layer). The record lives in a context
variable: gRPC runs each call in its own task, and decodes a request in
that task before any layer runs, so the record never crosses calls.
"""

from __future__ import annotations

from contextvars import ContextVar


class CallRecord:
    """The facts of one call gathered while it runs."""

    __slots__ = ("reason", "request_bytes", "response_bytes")

    def __init__(self) -> None:
        self.reason = ""
        """The ErrorInfo reason the call failed with ("" when none)."""
        self.request_bytes = 0
        """Bytes of every request message received (as sent on the wire)."""
        self.response_bytes = 0
        """Bytes of every response message sent."""


_record: ContextVar[CallRecord | None] = ContextVar("statekeeper_call_record", default=None)


def current() -> CallRecord | None:
    """The current call's record, if a layer or the decoder started one."""
    return _record.get()


def current_or_new() -> CallRecord:
    """The current call's record, started now if nothing started it yet."""
    record = _record.get()
    if record is None:
        record = CallRecord()
        _record.set(record)
    return record


def note_reason(reason: str) -> None:
    """Record the reason the current call failed with (nothing when no record is kept)."""
    record = _record.get()
    if record is not None:
        record.reason = reason
