"""`client.snapshots`: the latest execution snapshot of each run."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from statekeeper._calls import CallOptions
from statekeeper.v1 import snapshots_pb2, snapshots_pb2_grpc

SERVICE = "statekeeper.v1.SnapshotService"
IDEMPOTENT = [(SERVICE, "LoadSnapshot"), (SERVICE, "ListSnapshots"), (SERVICE, "DeleteSnapshot")]


class SnapshotsClient:
    """Save, load, list and delete run snapshots."""

    def __init__(self, channel: grpc.aio.Channel, options: CallOptions) -> None:
        self._stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
        self._options = options

    async def save(
        self, snapshot: snapshots_pb2.Snapshot, *, expected_version: int | None = None
    ) -> snapshots_pb2.Snapshot:
        """Store `snapshot` as its run's latest and return it with its new version.

        With `expected_version` the save is a compare-and-set (0: the run must
        have no snapshot yet); a mismatch raises ABORTED.
        """
        request = snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot)
        if expected_version is not None:
            request.expected_version = expected_version
        response = await self._stub.SaveSnapshot(
            request, metadata=self._options.metadata, timeout=self._options.timeout
        )
        return response.snapshot

    async def load(self, run_id: str) -> snapshots_pb2.Snapshot:
        """The latest snapshot of `run_id`; raises NOT_FOUND if there is none."""
        response = await self._stub.LoadSnapshot(
            snapshots_pb2.LoadSnapshotRequest(run_id=run_id),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return response.snapshot

    async def list(
        self,
        *,
        session_id: str = "",
        status: snapshots_pb2.RunStatus.ValueType = snapshots_pb2.RUN_STATUS_UNSPECIFIED,
        page_size: int = 0,
    ) -> AsyncIterator[snapshots_pb2.Snapshot]:
        """Every snapshot matching the filters, in run_id order, page by page."""
        token = ""
        while True:
            response = await self._stub.ListSnapshots(
                snapshots_pb2.ListSnapshotsRequest(
                    page_size=page_size, page_token=token, session_id=session_id, status=status
                ),
                metadata=self._options.metadata,
                timeout=self._options.timeout,
            )
            for snapshot in response.snapshots:
                yield snapshot
            token = response.next_page_token
            if not token:
                return

    async def delete(self, run_id: str) -> bool:
        """Delete the snapshot of `run_id`; whether one existed."""
        response = await self._stub.DeleteSnapshot(
            snapshots_pb2.DeleteSnapshotRequest(run_id=run_id),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return response.deleted
