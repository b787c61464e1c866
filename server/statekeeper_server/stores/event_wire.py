"""Protobuf wire bytes of the event log, built by concatenation.

An append builds each `EventEnvelope` from the event's own bytes and a few
strings and varints, and a read answers with the stored bytes as they are:
no envelope is ever built as a message object or re-encoded on the hot
paths. The bytes are exactly what protobuf's own encoder produces for the
same fields (fields in number order, defaults omitted), so every client
decodes them as usual.
"""

from __future__ import annotations

from collections.abc import Iterable

from statekeeper_server.wire import message_field, repeated_message_field, varint

# Tags (field number << 3 | wire type) of the fields written here.
_ENVELOPE_EVENT_ID = b"\x0a"  # 1: string
_ENVELOPE_SEQ = b"\x10"  # 2: uint64
_ENVELOPE_RUN_ID = b"\x1a"  # 3: string
_ENVELOPE_SESSION_ID = b"\x22"  # 4: string
_ENVELOPE_EVENT = b"\x2a"  # 5: AgentEvent
_ENVELOPE_EMITTED_AT = b"\x32"  # 6: Timestamp
_TIMESTAMP_SECONDS = b"\x08"  # 1: int64
_TIMESTAMP_NANOS = b"\x10"  # 2: int32


def _delimited(tag: bytes, data: bytes) -> bytes:
    return tag + varint(len(data)) + data


def _string(tag: bytes, text: str) -> bytes:
    """A string field; empty (the default) is omitted."""
    return _delimited(tag, text.encode()) if text else b""


def timestamp_field(micros: int) -> bytes:
    """`emitted_at` of an envelope: a Timestamp of `micros` microseconds since the epoch."""
    seconds, rest = divmod(micros, 1_000_000)
    body = (_TIMESTAMP_SECONDS + varint(seconds) if seconds else b"") + (
        _TIMESTAMP_NANOS + varint(rest * 1000) if rest else b""
    )
    return _delimited(_ENVELOPE_EMITTED_AT, body)


def event_id_field(event_id: str) -> bytes:
    """`event_id` of an envelope (never empty)."""
    data = event_id.encode()
    return _ENVELOPE_EVENT_ID + varint(len(data)) + data


def event_field(event: bytes) -> bytes:
    """`event` of an envelope from the event's encoding (present even when empty)."""
    return _ENVELOPE_EVENT + varint(len(event)) + event


def run_id_field(run_id: str) -> bytes:
    """`run_id` of an envelope."""
    return _string(_ENVELOPE_RUN_ID, run_id)


def session_id_field(session_id: str) -> bytes:
    """`session_id` of an envelope (nothing when empty)."""
    return _string(_ENVELOPE_SESSION_ID, session_id)


def envelope(
    id_field: bytes,
    seq: int,
    run_field: bytes,
    session_field: bytes,
    event_field: bytes,
    time_field: bytes,
) -> bytes:
    """A serialized `EventEnvelope` of `seq`; the `*_field` parts come from the
    functions above."""
    return b"".join(
        (id_field, _ENVELOPE_SEQ, varint(seq), run_field, session_field, event_field, time_field)
    )


def pack_envelopes(envelopes: Iterable[bytes]) -> bytes:
    """The wire form of a message holding `envelopes` in field 1 from their encodings.

    `AppendEventResponse` (its one envelope), `AppendEventsResponse`,
    `EventBatch` and `ListEventsResponse` all keep their envelopes in field
    1, so these bytes are a whole response of the first three and merge
    into the last.
    """
    return repeated_message_field(1, envelopes)


def replay_batch_message(envelopes: Iterable[bytes]) -> bytes:
    """The wire form of `ReplayEventsResponse{batch: EventBatch{envelopes}}`."""
    return message_field(1, pack_envelopes(envelopes))
