"""Conversions between the store's integer microseconds and protobuf times."""

from __future__ import annotations

import time

from google.protobuf import duration_pb2, timestamp_pb2


def now_us() -> int:
    """Wall-clock time in microseconds since the Unix epoch."""
    return time.time_ns() // 1000


def to_timestamp(micros: int) -> timestamp_pb2.Timestamp:
    """A Timestamp for `micros` microseconds since the epoch."""
    seconds, rest = divmod(micros, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest * 1000)


def from_timestamp(value: timestamp_pb2.Timestamp) -> int:
    """Microseconds since the epoch of `value`."""
    return value.seconds * 1_000_000 + value.nanos // 1000


def duration_us(value: duration_pb2.Duration) -> int:
    """Microseconds in `value`."""
    return value.seconds * 1_000_000 + value.nanos // 1000
