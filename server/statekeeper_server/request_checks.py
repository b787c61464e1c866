"""Checks every decoded request passes before any servicer sees it.

Two kinds of rule, both applied by the request interceptor to every RPC:

- **Shape**, derived from the message descriptors, so a new RPC or field is
  covered without being listed: unsigned integers stay within the signed
  range of their width (the widest integer of every database and of JSON
  readers), floating-point numbers are finite, Timestamps and Durations lie
  in the range protobuf defines, and every Struct (JSON) value nests at most
  `MAX_JSON_DEPTH` levels and holds only finite numbers.
- **Size**, per request type: a record that could never be returned is
  refused before the store is touched (RECORD_TOO_LARGE), and so is a batch
  whose response would not fit in one message (BATCH_TOO_LARGE).

Every failure names the field, such as `inputs[3].event.custom.data`.

The request interceptor screens JSON values at C speed on the request's
wire bytes first (`wire_twins`); this module then checks the rest
(`screened_twin`), and walks JSON values in Python only for a body the
screen could not clear.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor, duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from statekeeper.v1 import checkpoints_pb2, events_pb2, jobs_pb2, snapshots_pb2
from statekeeper_server.errors import InvalidArgument, TooLarge
from statekeeper_server.limits import (
    MAX_FILTER_KEYS,
    MAX_JOB_PAYLOAD_BYTES,
    MAX_JOB_RESULT_BYTES,
    MAX_JSON_DEPTH,
    MAX_METADATA_BYTES,
    MAX_RECORD_BYTES,
    RESPONSE_BUDGET_BYTES,
)

FieldDescriptor = descriptor.FieldDescriptor

MIN_TIMESTAMP_SECONDS = -62_135_596_800
"""0001-01-01T00:00:00Z, the earliest Timestamp protobuf allows."""
MAX_TIMESTAMP_SECONDS = 253_402_300_799
"""9999-12-31T23:59:59Z, the latest Timestamp protobuf allows."""
MAX_DURATION_SECONDS = 315_576_000_000
"""About 10,000 years, the longest Duration protobuf allows."""

STAMP_BYTES = 128
"""Most bytes the server adds to a saved snapshot or checkpoint (ids, version, times)."""
ENVELOPE_OVERHEAD_BYTES = 384
"""Most bytes an event envelope adds to its input (minted id, seq, run and session ids,
commit time)."""
JOB_OVERHEAD_BYTES = 768
"""Most bytes a stored job adds to its spec (id, state, attempt, times, backoff)."""


def check_request(request: Message, *, screened_twin: Message | None = None) -> None:
    """Raise InvalidArgument or TooLarge (naming the field) unless `request` may be served.

    With `screened_twin` (the request's depth twin, which passed the screen
    of `wire_twins`), the request's JSON values are known to be within the
    depth limit and finite and are not walked again, and records are
    measured on the twin: it encodes to the same sizes (protobuf measures
    a twin's repeated entries several times faster than a map's). Every
    other check applies.
    """
    if screened_twin is not None:
        if not _shape_ok_beside_json(request):
            _check_fields(request, "", skip_json=True)
    elif not _shape_ok(request):
        # The fast pass only says that something is wrong; this one says where.
        _check_fields(request, "")
    rule = _SIZE_RULES.get(request.DESCRIPTOR.full_name)
    if rule is not None:
        rule(request if screened_twin is None else screened_twin)


# -- shape ---------------------------------------------------------------------------

Check = Callable[[Any, str], None]
"""Checks one value of a field; the string is the field's path, for errors."""


def _check_fields(message: Message, path: str, *, skip_json: bool = False) -> None:
    checks = _field_checks(message.DESCRIPTOR, skip_json)
    if not checks:
        return
    for field, value in message.ListFields():
        check = checks.get(field.name)
        if check is None:
            continue
        name = path + field.name
        if field.is_repeated:
            for index, item in enumerate(value):
                check(item, f"{name}[{index}]")
        else:
            check(value, name)


@functools.cache
def _field_checks(message_type: descriptor.Descriptor, skip_json: bool = False) -> dict[str, Check]:
    """The check of every field of `message_type` that can hold a wrong value (but
    JSON values, with `skip_json`)."""
    checks: dict[str, Check] = {}
    for field in message_type.fields:
        check = _check_for(field, skip_json)
        if check is not None:
            checks[field.name] = check
    return checks


