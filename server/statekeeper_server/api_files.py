"""The generated modules of the proto files that define statekeeper's services.

Importing this module loads every request and response type the server
serves into protobuf's default descriptor pool.
"""

from __future__ import annotations

from statekeeper.v1 import (
    checkpoints_pb2,
    events_pb2,
    jobs_pb2,
    relays_pb2,
    snapshots_pb2,
    thread_checkpoints_pb2,
)

SERVICE_FILES = (
    snapshots_pb2,
    events_pb2,
    jobs_pb2,
    checkpoints_pb2,
    thread_checkpoints_pb2,
    relays_pb2,
)
"""The files that define statekeeper's services."""
