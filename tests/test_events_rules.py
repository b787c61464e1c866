"""The event log's backend-independent rules: validation of events and the replay wire form."""

from __future__ import annotations

import pytest

from statekeeper.v1 import events_pb2
from statekeeper_server.errors import InvalidArgument
from statekeeper_server.services.events import serialize_response
from statekeeper_server.stores.event_wire import pack_envelopes, replay_batch_message
from statekeeper_server.stores.events import (
    is_terminal,
    validate_event_inputs,
    validate_expectation,
)


def custom(event_type: str = "tool.call", event_id: str = "") -> events_pb2.EventInput:
    return events_pb2.EventInput(
        event=events_pb2.AgentEvent(custom=events_pb2.CustomEvent(type=event_type)),
        event_id=event_id,
    )


def completed() -> events_pb2.EventInput:
    return events_pb2.EventInput(
        event=events_pb2.AgentEvent(run_completed=events_pb2.RunCompleted(iterations=1))
    )


def rejected_field(inputs: list[events_pb2.EventInput]) -> str:
    with pytest.raises(InvalidArgument) as caught:
        validate_event_inputs(inputs, "inputs")
    return caught.value.field


def envelope(seq: int, payload_size: int = 10) -> events_pb2.EventEnvelope:
    event = events_pb2.AgentEvent(custom=events_pb2.CustomEvent(type="x" * payload_size))
    return events_pb2.EventEnvelope(event_id=f"e-{seq}", seq=seq, run_id="run-1", event=event)


def test_valid_batch_passes() -> None:
    started = events_pb2.EventInput(
        event=events_pb2.AgentEvent(run_started=events_pb2.RunStarted(session_id="s-1")),
        event_id="e-1",
    )
    validate_event_inputs([started, custom(event_id="e-2"), completed()], "inputs")


def test_input_without_event_is_rejected() -> None:
    assert rejected_field([custom(), events_pb2.EventInput()]) == "inputs[1].event"


def test_event_without_a_kind_is_rejected() -> None:
    empty = events_pb2.EventInput(event=events_pb2.AgentEvent())
    assert rejected_field([empty]) == "inputs[0].event"


def test_run_started_needs_a_valid_session_id() -> None:
    for session_id in ("", "../escape"):
        started = events_pb2.EventInput(
            event=events_pb2.AgentEvent(run_started=events_pb2.RunStarted(session_id=session_id))
        )
        assert rejected_field([started]) == "inputs[0].event.run_started.session_id"


def test_custom_type_must_have_1_to_128_characters() -> None:
    assert rejected_field([custom("")]) == "inputs[0].event.custom.type"
    assert rejected_field([custom("t" * 129)]) == "inputs[0].event.custom.type"
    validate_event_inputs([custom("t" * 128)], "inputs")


def test_unknown_finish_reason_is_rejected() -> None:
    event = events_pb2.AgentEvent(run_completed=events_pb2.RunCompleted(finish_reason=99))  # type: ignore[arg-type]
    field = rejected_field([events_pb2.EventInput(event=event)])
    assert field == "inputs[0].event.run_completed.finish_reason"


def test_event_id_must_be_an_id() -> None:
    assert rejected_field([custom(event_id="has space")]) == "inputs[0].event_id"


def test_event_id_may_not_repeat_within_a_batch() -> None:
    batch = [custom(event_id="a"), custom(event_id="b"), custom(event_id="a")]
    assert rejected_field(batch) == "inputs[2].event_id"


def test_nothing_may_follow_a_terminal_event_in_a_batch() -> None:
    assert rejected_field([custom(), completed(), custom()]) == "inputs[2].event"


def test_batch_holds_1_to_1000_events() -> None:
    assert rejected_field([]) == "inputs"
    assert rejected_field([custom()] * 1001) == "inputs"
    validate_event_inputs([custom()] * 1000, "inputs")


def test_field_prefix_names_the_request_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_event_inputs([custom("")], "batch.inputs")
    assert caught.value.field == "batch.inputs[0].event.custom.type"


def test_flag_expectations_must_be_true_when_set() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_expectation(events_pb2.SeqExpectation(no_run=False), "expectation")
    assert caught.value.field == "expectation.no_run"
    validate_expectation(events_pb2.SeqExpectation(last_seq=0), "expectation")
    validate_expectation(None, "expectation")


def test_only_completed_failed_and_cancelled_are_terminal() -> None:
    kinds = {
        "run_started": events_pb2.AgentEvent(run_started=events_pb2.RunStarted()),
        "custom": events_pb2.AgentEvent(custom=events_pb2.CustomEvent()),
        "run_completed": events_pb2.AgentEvent(run_completed=events_pb2.RunCompleted()),
        "run_failed": events_pb2.AgentEvent(run_failed=events_pb2.RunFailed()),
        "run_cancelled": events_pb2.AgentEvent(run_cancelled=events_pb2.RunCancelled()),
    }
    terminal = {name for name, event in kinds.items() if is_terminal(event.WhichOneof("kind"))}
    assert terminal == {"run_completed", "run_failed", "run_cancelled"}


def test_packed_envelopes_parse_as_an_event_batch_and_a_list_response() -> None:
    envelopes = [envelope(1), envelope(2, payload_size=300), envelope(3)]
    packed = pack_envelopes(e.SerializeToString() for e in envelopes)
    assert list(events_pb2.EventBatch.FromString(packed).envelopes) == envelopes
    response = events_pb2.ListEventsResponse(last_seq=3)
    response.MergeFromString(packed)
    assert list(response.envelopes) == envelopes
    assert response.last_seq == 3


def test_replay_batch_message_parses_as_a_batch_response() -> None:
    # 200 envelopes of ~300 bytes make the batch length a three-byte varint.
    envelopes = [envelope(seq, payload_size=300) for seq in range(1, 201)]
    wire = replay_batch_message([e.SerializeToString() for e in envelopes])
    message = events_pb2.ReplayEventsResponse.FromString(wire)
    assert message.WhichOneof("message") == "batch"
    assert list(message.batch.envelopes) == envelopes
    assert (
        wire
        == events_pb2.ReplayEventsResponse(
            batch=events_pb2.EventBatch(envelopes=envelopes)
        ).SerializeToString()
    )


def test_replay_batch_of_nothing_is_an_empty_batch() -> None:
    message = events_pb2.ReplayEventsResponse.FromString(replay_batch_message([]))
    assert message.HasField("batch")
    assert not message.batch.envelopes


def test_replay_messages_pass_encoded_batches_through_unchanged() -> None:
    wire = replay_batch_message([envelope(1).SerializeToString()])
    assert serialize_response(wire) is wire
    caught_up = events_pb2.ReplayEventsResponse(caught_up=events_pb2.CaughtUp(last_seq=4))
    assert serialize_response(caught_up) == caught_up.SerializeToString()