_SIGNED_LIMITS = {
    FieldDescriptor.TYPE_UINT32: 2**31 - 1,
    FieldDescriptor.TYPE_FIXED32: 2**31 - 1,
    FieldDescriptor.TYPE_UINT64: 2**63 - 1,
    FieldDescriptor.TYPE_FIXED64: 2**63 - 1,
}
_FLOATS = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)


def _check_for(field: FieldDescriptor, skip_json: bool) -> Check | None:
    if field.type in _SIGNED_LIMITS:
        return functools.partial(_check_unsigned, maximum=_SIGNED_LIMITS[field.type])
    if field.type in _FLOATS:
        return _check_finite
    message_type = field.message_type
    if message_type is None:
        return None
    if skip_json and message_type.full_name in _JSON:
        return None
    special = _WELL_KNOWN.get(message_type.full_name)
    if special is not None:
        return special
    if not _needs_checks(message_type, frozenset(), skip_json):
        return None
    return _check_nested_beside_json if skip_json else _check_nested


def _needs_checks(
    message_type: descriptor.Descriptor, seen: frozenset[str], skip_json: bool
) -> bool:
    """Whether any field of `message_type`, at any depth, has a check."""
    if message_type.full_name in seen:
        return False
    seen = seen | {message_type.full_name}
    for field in message_type.fields:
        if field.type in _SIGNED_LIMITS or field.type in _FLOATS:
            return True
        nested = field.message_type
        if nested is None or (skip_json and nested.full_name in _JSON):
            continue
        if nested.full_name in _WELL_KNOWN or _needs_checks(nested, seen, skip_json):
            return True
    return False


def _check_nested(value: Message, path: str) -> None:
    _check_fields(value, path + ".")


def _check_nested_beside_json(value: Message, path: str) -> None:
    _check_fields(value, path + ".", skip_json=True)


def _check_unsigned(value: int, path: str, *, maximum: int) -> None:
    if value > maximum:
        raise InvalidArgument(path, f"must be at most {maximum}")


def _check_finite(value: float, path: str) -> None:
    if not math.isfinite(value):
        raise InvalidArgument(path, "must be a finite number (not NaN or Infinity)")


def _check_timestamp(value: timestamp_pb2.Timestamp, path: str) -> None:
    if not (
        MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS
        and 0 <= value.nanos <= 999_999_999
    ):
        raise InvalidArgument(path, "must be between 0001-01-01 and 9999-12-31")


def _check_duration(value: duration_pb2.Duration, path: str) -> None:
    seconds, nanos = value.seconds, value.nanos
    if (
        abs(seconds) > MAX_DURATION_SECONDS
        or abs(nanos) > 999_999_999
        or (seconds > 0 > nanos)
        or (seconds < 0 < nanos)
    ):
        raise InvalidArgument(
            path, f"must be a valid duration of at most {MAX_DURATION_SECONDS} seconds"
        )


def _check_struct(value: struct_pb2.Struct, path: str) -> None:
    _check_json(value.fields.values(), 1, path)


def _check_list(value: struct_pb2.ListValue, path: str) -> None:
    _check_json(value.values, 1, path)


def _check_value(value: struct_pb2.Value, path: str) -> None:
    _check_json((value,), 0, path)


def _check_json(values: Iterable[struct_pb2.Value], depth: int, path: str) -> None:
    """Check the values of an object or list nested `depth` levels deep (0: a lone value)."""
    if depth > MAX_JSON_DEPTH:
        raise InvalidArgument(path, f"must not nest objects and lists deeper than {MAX_JSON_DEPTH}")
    for value in values:
        kind = value.WhichOneof("kind")
        if kind == "number_value":
            _check_finite(value.number_value, path)
        elif kind == "struct_value":
            _check_json(value.struct_value.fields.values(), depth + 1, path)
        elif kind == "list_value":
            _check_json(value.list_value.values, depth + 1, path)


_WELL_KNOWN: dict[str, Check] = {
    timestamp_pb2.Timestamp.DESCRIPTOR.full_name: _check_timestamp,
    duration_pb2.Duration.DESCRIPTOR.full_name: _check_duration,
    struct_pb2.Struct.DESCRIPTOR.full_name: _check_struct,
    struct_pb2.ListValue.DESCRIPTOR.full_name: _check_list,
    struct_pb2.Value.DESCRIPTOR.full_name: _check_value,
}
_JSON = frozenset(
    message.DESCRIPTOR.full_name
    for message in (struct_pb2.Struct, struct_pb2.ListValue, struct_pb2.Value)
)


