"""`client.threads`: checkpoints of conversation threads, with caller-encoded values.

The caller mints checkpoint ids (they must sort in creation order) and
encodes every value as a typed blob, a `(type, bytes)` pair kept byte for
byte. Channel values are sent once per version and shared by later
checkpoints that name the same version. See ThreadCheckpointService in
`protos/statekeeper/v1/thread_checkpoints.proto` for the guarantees.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import duration_pb2, struct_pb2

from statekeeper._calls import CallOptions
from statekeeper.v1 import thread_checkpoints_pb2 as pb
from statekeeper.v1 import thread_checkpoints_pb2_grpc as pb_grpc

SERVICE = "statekeeper.v1.ThreadCheckpointService"
IDEMPOTENT = [
    (SERVICE, method)
    for method in (
        "PutThreadCheckpoint",
        "PutThreadWrites",
        "GetThreadCheckpoint",
        "ListThreadCheckpoints",
        "DeleteThread",
        "DeleteThreadRuns",
        "CopyThread",
        "PruneThreads",
    )
]
"""Calls the channel may retry on UNAVAILABLE: all of them, since the caller names every
checkpoint and write, so repeating a call stores nothing twice."""

TypedValue = tuple[str, bytes]
"""A caller-encoded value: its encoding name and its bytes."""


def typed_blob(value: TypedValue) -> pb.TypedBlob:
    """The TypedBlob message of a `(type, bytes)` pair."""
    return pb.TypedBlob(type=value[0], data=value[1])


class ThreadsClient:
    """Put, get, list, copy, prune and delete thread checkpoints."""

    def __init__(self, channel: grpc.aio.Channel, options: CallOptions) -> None:
        self._stub = pb_grpc.ThreadCheckpointServiceStub(channel)
        self._options = options

    async def put_checkpoint(
        self,
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
    ) -> None:
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
        await self._stub.PutThreadCheckpoint(
            request, metadata=self._options.metadata, timeout=self._options.timeout
        )

    async def put_writes(
        self,
        thread_id: str,
        checkpoint_id: str,
        task_id: str,
        writes: Iterable[tuple[str, int, TypedValue]],
        *,
        checkpoint_ns: str = "",
        task_path: str = "",
    ) -> None:
        """Store a task's pending writes, each `(channel, idx, value)`; a negative idx
        replaces what is stored under it, others are kept once."""
        await self._stub.PutThreadWrites(
            pb.PutThreadWritesRequest(
                thread_id=thread_id,
                checkpoint_ns=checkpoint_ns,
                checkpoint_id=checkpoint_id,
                task_id=task_id,
                task_path=task_path,
                writes=[
                    pb.ThreadWrite(channel=channel, idx=idx, value=typed_blob(value))
                    for channel, idx, value in writes
                ],
            ),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )

    async def get_checkpoint(
        self, thread_id: str, checkpoint_id: str = "", *, checkpoint_ns: str = ""
    ) -> pb.ThreadCheckpoint | None:
        """The checkpoint (the newest of the namespace without `checkpoint_id`) with its
        channel values and pending writes; None when there is none."""
        try:
            response = await self._stub.GetThreadCheckpoint(
                pb.GetThreadCheckpointRequest(
                    thread_id=thread_id, checkpoint_ns=checkpoint_ns, checkpoint_id=checkpoint_id
                ),
                metadata=self._options.metadata,
                timeout=self._options.timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return response.checkpoint

    async def list_checkpoints(
        self,
        thread_id: str = "",
        *,
        checkpoint_ns: str | None = None,
        before: str = "",
        limit: int = 0,
        metadata_filter: Mapping[str, Any] | None = None,
        page_size: int = 0,
    ) -> AsyncIterator[pb.ThreadCheckpoint]:
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
        while True:
            response = await self._stub.ListThreadCheckpoints(
                request, metadata=self._options.metadata, timeout=self._options.timeout
            )
            for checkpoint in response.checkpoints:
                yield checkpoint
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    async def delete_thread(self, thread_id: str) -> int:
        """Delete the thread; the number of checkpoints deleted."""
        response = await self._stub.DeleteThread(
            pb.DeleteThreadRequest(thread_id=thread_id),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return response.deleted_count

    async def delete_runs(self, run_ids: Sequence[str]) -> int:
        """Delete the checkpoints whose metadata `run_id` is one of `run_ids`."""
        response = await self._stub.DeleteThreadRuns(
            pb.DeleteThreadRunsRequest(run_ids=list(run_ids)),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return response.deleted_count

    async def copy_thread(self, source_thread_id: str, target_thread_id: str) -> int:
        """Copy a thread into another; the number of checkpoints copied."""
        response = await self._stub.CopyThread(
            pb.CopyThreadRequest(
                source_thread_id=source_thread_id, target_thread_id=target_thread_id
            ),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return response.copied_count

    async def prune(self, thread_ids: Sequence[str], *, keep_latest: bool = True) -> int:
        """Keep only the newest checkpoint per namespace (or delete the threads when
        `keep_latest` is False); the number of checkpoints deleted."""
        strategy = pb.PRUNE_STRATEGY_KEEP_LATEST if keep_latest else pb.PRUNE_STRATEGY_DELETE
        response = await self._stub.PruneThreads(
            pb.PruneThreadsRequest(thread_ids=list(thread_ids), strategy=strategy),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return response.deleted_count
