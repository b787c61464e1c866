"""What the console shows of runs and their events, as plain values for templates."""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict

from statekeeper.v1 import events_pb2

EVENTS_PAGE = 100
"""Events of a run shown on one page of its timeline."""

FOLD_CHARS = 400
"""Event data longer than this (as pretty JSON) is folded under <details>."""

TERMINAL_KINDS = ("run_completed", "run_failed", "run_cancelled")
"""Event kinds that end a run: nothing can be appended after one."""

TERMINAL_CHOICES: dict[str, bool | None] = {"": None, "yes": True, "no": False}
"""The runs list's `terminal` choices: either state, ended runs, open runs (the
ListRuns `terminal` filter each asks for)."""


def run_view(run: events_pb2.RunInfo) -> dict[str, Any]:
    """A run of ListRuns as template values (ids, seqs, times, terminal)."""
    view = MessageToDict(run, preserving_proto_field_name=True)
    view.setdefault("session_id", "")
    view.setdefault("terminal", False)
    return view


def event_view(envelope: events_pb2.EventEnvelope) -> dict[str, Any]:
    """One event of a timeline: seq, time, session, kind, custom type and its
    data (or the other kinds' fields) as JSON-like values."""
    kind = envelope.event.WhichOneof("kind") or ""
    body = (
        MessageToDict(getattr(envelope.event, kind), preserving_proto_field_name=True)
        if kind
        else {}
    )
    custom_type = body.pop("type", "") if kind == "custom" else ""
    data = body.pop("data", {}) if kind == "custom" else body
    return {
        "seq": envelope.seq,
        "event_id": envelope.event_id,
        "session_id": envelope.session_id,
        "emitted_at": envelope.emitted_at.ToJsonString() if envelope.HasField("emitted_at") else "",
        "kind": kind,
        "type": custom_type,
        "data": data,
    }
