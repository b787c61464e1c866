"""SnapshotService: validation of requests in front of the snapshot store.

Snapshots are answered with the bytes the store keeps (see `wire`): a save
returns the encoding it stored, loads and listings the stored encodings,
so no snapshot is parsed into a response message and encoded again.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import grpc

from statekeeper.v1 import snapshots_pb2, snapshots_pb2_grpc
from statekeeper.v1.common_pb2 import FinishReason
from statekeeper_server.errors import InvalidArgument
from statekeeper_server.services.context import request_namespace
from statekeeper_server.stores.snapshots import SnapshotFilter, SnapshotStore
from statekeeper_server.validation import enum_value, optional_id, page_size, require_id
from statekeeper_server.wire import message_field, repeated_message_field, string_field

Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class SnapshotServicer(snapshots_pb2_grpc.SnapshotServiceServicer):
    """Serves SnapshotService from a SnapshotStore."""

    service_name = snapshots_pb2.DESCRIPTOR.services_by_name["SnapshotService"].full_name

    def __init__(self, store: SnapshotStore) -> None:
        self._store = store

    def add_to(self, server: grpc.aio.Server) -> None:
        """Register this servicer on `server`."""
        snapshots_pb2_grpc.add_SnapshotServiceServicer_to_server(self, server)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """Snapshots need no background work."""
        return []

    async def SaveSnapshot(  # type: ignore[override]  # answers with wire bytes
        self, request: snapshots_pb2.SaveSnapshotRequest, context: Context
    ) -> bytes:
        """Validate the snapshot and compare-and-set it; the SaveSnapshotResponse's wire
        bytes (the request's snapshot, stamped, as stored)."""
        namespace = request_namespace(context)
        if not request.HasField("snapshot"):
            raise InvalidArgument("snapshot", "is required")
        snapshot = request.snapshot
        require_id(snapshot.run_id, "snapshot.run_id")
        require_id(snapshot.session_id, "snapshot.session_id")
        enum_value(
            snapshot.status, "snapshot.status", snapshots_pb2.RunStatus.values(), required=True
        )
        enum_value(
            snapshot.current_state,
            "snapshot.current_state",
            snapshots_pb2.TurnState.values(),
            required=False,
        )
        enum_value(
            snapshot.last_finish, "snapshot.last_finish", FinishReason.values(), required=False
        )
        expected = request.expected_version if request.HasField("expected_version") else None
        if expected is not None and expected < 0:
            raise InvalidArgument("expected_version", "must not be negative")
        stored = await self._store.save(namespace, snapshot, expected)
        return message_field(snapshots_pb2.SaveSnapshotResponse.SNAPSHOT_FIELD_NUMBER, stored)

    async def LoadSnapshot(  # type: ignore[override]  # answers with wire bytes
        self, request: snapshots_pb2.LoadSnapshotRequest, context: Context
    ) -> bytes:
        """The run's latest snapshot; the LoadSnapshotResponse's wire bytes."""
        namespace = request_namespace(context)
        run_id = require_id(request.run_id, "run_id")
        stored = await self._store.load(namespace, run_id)
        return message_field(snapshots_pb2.LoadSnapshotResponse.SNAPSHOT_FIELD_NUMBER, stored)

    async def ListSnapshots(  # type: ignore[override]  # answers with wire bytes
        self, request: snapshots_pb2.ListSnapshotsRequest, context: Context
    ) -> bytes:
        """A page of snapshots, filtered by session and status; the
        ListSnapshotsResponse's wire bytes."""
        namespace = request_namespace(context)
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        where = SnapshotFilter(
            session_id=optional_id(request.session_id, "session_id"),
            status=enum_value(
                request.status, "status", snapshots_pb2.RunStatus.values(), required=False
            ),
        )
        page = await self._store.list(namespace, where, size, request.page_token)
        response = snapshots_pb2.ListSnapshotsResponse
        return repeated_message_field(
            response.SNAPSHOTS_FIELD_NUMBER, page.snapshots
        ) + string_field(response.NEXT_PAGE_TOKEN_FIELD_NUMBER, page.next_page_token)

    async def DeleteSnapshot(
        self, request: snapshots_pb2.DeleteSnapshotRequest, context: Context
    ) -> snapshots_pb2.DeleteSnapshotResponse:
        """Delete the run's snapshot; succeeds when there is none."""
        namespace = request_namespace(context)
        run_id = require_id(request.run_id, "run_id")
        return snapshots_pb2.DeleteSnapshotResponse(
            deleted=await self._store.delete(namespace, run_id)
        )
