"""`client.threads`: checkpoints of conversation threads, with caller-encoded values.

`ThreadCalls` says what each method sends and returns; `ThreadsClient`
(asyncio) and `BlockingThreadsClient` make the calls. Every call is safe to
repeat: the caller names every checkpoint and write, so a retried call
stores nothing twice.

The caller mints checkpoint ids (they must sort in creation order) and
encodes every value as a typed blob, a `(type, bytes)` pair kept byte for
byte. Channel values are sent once per version and shared by later
checkpoints that name the same version. See ThreadCheckpointService in
`protos/statekeeper/v1/thread_checkpoints.proto` for the guarantees.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.protobuf import duration_pb2, struct_pb2

from statekeeper import _aio_calls as aio
from statekeeper import _sync_calls as sync
from statekeeper._calls import Pages, Unary
from statekeeper.v1 import thread_checkpoints_pb2 as pb
from statekeeper.v1 import thread_checkpoints_pb2_grpc as pb_grpc

TypedValue = tuple[str, bytes]
"""A caller-encoded value: its encoding name and its bytes."""


def typed_blob(value: TypedValue) -> pb.TypedBlob:
    """The TypedBlob message of a `(type, bytes)` pair."""
    return pb.TypedBlob(type=value[0], data=value[1])


class ThreadCalls:
    """The operations of the thread checkpoints family, shared by both clients."""

    @staticmethod
    def put_checkpoint(
        thread_id: str,
        checkpoint_id: str,
        checkpoint: TypedValue,
        metadata: TypedValue,
        *,
        checkpoint_ns: str = "",
        parent_checkpoint_id: str = "",
        metadata_fields: Mapping[str, Any] | None = None,
        channel_versions: Mapping[str, str] | None = None,
        new_channel_values: Mapping[tuple[str, str], TypedValue] | None = None,
        ttl: float | None = None,
    ) -> Unary[None]:
        """Store a checkpoint; `new_channel_values` maps (channel, version) to the values
        this save introduces. `metadata_fields` is the JSON copy lists filter on; `ttl`
        (seconds, 0 for never) sets when the thread expires after this save."""
        request = pb.PutThreadCheckpointRequest(
            thread_id=thread_id,
            checkpoint_ns=checkpoint_ns,
            checkpoint_id=checkpoint_id,
            parent_checkpoint_id=parent_checkpoint_id,
            checkpoint=typed_blob(checkpoint),
            metadata=typed_blob(metadata),
            channel_versions=[
                pb.ChannelVersion(channel=channel, version=version)
                for channel, version in sorted((channel_versions or {}).items())
            ],
            new_channel_values=[
                pb.ChannelValue(channel=channel, version=version, value=typed_blob(value))
                for (channel, version), value in (new_channel_values or {}).items()
            ],
        )
        if metadata_fields:
            request.metadata_fields.update(metadata_fields)
        if ttl is not None:
            duration = duration_pb2.Duration()
            duration.FromNanoseconds(round(ttl * 1_000_000_000))
            request.ttl.CopyFrom(duration)
        return Unary("PutThreadCheckpoint", request, _nothing, idempotent=True)

    @staticmethod
    def put_writes(
        thread_id: str,
        checkpoint_id: str,
        task_id: str,
        writes: Iterable[tuple[str, int, TypedValue]],
        *,
        checkpoint_ns: str = "",
        task_path: str = "",
    ) -> Unary[None]:
        """Store a task's pending writes, each `(channel, idx, value)`; a negative idx
        replaces what is stored under it, others are kept once."""
        request = pb.PutThreadWritesRequest(
            thread_id=thread_id,
            checkpoint_ns=checkpoint_ns,
            checkpoint_id=checkpoint_id,
            task_id=task_id,
            task_path=task_path,
            writes=[
                pb.ThreadWrite(channel=channel, idx=idx, value=typed_blob(value))
                for channel, idx, value in writes
            ],
        )
        return Unary("PutThreadWrites", request, _nothing, idempotent=True)

    @staticmethod
    def get_checkpoint(
        thread_id: str, checkpoint_id: str = "", *, checkpoint_ns: str = ""
    ) -> Unary[pb.ThreadCheckpoint]:
        """The checkpoint (the newest of the namespace without `checkpoint_id`) with its
        channel values and pending writes. Raises NOT_FOUND if there is none."""
        request = pb.GetThreadCheckpointRequest(
            thread_id=thread_id, checkpoint_ns=checkpoint_ns, checkpoint_id=checkpoint_id
        )
        return Unary(
            "GetThreadCheckpoint", request, lambda response: response.checkpoint, idempotent=True
        )

    @staticmethod
    def list_checkpoints(
        thread_id: str = "",
        *,
        checkpoint_ns: str | None = None,
        before: str = "",
        limit: int = 0,
        metadata_filter: Mapping[str, Any] | None = None,
        page_size: int = 0,
    ) -> Pages[pb.ThreadCheckpoint]:
        """Checkpoints newest first, page by page, at most `limit` (0: all)."""
        request = pb.ListThreadCheckpointsRequest(
            thread_id=thread_id, before=before, limit=limit, page_size=page_size
        )
        if checkpoint_ns is not None:
            request.checkpoint_ns = checkpoint_ns
        if metadata_filter:
            filter_struct = struct_pb2.Struct()
            filter_struct.update(metadata_filter)
            request.metadata_filter.CopyFrom(filter_struct)

        def page(token: str) -> pb.ListThreadCheckpointsRequest:
            request.page_token = token
            return request

        return Pages("ListThreadCheckpoints", page, lambda response: response.checkpoints)

    @staticmethod
    def delete_thread(thread_id: str) -> Unary[int]:
        """Delete the thread; the number of checkpoints deleted."""
        return Unary(
            "DeleteThread",
            pb.DeleteThreadRequest(thread_id=thread_id),
            lambda response: response.deleted_count,
            idempotent=True,
        )

    @staticmethod
    def delete_runs(run_ids: Sequence[str]) -> Unary[int]:
        """Delete the checkpoints whose metadata `run_id` is one of `run_ids`; how many."""
        return Unary(
            "DeleteThreadRuns",
            pb.DeleteThreadRunsRequest(run_ids=list(run_ids)),
            lambda response: response.deleted_count,
            idempotent=True,
        )

    @staticmethod
    def copy_thread(source_thread_id: str, target_thread_id: str) -> Unary[int]:
        """Copy a thread into another; the number of checkpoints copied."""
        return Unary(
            "CopyThread",
            pb.CopyThreadRequest(
                source_thread_id=source_thread_id, target_thread_id=target_thread_id
            ),
            lambda response: response.copied_count,
            idempotent=True,
        )

    @staticmethod
    def prune(thread_ids: Sequence[str], *, keep_latest: bool = True) -> Unary[int]:
        """Keep only the newest checkpoint per namespace (or delete the threads when
        `keep_latest` is False); the number of checkpoints deleted."""
        strategy = pb.PRUNE_STRATEGY_KEEP_LATEST if keep_latest else pb.PRUNE_STRATEGY_DELETE
        return Unary(
            "PruneThreads",
            pb.PruneThreadsRequest(thread_ids=list(thread_ids), strategy=strategy),
            lambda response: response.deleted_count,
            idempotent=True,
        )


def _nothing(response: object) -> None:
    """A call answered with nothing the caller needs."""


class ThreadsClient(aio.Family):
    """Put, get, list, copy, prune and delete thread checkpoints."""

    stub = pb_grpc.ThreadCheckpointServiceStub
    put_checkpoint = aio.unary(ThreadCalls.put_checkpoint)
    put_writes = aio.unary(ThreadCalls.put_writes)
    get_checkpoint = aio.unary(ThreadCalls.get_checkpoint)
    list_checkpoints = aio.pages(ThreadCalls.list_checkpoints)
    delete_thread = aio.unary(ThreadCalls.delete_thread)
    delete_runs = aio.unary(ThreadCalls.delete_runs)
    copy_thread = aio.unary(ThreadCalls.copy_thread)
    prune = aio.unary(ThreadCalls.prune)


class BlockingThreadsClient(sync.Family):
    """Put, get, list, copy, prune and delete thread checkpoints (blocking)."""

    stub = pb_grpc.ThreadCheckpointServiceStub
    put_checkpoint = sync.unary(ThreadCalls.put_checkpoint)
    put_writes = sync.unary(ThreadCalls.put_writes)
    get_checkpoint = sync.unary(ThreadCalls.get_checkpoint)
    list_checkpoints = sync.pages(ThreadCalls.list_checkpoints)
    delete_thread = sync.unary(ThreadCalls.delete_thread)
    delete_runs = sync.unary(ThreadCalls.delete_runs)
    copy_thread = sync.unary(ThreadCalls.copy_thread)
    prune = sync.unary(ThreadCalls.prune)