# -- shape, the fast pass -------------------------------------------------------------
#
# Every request is checked, so the common case (nothing wrong) is a pass that
# builds no field paths and calls as little Python as it can; only when it finds
# something does `_check_fields` walk again to name the field.


def _shape_ok(message: Message) -> bool:
    return _plan_ok(_fast_plan(message.DESCRIPTOR), message)


def _shape_ok_beside_json(message: Message) -> bool:
    return _plan_ok(_fast_plan(message.DESCRIPTOR, True), message)


def _plan_ok(plan: dict[FieldDescriptor, Callable[[Any], bool]], message: Message) -> bool:
    if not plan:
        return True
    for field, value in message.ListFields():
        ok = plan.get(field)
        if ok is None:
            continue
        if field.is_repeated:
            for item in value:
                if not ok(item):
                    return False
        elif not ok(value):
            return False
    return True


@functools.cache
def _fast_plan(
    message_type: descriptor.Descriptor, skip_json: bool = False
) -> dict[FieldDescriptor, Callable[[Any], bool]]:
    """The fast check of every field of `message_type` that `_field_checks` checks."""
    checked = _field_checks(message_type, skip_json)
    plan: dict[FieldDescriptor, Callable[[Any], bool]] = {}
    for field in message_type.fields:
        if field.name not in checked:
            continue
        if field.type in _SIGNED_LIMITS:
            plan[field] = functools.partial(_at_most, _SIGNED_LIMITS[field.type])
        elif field.type in _FLOATS:
            plan[field] = math.isfinite
        elif field.message_type is not None:
            nested = _shape_ok_beside_json if skip_json else _shape_ok
            plan[field] = _FAST_WELL_KNOWN.get(field.message_type.full_name, nested)
    return plan


def _at_most(maximum: int, value: int) -> bool:
    return value <= maximum


def _struct_ok(value: struct_pb2.Struct) -> bool:
    return _object_ok(value.fields, 1)


def _list_ok(value: struct_pb2.ListValue) -> bool:
    return _array_ok(value.values, 1)


def _value_ok(value: struct_pb2.Value) -> bool:
    return _json_value_ok(value, 0)


def _object_ok(fields: Any, depth: int) -> bool:
    """Whether an object's values nest at most MAX_JSON_DEPTH levels and are finite.

    Keys are iterated and looked up rather than going through `.values()`,
    which is a Python-level view over the map.
    """
    if depth > MAX_JSON_DEPTH:
        return False
    for key in fields:  # noqa: SIM110 - a plain loop: all() over a generator is slower
        if not _json_value_ok(fields[key], depth):
            return False
    return True


def _array_ok(values: Any, depth: int) -> bool:
    if depth > MAX_JSON_DEPTH:
        return False
    for value in values:  # noqa: SIM110 - a plain loop: all() over a generator is slower
        if not _json_value_ok(value, depth):
            return False
    return True


def _json_value_ok(value: struct_pb2.Value, depth: int) -> bool:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return math.isfinite(value.number_value)
    if kind == "struct_value":
        return _object_ok(value.struct_value.fields, depth + 1)
    if kind == "list_value":
        return _array_ok(value.list_value.values, depth + 1)
    return True


def _timestamp_ok(value: timestamp_pb2.Timestamp) -> bool:
    return (
        MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS
        and 0 <= value.nanos <= 999_999_999
    )


def _duration_ok(value: duration_pb2.Duration) -> bool:
    try:
        _check_duration(value, "")
    except InvalidArgument:
        return False
    return True


_FAST_WELL_KNOWN: dict[str, Callable[[Any], bool]] = {
    timestamp_pb2.Timestamp.DESCRIPTOR.full_name: _timestamp_ok,
    duration_pb2.Duration.DESCRIPTOR.full_name: _duration_ok,
    struct_pb2.Struct.DESCRIPTOR.full_name: _struct_ok,
    struct_pb2.ListValue.DESCRIPTOR.full_name: _list_ok,
    struct_pb2.Value.DESCRIPTOR.full_name: _value_ok,
}


# -- size -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Budget:
    """Adds up the encoded size of a batch's response, naming the field that overflows."""

    field: str
    limit: int = RESPONSE_BUDGET_BYTES

    def check(self, sizes: Sequence[int]) -> None:
        total = sum(size + framing_bytes(size) for size in sizes)
        if total > self.limit:
            raise TooLarge(
                "BATCH_TOO_LARGE", self.field, total, self.limit, "the response to this batch"
            )


