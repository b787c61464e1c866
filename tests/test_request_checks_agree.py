"""The fast pass of the request checks accepts exactly what the naming pass accepts,
and the wire screen of JSON values (`wire_twins`) passes exactly those bodies."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from statekeeper.v1 import checkpoints_pb2, events_pb2, jobs_pb2
from statekeeper_server.errors import InvalidArgument
from statekeeper_server.limits import MAX_JSON_DEPTH, MAX_JSON_OBJECT_KEYS
from statekeeper_server.request_checks import _check_fields, _shape_ok
from statekeeper_server.wire_twins import count_keys, screen_for

numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**40), 2**40)
scalars = st.none() | st.booleans() | st.text(max_size=4) | numbers


def nested(depth: int) -> st.SearchStrategy[Any]:
    """JSON values nesting up to `depth` levels of objects and lists."""
    if depth == 0:
        return scalars
    inner = nested(depth - 1)
    return (
        scalars
        | st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    )


def as_value(value: Any) -> struct_pb2.Value:
    """A Value holding `value`, non-finite numbers included (which `update` refuses)."""
    result = struct_pb2.Value()
    if value is None:
        result.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        result.bool_value = value
    elif isinstance(value, int | float):
        result.number_value = float(value)
    elif isinstance(value, str):
        result.string_value = value
    elif isinstance(value, list):
        result.list_value.values.extend(as_value(item) for item in value)
    else:
        for key, item in value.items():
            result.struct_value.fields[key].CopyFrom(as_value(item))
    return result


def naming_pass_accepts(message: Any) -> bool:
    try:
        _check_fields(message, "")
    except InvalidArgument:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.lists(nested(MAX_JSON_DEPTH + 2), min_size=1, max_size=3), numbers)
def test_both_passes_judge_event_data_alike(data: list[Any], priority_weight: float) -> None:
    request = events_pb2.AppendEventsRequest(run_id="run-1")
    for item in data:
        event = request.inputs.add().event
        event.custom.type = "t"
        event.custom.data.fields["x"].CopyFrom(as_value(item))
    assert _shape_ok(request) == naming_pass_accepts(request)


def deep_list(levels: int) -> struct_pb2.Value:
    value = struct_pb2.Value(number_value=1.0)
    for _ in range(levels):
        outer = struct_pb2.Value()
        outer.list_value.values.append(value)
        value = outer
    return value


def test_both_passes_refuse_data_one_level_past_the_depth_limit() -> None:
    request = events_pb2.AppendEventRequest(run_id="run-1")
    request.input.event.custom.type = "t"
    request.input.event.custom.data.fields["x"].CopyFrom(deep_list(MAX_JSON_DEPTH))
    assert not _shape_ok(request)
    assert not naming_pass_accepts(request)


def test_both_passes_accept_data_at_the_depth_limit() -> None:
    request = events_pb2.AppendEventRequest(run_id="run-1")
    request.input.event.custom.type = "t"
    request.input.event.custom.data.fields["x"].CopyFrom(deep_list(MAX_JSON_DEPTH - 1))
    assert _shape_ok(request)
    assert naming_pass_accepts(request)


@given(st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True))
def test_both_passes_judge_timestamps_and_numbers_alike(seconds: int, weight: float) -> None:
    request = jobs_pb2.EnqueueJobRequest()
    request.job.queue = "q"
    request.job.payload.fields["w"].number_value = weight
    request.job.run_after.seconds = seconds
    assert _shape_ok(request) == naming_pass_accepts(request)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_the_fast_pass_refuses_exactly_the_numbers_that_are_not_finite(weight: float) -> None:
    request = jobs_pb2.EnqueueJobRequest()
    request.job.payload.fields["w"].number_value = weight
    assert _shape_ok(request) == math.isfinite(weight)


def screen_passes(message: Message) -> bool:
    screen = screen_for(message.DESCRIPTOR)
    assert screen is not None
    return screen.passes(message.SerializeToString())


@settings(max_examples=300, deadline=None)
@given(st.lists(nested(MAX_JSON_DEPTH + 2), min_size=1, max_size=3))
def test_the_wire_screen_passes_exactly_the_event_data_the_checks_accept(data: list[Any]) -> None:
    request = events_pb2.AppendEventsRequest(run_id="run-1")
    for item in data:
        event = request.inputs.add().event
        event.custom.type = "t"
        event.custom.data.fields["x"].CopyFrom(as_value(item))
    assert screen_passes(request) == naming_pass_accepts(request)


@settings(max_examples=200, deadline=None)
@given(nested(MAX_JSON_DEPTH + 2))
def test_the_wire_screen_passes_exactly_the_lone_values_the_checks_accept(data: Any) -> None:
    request = checkpoints_pb2.PersistAgentCheckpointRequest()
    request.checkpoint.agent_id = "a"
    request.checkpoint.metadata.custom.CopyFrom(as_value(data))
    assert screen_passes(request) == naming_pass_accepts(request)


def test_the_wire_screen_passes_data_at_the_depth_limit_and_not_one_level_past() -> None:
    request = events_pb2.AppendEventRequest(run_id="run-1")
    request.input.event.custom.type = "t"
    request.input.event.custom.data.fields["x"].CopyFrom(deep_list(MAX_JSON_DEPTH - 1))
    assert screen_passes(request)
    request.input.event.custom.data.fields["x"].CopyFrom(deep_list(MAX_JSON_DEPTH))
    assert not screen_passes(request)


def wide_value(keys: int) -> struct_pb2.Value:
    value = struct_pb2.Value()
    value.struct_value.update({f"k{index:05d}": index for index in range(keys)})
    return value


PLACES = {
    "an object's value": lambda wide: as_struct_value({"a": 1, "b": wide}),
    "a list item": lambda wide: as_list_value([1, wide]),
    "lists in an object": lambda wide: as_struct_value(
        {"a": as_list_value([as_list_value([wide])])}
    ),
}


def as_struct_value(fields: dict[str, Any]) -> struct_pb2.Value:
    value = struct_pb2.Value()
    for key, item in fields.items():
        value.struct_value.fields[key].CopyFrom(
            item if isinstance(item, struct_pb2.Value) else as_value(item)
        )
    return value


def as_list_value(items: list[Any]) -> struct_pb2.Value:
    value = struct_pb2.Value()
    for item in items:
        value.list_value.values.add().CopyFrom(
            item if isinstance(item, struct_pb2.Value) else as_value(item)
        )
    return value


def refused_field(message: Message) -> str | None:
    """The field the key count refuses `message` naming; None if it accepts it."""
    try:
        count_keys(message.DESCRIPTOR, message.SerializeToString())
    except InvalidArgument as error:
        return error.field
    return None


@pytest.mark.parametrize("place", sorted(PLACES))
def test_the_key_count_refuses_an_object_one_key_past_the_limit_wherever_it_sits(
    place: str,
) -> None:
    request = events_pb2.AppendEventRequest(run_id="run-1")
    request.input.event.custom.type = "t"
    data = request.input.event.custom.data.fields["x"]
    data.CopyFrom(PLACES[place](wide_value(MAX_JSON_OBJECT_KEYS)))
    assert refused_field(request) is None
    data.CopyFrom(PLACES[place](wide_value(MAX_JSON_OBJECT_KEYS + 1)))
    assert refused_field(request) == "input.event.custom.data"


@settings(max_examples=200, deadline=None)
@given(st.lists(nested(MAX_JSON_DEPTH), min_size=1, max_size=3))
def test_a_screened_twin_measures_what_the_request_measures(data: list[Any]) -> None:
    request = events_pb2.AppendEventsRequest(run_id="run-1")
    for item in data:
        event = request.inputs.add().event
        event.custom.type = "t"
        event.custom.data.fields["x"].CopyFrom(as_value(item))
    screen = screen_for(request.DESCRIPTOR)
    assert screen is not None
    twin: Any = screen.screen(request.SerializeToString())
    if twin is None:  # not finite: the exact check decides, on the request itself
        assert not naming_pass_accepts(request)
        return
    assert twin.ByteSize() == request.ByteSize()
    assert [item.ByteSize() for item in twin.inputs] == [item.ByteSize() for item in request.inputs]
