"""`client.snapshots`: the latest execution snapshot of each run.

`SnapshotCalls` says what each method sends and returns; `SnapshotsClient`
(asyncio) and `BlockingSnapshotsClient` make the calls. Every family module
follows this pattern (see `statekeeper._calls`).
"""

from __future__ import annotations

from statekeeper import _aio_calls as aio
from statekeeper import _sync_calls as sync
from statekeeper._calls import Pages, Unary
from statekeeper.v1 import snapshots_pb2, snapshots_pb2_grpc


class SnapshotCalls:
    """The operations of the snapshots family, shared by both clients."""

    @staticmethod
    def save(
        snapshot: snapshots_pb2.Snapshot, *, expected_version: int | None = None
    ) -> Unary[snapshots_pb2.Snapshot]:
        """Store `snapshot` as its run's latest and return it with its new version.

        With `expected_version` the save is a compare-and-set (0: the run must
        have no snapshot yet); a mismatch raises ABORTED.
        """
        request = snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot)
        if expected_version is not None:
            request.expected_version = expected_version
        return Unary("SaveSnapshot", request, lambda response: response.snapshot)

    @staticmethod
    def load(run_id: str) -> Unary[snapshots_pb2.Snapshot]:
        """The latest snapshot of `run_id`; raises NOT_FOUND if there is none."""
        return Unary(
            "LoadSnapshot",
            snapshots_pb2.LoadSnapshotRequest(run_id=run_id),
            lambda response: response.snapshot,
            idempotent=True,
        )

    @staticmethod
    def list(
        *,
        session_id: str = "",
        status: snapshots_pb2.RunStatus.ValueType = snapshots_pb2.RUN_STATUS_UNSPECIFIED,
        page_size: int = 0,
    ) -> Pages[snapshots_pb2.Snapshot]:
        """Every snapshot matching the filters, in run_id order, page by page."""
        return Pages(
            "ListSnapshots",
            lambda token: snapshots_pb2.ListSnapshotsRequest(
                page_size=page_size, page_token=token, session_id=session_id, status=status
            ),
            lambda response: response.snapshots,
        )

    @staticmethod
    def delete(run_id: str) -> Unary[bool]:
        """Delete the snapshot of `run_id`; whether one existed."""
        return Unary(
            "DeleteSnapshot",
            snapshots_pb2.DeleteSnapshotRequest(run_id=run_id),
            lambda response: response.deleted,
            idempotent=True,
        )


class SnapshotsClient(aio.Family):
    """Save, load, list and delete run snapshots."""

    stub = snapshots_pb2_grpc.SnapshotServiceStub
    save = aio.unary(SnapshotCalls.save)
    load = aio.unary(SnapshotCalls.load)
    list = aio.pages(SnapshotCalls.list)
    delete = aio.unary(SnapshotCalls.delete)


class BlockingSnapshotsClient(sync.Family):
    """Save, load, list and delete run snapshots (blocking)."""

    stub = snapshots_pb2_grpc.SnapshotServiceStub
    save = sync.unary(SnapshotCalls.save)
    load = sync.unary(SnapshotCalls.load)
    list = sync.pages(SnapshotCalls.list)
    delete = sync.unary(SnapshotCalls.delete)
