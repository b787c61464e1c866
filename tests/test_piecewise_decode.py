"""Decoding a body in pieces gives exactly the message decoding it whole gives."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from statekeeper.v1 import events_pb2
from statekeeper_server import piecewise
from statekeeper_server.piecewise import decode_in_pieces, merge_in_pieces
from statekeeper_server.wire_twins import depth_twin

SMALL_PIECE = 48
"""Bytes per piece in these tests, so that small messages are cut too."""

scalars = (
    st.none()
    | st.booleans()
    | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=60,
)


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(piecewise, "PIECE_BYTES", SMALL_PIECE)


def batch(data: list[Any]) -> events_pb2.AppendEventsRequest:
    request = events_pb2.AppendEventsRequest(run_id="run-1")
    for item in data:
        event = request.inputs.add().event
        event.custom.type = "t"
        event.custom.data.update({"x": item})
    return request


@settings(max_examples=200, deadline=None)
@given(st.lists(json_values, min_size=1, max_size=4))
def test_a_batch_decoded_in_pieces_equals_the_batch_decoded_whole(data: list[Any]) -> None:
    body = batch(data).SerializeToString()
    decoded = asyncio.run(decode_in_pieces(events_pb2.AppendEventsRequest, body))
    assert decoded == events_pb2.AppendEventsRequest.FromString(body)


def test_a_key_sent_twice_keeps_its_last_value_as_decoding_whole_does() -> None:
    first = struct_pb2.Struct()
    first.update({"k": {"old": "x" * 100, "kept?": 1}})
    second = struct_pb2.Struct()
    second.update({"k": {"new": "y" * 100}})
    body = first.SerializeToString() + second.SerializeToString()
    decoded = asyncio.run(decode_in_pieces(struct_pb2.Struct, body))
    assert decoded == struct_pb2.Struct.FromString(body)
    assert set(decoded.fields["k"].struct_value.fields) == {"new"}


def test_a_message_field_sent_twice_is_merged_as_decoding_whole_does() -> None:
    first = events_pb2.AppendEventRequest(run_id="run-1")
    first.input.event.custom.data.update({"a": "x" * 100})
    second = events_pb2.AppendEventRequest()
    second.input.event.custom.data.update({"b": "y" * 100})
    body = first.SerializeToString() + second.SerializeToString()
    decoded = asyncio.run(decode_in_pieces(events_pb2.AppendEventRequest, body))
    assert decoded == events_pb2.AppendEventRequest.FromString(body)
    assert set(decoded.input.event.custom.data.fields) == {"a", "b"}


def test_text_that_is_not_utf8_fails_as_decoding_whole_does() -> None:
    request = events_pb2.AppendEventRequest(run_id="run-1")
    request.input.event.custom.data.update({"a": "x" * 100, "b": "marker"})
    body = request.SerializeToString().replace(b"marker", b"\xc3\x28rker")
    with pytest.raises(DecodeError):
        events_pb2.AppendEventRequest.FromString(body)
    with pytest.raises(DecodeError):
        asyncio.run(decode_in_pieces(events_pb2.AppendEventRequest, body))


@settings(max_examples=100, deadline=None)
@given(st.lists(json_values, min_size=1, max_size=4))
def test_a_wire_twin_decoded_in_pieces_equals_the_twin_decoded_whole(data: list[Any]) -> None:
    body = batch(data).SerializeToString()
    twin = depth_twin(events_pb2.AppendEventsRequest.DESCRIPTOR)
    decoded = asyncio.run(decode_in_pieces(twin, body))
    assert decoded == twin.FromString(body)


@settings(max_examples=200, deadline=None)
@given(st.lists(json_values, min_size=1, max_size=4))
def test_a_record_merged_in_pieces_on_a_thread_equals_the_record_decoded_whole(
    data: list[Any],
) -> None:
    body = batch(data).SerializeToString()
    merged = events_pb2.AppendEventsRequest()
    merge_in_pieces(merged, body)
    assert merged == events_pb2.AppendEventsRequest.FromString(body)


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values, min_size=1, max_size=4), st.data())
def test_a_stored_record_that_does_not_decode_whole_never_passes_in_pieces(
    data: list[Any], draws: st.DataObject
) -> None:
    body = bytearray(batch(data).SerializeToString())
    if draws.draw(st.booleans(), "cut"):
        body = body[: draws.draw(st.integers(0, len(body) - 1), "length")]
    else:
        body[draws.draw(st.integers(0, len(body) - 1), "at")] ^= draws.draw(
            st.integers(1, 255), "flip"
        )
    try:
        events_pb2.AppendEventsRequest.FromString(bytes(body))
    except DecodeError:
        with pytest.raises(DecodeError):
            merge_in_pieces(events_pb2.AppendEventsRequest(), bytes(body))
