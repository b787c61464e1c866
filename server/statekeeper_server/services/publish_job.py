"""The built-in job kind `statekeeper.publish_event`: publish one event to a sink.

Its payload names a configured sink and either

- an event to publish as given: `{"sink", "run_id", "event" (AgentEvent
  JSON), "event_id"?}`; the message is an envelope with that event, seq 0,
  the payload's event id (else the job's id, so the retries of one job are
  one message to JetStream's deduplication) and the time of publishing; or
- a stored envelope: `{"sink", "run_id", "seq"}`, published as stored.

The payload is checked at enqueue; a sink that is down fails the attempt
for a retry, a message the sink refuses for good makes the job DEAD.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from google.protobuf import struct_pb2

from statekeeper.v1 import events_pb2
from statekeeper_server.errors import InvalidArgument, NotFound
from statekeeper_server.publish.sinks import Sinks
from statekeeper_server.services.job_payloads import (
    json_message,
    set_aside_custom_data,
    string_field,
)
from statekeeper_server.stores.events import EventStore, validate_event_input
from statekeeper_server.timestamps import now_us, to_timestamp
from statekeeper_server.validation import require_id

PUBLISH_EVENT_KIND = "statekeeper.publish_event"
PUBLISH_EVENT_FIELDS = ("sink", "run_id", "event", "event_id", "seq")
MAX_SEQ = 2**53
"""Largest seq a JSON payload can name exactly (a JSON number is a double)."""


@dataclass(frozen=True)
class PublishEventCall:
    """What a `statekeeper.publish_event` job publishes: an event given in the
    payload (`event`), or the stored envelope `seq` of the run."""

    sink: str
    run_id: str
    event: events_pb2.EventInput | None
    seq: int


def parse_publish_event(
    payload: struct_pb2.Struct, field: str, sinks: Collection[str]
) -> PublishEventCall:
    """Read a publish_event payload; InvalidArgument naming `<field>.<part>` if it is
    wrong or names a sink that is not configured."""
    fields = payload.fields
    for name in fields:
        if name not in PUBLISH_EVENT_FIELDS:
            raise InvalidArgument(
                f"{field}.{name}", "is not one of " + ", ".join(PUBLISH_EVENT_FIELDS)
            )
    sink = string_field(fields, "sink")
    if not sink:
        raise InvalidArgument(f"{field}.sink", "is required (the name of a configured sink)")
    if sink not in sinks:
        configured = ", ".join(sorted(sinks)) or "none (see --sink)"
        raise InvalidArgument(f"{field}.sink", f"names no configured sink; sinks: {configured}")
    run_id = string_field(fields, "run_id")
    if run_id is None:
        raise InvalidArgument(f"{field}.run_id", "is required (a string)")
    require_id(run_id, f"{field}.run_id")
    if ("event" in fields) == ("seq" in fields):
        raise InvalidArgument(
            f"{field}.event", "give either event (to publish) or seq (of a stored event)"
        )
    if "seq" in fields:
        if "event_id" in fields:
            raise InvalidArgument(f"{field}.event_id", "goes with event, not with seq")
        value = fields["seq"]
        seq = value.number_value
        if value.WhichOneof("kind") != "number_value" or not seq.is_integer() or seq < 1:
            raise InvalidArgument(f"{field}.seq", "must be a whole number of at least 1")
        if seq > MAX_SEQ:
            raise InvalidArgument(f"{field}.seq", f"must be at most {MAX_SEQ}")
        return PublishEventCall(sink, run_id, None, int(seq))
    event_id = string_field(fields, "event_id") if "event_id" in fields else ""
    if event_id is None:
        raise InvalidArgument(f"{field}.event_id", "must be a string")
    item = events_pb2.EventInput(event_id=event_id)
    event_json, data = set_aside_custom_data(fields, f"{field}.event")
    json_message(event_json, item.event, f"{field}.event")
    if data is not None:
        item.event.custom.data.CopyFrom(data)
    validate_event_input(item, field)
    return PublishEventCall(sink, run_id, item, 0)


async def publish_event(
    call: PublishEventCall, namespace: str, job_id: str, events: EventStore, sinks: Sinks
) -> struct_pb2.Struct:
    """Publish what `call` names; the job's result `{"sink", "run_id", "seq", "event_id"}`.

    NotFound when the stored envelope is gone (the job cannot succeed);
    SinkUnavailable or SinkRejected from the sink.
    """
    if call.event is None:
        page = await events.read(namespace, call.run_id, call.seq - 1, 1)
        if not page.envelopes or page.through_seq != call.seq:
            raise NotFound("EVENT_NOT_FOUND", f"run {call.run_id} has no event with seq {call.seq}")
        envelope = page.envelopes[0]
    else:
        envelope = events_pb2.EventEnvelope(
            event_id=call.event.event_id or job_id,
            run_id=call.run_id,
            event=call.event.event,
            emitted_at=to_timestamp(now_us()),
        ).SerializeToString()
    sent = await sinks.publish(call.sink, namespace, envelope)
    result = struct_pb2.Struct()
    result.update(
        {"sink": call.sink, "run_id": call.run_id, "seq": sent.seq, "event_id": sent.event_id}
    )
    return result
