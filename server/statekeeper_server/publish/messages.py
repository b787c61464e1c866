"""The message a sink publishes for one event envelope, the same for every broker.

The body is the `EventEnvelope` as protobuf bytes (content type
PROTOBUF_CONTENT_TYPE) or as JSON (JSON_CONTENT_TYPE). Beside the body every
message carries the envelope's `namespace`, `run_id`, `seq` and `event_id`
(NATS headers, Redis stream fields), so a consumer can deduplicate without
decoding the body; JetStream also gets `Nats-Msg-Id` = the event id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from google.protobuf import json_format

from statekeeper.v1 import events_pb2

Format = Literal["protobuf", "json"]
FORMATS: tuple[Format, ...] = ("protobuf", "json")
PROTOBUF_CONTENT_TYPE = "application/x-protobuf; messageType=statekeeper.v1.EventEnvelope"
JSON_CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class Outgoing:
    """One event ready to publish: the body in the sink's format and its identity."""

    namespace: str
    run_id: str
    seq: int
    event_id: str
    kind: str
    """The event's kind: run_started, run_completed, run_failed, run_cancelled or custom."""
    type: str
    """The custom event's type, else the kind."""
    body: bytes
    content_type: str

    def fields(self) -> dict[str, str]:
        """The identity every message carries beside its body (headers, stream fields)."""
        return {
            "namespace": self.namespace,
            "run_id": self.run_id,
            "seq": str(self.seq),
            "event_id": self.event_id,
            "kind": self.kind,
            "content_type": self.content_type,
        }


def outgoing(namespace: str, envelope: bytes, body_format: Format) -> Outgoing:
    """The message for a serialized `EventEnvelope` of `namespace`, in `body_format`.

    The protobuf body is the envelope's bytes as given (as stored).
    """
    decoded = events_pb2.EventEnvelope.FromString(envelope)
    kind = decoded.event.WhichOneof("kind") or "unknown"
    event_type = decoded.event.custom.type if kind == "custom" else kind
    if body_format == "json":
        body = json_format.MessageToJson(decoded, indent=None).encode()
        content_type = JSON_CONTENT_TYPE
    else:
        body = envelope
        content_type = PROTOBUF_CONTENT_TYPE
    return Outgoing(
        namespace=namespace,
        run_id=decoded.run_id,
        seq=decoded.seq,
        event_id=decoded.event_id,
        kind=kind,
        type=event_type,
        body=body,
        content_type=content_type,
    )
