"""Envelopes built by concatenation are exactly protobuf's own encoding."""

from __future__ import annotations

import pytest

from statekeeper.v1 import events_pb2
from statekeeper_server.stores import event_wire
from statekeeper_server.timestamps import to_timestamp


def built(event_id: str, seq: int, run_id: str, session_id: str, micros: int) -> bytes:
    event = events_pb2.AgentEvent(custom=events_pb2.CustomEvent(type="tool.call"))
    return event_wire.envelope(
        event_wire.event_id_field(event_id),
        seq,
        event_wire.run_id_field(run_id),
        event_wire.session_id_field(session_id),
        event_wire.event_field(event.SerializeToString()),
        event_wire.timestamp_field(micros),
    )


def encoded_by_protobuf(
    event_id: str, seq: int, run_id: str, session_id: str, micros: int
) -> bytes:
    return events_pb2.EventEnvelope(
        event_id=event_id,
        seq=seq,
        run_id=run_id,
        session_id=session_id,
        event=events_pb2.AgentEvent(custom=events_pb2.CustomEvent(type="tool.call")),
        emitted_at=to_timestamp(micros),
    ).SerializeToString()


@pytest.mark.parametrize(
    ("event_id", "seq", "run_id", "session_id", "micros"),
    [
        ("0192e0a0-0000-7000-8000-000000000000", 1, "run-1", "session-1", 1_700_000_000_123_456),
        ("e", 127, "r", "", 1_700_000_000_000_000),
        ("e", 128, "r", "s", 999_999),
        ("évé", 2**63 - 1, "ラン" * 70, "s" * 300, 0),
    ],
)
def test_built_envelope_equals_protobufs_encoding(
    event_id: str, seq: int, run_id: str, session_id: str, micros: int
) -> None:
    assert built(event_id, seq, run_id, session_id, micros) == encoded_by_protobuf(
        event_id, seq, run_id, session_id, micros
    )


def test_empty_event_is_still_present() -> None:
    data = event_wire.envelope(
        event_wire.event_id_field("e"),
        1,
        event_wire.run_id_field("r"),
        b"",
        event_wire.event_field(b""),
        event_wire.timestamp_field(1),
    )
    assert events_pb2.EventEnvelope.FromString(data).HasField("event")


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16_383, 16_384, 2**63 - 1, 2**64 - 1])
def test_varint_matches_protobufs_uint64_encoding(value: int) -> None:
    encoded = events_pb2.EventEnvelope(seq=value).SerializeToString()
    expected = encoded[1:] if value else b"\x00"
    assert event_wire.varint(value) == expected


def test_packed_envelopes_are_a_whole_append_response() -> None:
    envelopes = [encoded_by_protobuf(f"e-{n}", n, "r", "s", n) for n in (1, 2)]
    single = events_pb2.AppendEventResponse.FromString(event_wire.pack_envelopes(envelopes[:1]))
    assert single.envelope.SerializeToString() == envelopes[0]
    batch = events_pb2.AppendEventsResponse.FromString(event_wire.pack_envelopes(envelopes))
    assert [e.SerializeToString() for e in batch.envelopes] == envelopes