def framing_bytes(size: int) -> int:
    """Bytes a repeated message field adds around one element of `size` bytes."""
    return 1 + max(1, (size.bit_length() + 6) // 7)


def _record(field: str, size: int, limit: int, what: str) -> None:
    if size > limit:
        raise TooLarge("RECORD_TOO_LARGE", field, size, limit, what)


def _envelope_size(item: events_pb2.EventInput, field: str) -> int:
    size = item.ByteSize() + ENVELOPE_OVERHEAD_BYTES
    _record(field, size, MAX_RECORD_BYTES, "the stored event")
    return size


def _append_event(request: events_pb2.AppendEventRequest) -> None:
    _envelope_size(request.input, "input")


def _append_events(request: events_pb2.AppendEventsRequest) -> None:
    sizes = [_envelope_size(item, f"inputs[{i}]") for i, item in enumerate(request.inputs)]
    _Budget("inputs").check(sizes)


def _save_snapshot(request: snapshots_pb2.SaveSnapshotRequest) -> None:
    _record("snapshot", request.snapshot.ByteSize() + STAMP_BYTES, MAX_RECORD_BYTES, "the snapshot")


def _job_size(spec: jobs_pb2.JobSpec, field: str) -> int:
    _record(f"{field}.payload", spec.payload.ByteSize(), MAX_JOB_PAYLOAD_BYTES, "the job's payload")
    return spec.ByteSize() + JOB_OVERHEAD_BYTES


def _enqueue_job(request: jobs_pb2.EnqueueJobRequest) -> None:
    _job_size(request.job, "job")


def _enqueue_jobs(request: jobs_pb2.EnqueueJobsRequest) -> None:
    sizes = [_job_size(spec, f"jobs[{i}]") for i, spec in enumerate(request.jobs)]
    _Budget("jobs").check(sizes)


def _complete_job(request: jobs_pb2.CompleteJobRequest) -> None:
    _record("result", request.result.ByteSize(), MAX_JOB_RESULT_BYTES, "the job's result")


def _save_workflow_checkpoint(request: checkpoints_pb2.SaveWorkflowCheckpointRequest) -> None:
    checkpoint = request.checkpoint
    _record(
        "checkpoint.metadata",
        checkpoint.metadata.ByteSize(),
        MAX_METADATA_BYTES,
        "the checkpoint's metadata",
    )
    _record("checkpoint", checkpoint.ByteSize() + STAMP_BYTES, MAX_RECORD_BYTES, "the checkpoint")


def _persist_agent_checkpoint(request: checkpoints_pb2.PersistAgentCheckpointRequest) -> None:
    _record(
        "checkpoint",
        request.checkpoint.ByteSize() + STAMP_BYTES,
        MAX_RECORD_BYTES,
        "the checkpoint",
    )


def _list_workflow_checkpoints(request: checkpoints_pb2.ListWorkflowCheckpointsRequest) -> None:
    if len(request.metadata_filter.fields) > MAX_FILTER_KEYS:
        raise InvalidArgument("metadata_filter", f"must hold at most {MAX_FILTER_KEYS} keys")


_SIZE_RULES: dict[str, Callable[[Any], None]] = {
    events_pb2.AppendEventRequest.DESCRIPTOR.full_name: _append_event,
    events_pb2.AppendEventsRequest.DESCRIPTOR.full_name: _append_events,
    snapshots_pb2.SaveSnapshotRequest.DESCRIPTOR.full_name: _save_snapshot,
    jobs_pb2.EnqueueJobRequest.DESCRIPTOR.full_name: _enqueue_job,
    jobs_pb2.EnqueueJobsRequest.DESCRIPTOR.full_name: _enqueue_jobs,
    jobs_pb2.CompleteJobRequest.DESCRIPTOR.full_name: _complete_job,
    checkpoints_pb2.SaveWorkflowCheckpointRequest.DESCRIPTOR.full_name: _save_workflow_checkpoint,
    checkpoints_pb2.PersistAgentCheckpointRequest.DESCRIPTOR.full_name: _persist_agent_checkpoint,
    checkpoints_pb2.ListWorkflowCheckpointsRequest.DESCRIPTOR.full_name: _list_workflow_checkpoints,
}
"""The size rule of each request type that writes records."""
