"""The fast pass of the request checks accepts exactly what the naming pass accepts."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from statekeeper.v1 import events_pb2, jobs_pb2
from statekeeper_server.errors import InvalidArgument
from statekeeper_server.limits import MAX_JSON_DEPTH
from statekeeper_server.request_checks import _check_fields, _shape_ok

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
