"""A `statekeeper.append_event` job reads its payload and writes its result as
json_format would, without converting the event's custom data to Python.

Each case is checked against json_format applied to the whole value (what
the job did before it set the custom data aside), which is the contract:
the payload's `event` is an AgentEvent in JSON form, and the result is
`{"envelope": <EventEnvelope JSON>}`.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from statekeeper.v1 import events_pb2
from statekeeper_server.errors import InvalidArgument
from statekeeper_server.services.job_runner import append_result, parse_append_event

WIDE_ITEMS = 20_000


def payload(value: dict[str, Any]) -> struct_pb2.Struct:
    built = struct_pb2.Struct()
    built.update(value)
    return built


def wide_data() -> dict[str, Any]:
    return {"items": list(range(WIDE_ITEMS)), "nested": {"a": [True, None, "x"]}}


EVENTS: dict[str, dict[str, Any]] = {
    "custom with data": {
        "custom": {"type": "tool.done", "data": wide_data(), "timestamp": "2024-05-01T10:00:00Z"}
    },
    "custom with empty data": {"custom": {"type": "tool.done", "data": {}}},
    "custom without data": {"custom": {"type": "tool.done"}},
    "run started": {"runStarted": {"sessionId": "session-1", "model": "m"}},
    "run failed": {"run_failed": {"error": "boom " * 1000, "timestamp": "2024-05-01T10:00:00Z"}},
    "run completed": {"runCompleted": {"finishReason": "FINISH_REASON_STOP", "iterations": 3}},
}


def whole_event(value: dict[str, Any]) -> events_pb2.AgentEvent:
    """The event json_format makes of `value` as a payload carries it (a Struct)."""
    carried = json_format.MessageToDict(payload({"event": value}))["event"]
    return json_format.ParseDict(carried, events_pb2.AgentEvent())


@pytest.mark.parametrize("name", EVENTS)
def test_the_appended_event_is_the_one_json_format_reads_from_the_payload(name: str) -> None:
    event = EVENTS[name]
    call = parse_append_event(payload({"run_id": "run-1", "event": event}), "payload")

    item = call.event_input("job-1")

    assert item.event == whole_event(event)
    assert (call.run_id, item.event_id) == ("run-1", "job-1")


def test_the_payloads_event_id_names_the_event_and_its_expectation_is_read() -> None:
    call = parse_append_event(
        payload(
            {
                "run_id": "run-1",
                "event": EVENTS["custom with data"],
                "event_id": "event-7",
                "expectation": {"lastSeq": "4"},
            }
        ),
        "payload",
    )

    assert call.event_input("job-1").event_id == "event-7"
    assert call.expectation == events_pb2.SeqExpectation(last_seq=4)


@pytest.mark.parametrize(
    ("value", "field", "message"),
    [
        ({"run_id": "run-1", "event": {}, "extra": 1}, "payload.extra", "is not one of"),
        ({"event": EVENTS["custom without data"]}, "payload.run_id", "is required"),
        ({"run_id": 5, "event": EVENTS["custom without data"]}, "payload.run_id", "is required"),
        (
            {"run_id": "run-1", "event": EVENTS["custom without data"], "event_id": 3},
            "payload.event_id",
            "must be a string",
        ),
        ({"run_id": "run-1"}, "payload.event", "is required"),
        ({"run_id": "run-1", "event": [1]}, "payload.event", "is required"),
        (
            {"run_id": "run-1", "event": {"custom": {"type": "t", "data": [1], "x": 1}}},
            "payload.event",
            "",
        ),
        (
            {"run_id": "run-1", "event": {"custom": {"type": 7, "data": wide_data()}}},
            "payload.event",
            "",
        ),
        (
            {"run_id": "run-1", "event": {"custom": {"type": "t", "data": {}, "extra": 1}}},
            "payload.event",
            "",
        ),
        (
            {"run_id": "run-1", "event": {"custom": {"data": wide_data()}}},
            "payload.event.custom.type",
            "",
        ),
        (
            {"run_id": "run-1", "event": {}, "expectation": {"noRun": False}},
            "payload.event",
            "",
        ),
    ],
)
def test_a_wrong_payload_is_refused_naming_the_field(value: Any, field: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_append_event(payload(value), "payload")
    assert caught.value.field == field
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "event",
    [
        {"custom": {"type": "t", "data": [1], "x": 1}},
        {"custom": {"type": 7, "data": wide_data()}},
        {"custom": {"type": "t", "data": {}, "extra": 1}},
    ],
)
def test_a_refused_event_says_what_json_format_says_of_it(event: dict[str, Any]) -> None:
    with pytest.raises(json_format.ParseError) as expected:
        whole_event(event)
    with pytest.raises(InvalidArgument) as caught:
        parse_append_event(payload({"run_id": "run-1", "event": event}), "payload")
    assert str(expected.value).splitlines()[0] in str(caught.value)


def envelope(event: events_pb2.AgentEvent, session_id: str = "session-1") -> bytes:
    return events_pb2.EventEnvelope(
        event_id="01890000-0000-7000-8000-000000000000",
        seq=12,
        run_id="run-1",
        session_id=session_id,
        event=event,
        emitted_at=timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=123_000),
    ).SerializeToString()


@pytest.mark.parametrize("name", EVENTS)
def test_the_result_is_the_envelope_in_json_form(name: str) -> None:
    stored = envelope(whole_event(EVENTS[name]))

    result = append_result(stored)

    reference = {"envelope": json_format.MessageToDict(events_pb2.EventEnvelope.FromString(stored))}
    assert result == json_format.ParseDict(reference, struct_pb2.Struct())


def test_the_result_of_an_envelope_without_a_session_leaves_it_out() -> None:
    result = append_result(envelope(whole_event(EVENTS["custom without data"]), session_id=""))
    assert "sessionId" not in result.fields["envelope"].struct_value.fields
