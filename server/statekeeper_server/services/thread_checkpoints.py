"""ThreadCheckpointService: validation in front of the thread checkpoint store, and the
sweep of expired threads.

Every field is checked before the store is called, so a bad request is
INVALID_ARGUMENT naming its field (or RESOURCE_EXHAUSTED naming the blob
that is too large) and stores nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

import grpc

from statekeeper.v1 import thread_checkpoints_pb2 as pb
from statekeeper.v1 import thread_checkpoints_pb2_grpc as pb_grpc
from statekeeper_server.config import Settings
from statekeeper_server.errors import InvalidArgument, TooLarge
from statekeeper_server.limits import (
    MAX_METADATA_BYTES,
    MAX_THREAD_BLOB_BYTES,
    MAX_THREAD_IDS_PER_CALL,
)
from statekeeper_server.offload import off_loop_if_large
from statekeeper_server.services.context import request_namespace
from statekeeper_server.stores.checkpoints import (
    NUL_RULE,
    metadata_conditions_off_loop,
    metadata_json,
)
from statekeeper_server.stores.thread_checkpoints import (
    RECORD_TOO_LARGE,
    Blob,
    CheckpointKey,
    ListQuery,
    NewCheckpoint,
    NewWrite,
    ThreadCheckpointStore,
    decode_list_token,
    encode_list_token,
    list_filters,
    run_id_of,
)
from statekeeper_server.timestamps import duration_us, now_us
from statekeeper_server.validation import optional_id, page_size, require_id

Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_NAME_LENGTH = 256
"""Longest channel name or task id."""
MAX_VERSION_LENGTH = 128
MAX_TYPE_LENGTH = 64
MAX_PATH_LENGTH = 1024
"""Longest checkpoint namespace or task path."""


class ThreadCheckpointServicer(pb_grpc.ThreadCheckpointServiceServicer):
    """Serves ThreadCheckpointService from a ThreadCheckpointStore."""

    service_name = pb.DESCRIPTOR.services_by_name["ThreadCheckpointService"].full_name

    def __init__(self, store: ThreadCheckpointStore, settings: Settings) -> None:
        self._store = store
        self._default_ttl_us = round(settings.checkpoint_ttl * 1_000_000)
        self._sweep_interval = settings.checkpoint_sweep_interval

    def add_to(self, server: grpc.aio.Server) -> None:
        """Register this servicer on `server`."""
        pb_grpc.add_ThreadCheckpointServiceServicer_to_server(self, server)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """The sweep of expired threads, every `checkpoint_sweep_interval` seconds."""
        return [self._sweep_forever()]

    async def _sweep_forever(self) -> None:
        """Delete expired threads, forever; a failed sweep is retried."""
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                dropped = await self._store.sweep(now_us())
            except Exception:
                log.exception("thread checkpoint sweep failed")
                continue
            if dropped:
                log.info("thread expiry dropped %d checkpoints", dropped)

    async def PutThreadCheckpoint(
        self, request: pb.PutThreadCheckpointRequest, context: Context
    ) -> pb.PutThreadCheckpointResponse:
        """Validate the checkpoint and store it with its new channel values."""
        namespace = request_namespace(context)
        thread_id = require_id(request.thread_id, "thread_id")
        checkpoint_ns = _path(request.checkpoint_ns, "checkpoint_ns")
        checkpoint_id = require_id(request.checkpoint_id, "checkpoint_id")
        parent_id = optional_id(request.parent_checkpoint_id, "parent_checkpoint_id")
        checkpoint = _blob(request, "checkpoint")
        metadata = _blob(request, "metadata")
        fields = request.metadata_fields
        if fields.ByteSize() > MAX_METADATA_BYTES:
            raise TooLarge(
                RECORD_TOO_LARGE,
                "metadata_fields",
                fields.ByteSize(),
                MAX_METADATA_BYTES,
                "the filterable metadata",
            )
        fields_json = await off_loop_if_large(
            fields.ByteSize(), metadata_json, fields, "metadata_fields"
        )
        versions: dict[str, str] = {}
        for i, entry in enumerate(request.channel_versions):
            field = f"channel_versions[{i}]"
            channel = _name(entry.channel, f"{field}.channel", MAX_NAME_LENGTH)
            if channel in versions:
                raise InvalidArgument(f"{field}.channel", "repeats a channel given before")
            versions[channel] = _name(entry.version, f"{field}.version", MAX_VERSION_LENGTH)
        new_values: dict[tuple[str, str], Blob] = {}
        for i, value in enumerate(request.new_channel_values):
            field = f"new_channel_values[{i}]"
            channel = _name(value.channel, f"{field}.channel", MAX_NAME_LENGTH)
            version = _name(value.version, f"{field}.version", MAX_VERSION_LENGTH)
            if (channel, version) in new_values:
                raise InvalidArgument(field, "repeats a channel version given before")
            new_values[channel, version] = _blob(value, "value", field)
        ttl_us = self._default_ttl_us
        if request.HasField("ttl"):
            ttl_us = duration_us(request.ttl)
            if ttl_us < 0:
                raise InvalidArgument("ttl", "must not be negative")
        await self._store.put_checkpoint(
            namespace,
            NewCheckpoint(
                thread_id=thread_id,
                checkpoint_ns=checkpoint_ns,
                checkpoint_id=checkpoint_id,
                parent_id=parent_id,
                checkpoint=checkpoint,
                metadata=metadata,
                metadata_json=fields_json,
                run_id=run_id_of(fields),
                channel_versions=versions,
                new_values=new_values,
                ttl_us=ttl_us,
            ),
            now_us(),
        )
        return pb.PutThreadCheckpointResponse(checkpoint_id=checkpoint_id)

    async def PutThreadWrites(
        self, request: pb.PutThreadWritesRequest, context: Context
    ) -> pb.PutThreadWritesResponse:
        """Validate the writes and store them against their checkpoint."""
        namespace = request_namespace(context)
        key = CheckpointKey(
            thread_id=require_id(request.thread_id, "thread_id"),
            checkpoint_ns=_path(request.checkpoint_ns, "checkpoint_ns"),
            checkpoint_id=require_id(request.checkpoint_id, "checkpoint_id"),
        )
        task_id = _name(request.task_id, "task_id", MAX_NAME_LENGTH)
        task_path = _path(request.task_path, "task_path")
        writes = []
        for i, write in enumerate(request.writes):
            field = f"writes[{i}]"
            writes.append(
                NewWrite(
                    channel=_name(write.channel, f"{field}.channel", MAX_NAME_LENGTH),
                    idx=write.idx,
                    value=_blob(write, "value", field),
                )
            )
        await self._store.put_writes(namespace, key, task_id, task_path, writes, now_us())
        return pb.PutThreadWritesResponse()

    async def GetThreadCheckpoint(
        self, request: pb.GetThreadCheckpointRequest, context: Context
    ) -> pb.GetThreadCheckpointResponse:
        """The named checkpoint or the newest of its namespace, with values and writes."""
        namespace = request_namespace(context)
        checkpoint = await self._store.get_checkpoint(
            namespace,
            require_id(request.thread_id, "thread_id"),
            _path(request.checkpoint_ns, "checkpoint_ns"),
            optional_id(request.checkpoint_id, "checkpoint_id"),
            now_us(),
        )
        return pb.GetThreadCheckpointResponse(checkpoint=checkpoint)

    async def ListThreadCheckpoints(
        self, request: pb.ListThreadCheckpointsRequest, context: Context
    ) -> pb.ListThreadCheckpointsResponse:
        """A page of checkpoints, newest first, bounded by count and bytes."""
        namespace = request_namespace(context)
        thread_id = optional_id(request.thread_id, "thread_id")
        checkpoint_ns = None
        if request.HasField("checkpoint_ns"):
            checkpoint_ns = _path(request.checkpoint_ns, "checkpoint_ns")
        before = optional_id(request.before, "before")
        if request.limit < 0:
            raise InvalidArgument("limit", "must not be negative")
        conditions = await metadata_conditions_off_loop(request.metadata_filter, "metadata_filter")
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        filters = list_filters(thread_id, checkpoint_ns, before, conditions)
        remaining = request.limit or None
        after = None
        resumed = decode_list_token(request.page_token, filters)
        if resumed is not None:
            after, remaining = resumed
        page, last = await self._store.list_checkpoints(
            namespace,
            ListQuery(
                thread_id=thread_id,
                checkpoint_ns=checkpoint_ns,
                before=before,
                metadata=conditions,
                page_size=size,
                remaining=remaining,
                after=after,
            ),
            now_us(),
        )
        if remaining is not None:
            remaining -= len(page)
        token = ""
        if last is not None and remaining != 0:
            token = encode_list_token(last, remaining, filters)
        return pb.ListThreadCheckpointsResponse(checkpoints=page, next_page_token=token)

    async def DeleteThread(
        self, request: pb.DeleteThreadRequest, context: Context
    ) -> pb.DeleteThreadResponse:
        """Delete the thread; succeeds when there is none."""
        namespace = request_namespace(context)
        thread_id = require_id(request.thread_id, "thread_id")
        return pb.DeleteThreadResponse(
            deleted_count=await self._store.delete_thread(namespace, thread_id)
        )

    async def DeleteThreadRuns(
        self, request: pb.DeleteThreadRunsRequest, context: Context
    ) -> pb.DeleteThreadRunsResponse:
        """Delete the checkpoints of the runs named."""
        namespace = request_namespace(context)
        run_ids = _ids(request.run_ids, "run_ids")
        return pb.DeleteThreadRunsResponse(
            deleted_count=await self._store.delete_runs(namespace, run_ids)
        )

    async def CopyThread(
        self, request: pb.CopyThreadRequest, context: Context
    ) -> pb.CopyThreadResponse:
        """Copy a thread into another."""
        namespace = request_namespace(context)
        source = require_id(request.source_thread_id, "source_thread_id")
        target = require_id(request.target_thread_id, "target_thread_id")
        if source == target:
            raise InvalidArgument("target_thread_id", "must differ from source_thread_id")
        return pb.CopyThreadResponse(
            copied_count=await self._store.copy_thread(namespace, source, target, now_us())
        )

    async def PruneThreads(
        self, request: pb.PruneThreadsRequest, context: Context
    ) -> pb.PruneThreadsResponse:
        """Keep the newest checkpoint per checkpoint namespace, or delete the threads."""
        namespace = request_namespace(context)
        thread_ids = _ids(request.thread_ids, "thread_ids")
        if request.strategy == pb.PRUNE_STRATEGY_KEEP_LATEST:
            keep_latest = True
        elif request.strategy == pb.PRUNE_STRATEGY_DELETE:
            keep_latest = False
        elif request.strategy == pb.PRUNE_STRATEGY_UNSPECIFIED:
            raise InvalidArgument("strategy", "is required")
        else:
            raise InvalidArgument("strategy", f"unknown value {request.strategy}")
        return pb.PruneThreadsResponse(
            deleted_count=await self._store.prune(namespace, thread_ids, keep_latest)
        )


def _blob(message: Any, name: str, prefix: str = "") -> Blob:
    """The typed blob in field `name` of `message`: required, with a short type and at
    most MAX_THREAD_BLOB_BYTES of data."""
    field = f"{prefix}.{name}" if prefix else name
    if not message.HasField(name):
        raise InvalidArgument(field, "is required")
    blob: pb.TypedBlob = getattr(message, name)
    if len(blob.type) > MAX_TYPE_LENGTH:
        raise InvalidArgument(f"{field}.type", f"must be at most {MAX_TYPE_LENGTH} characters")
    if "\x00" in blob.type:
        raise InvalidArgument(f"{field}.type", NUL_RULE)
    if len(blob.data) > MAX_THREAD_BLOB_BYTES:
        raise TooLarge(
            RECORD_TOO_LARGE, f"{field}.data", len(blob.data), MAX_THREAD_BLOB_BYTES, "the blob"
        )
    return Blob(blob.type, blob.data)


def _name(value: str, field: str, max_length: int) -> str:
    """Required text of at most `max_length` characters, without U+0000."""
    if not value:
        raise InvalidArgument(field, "is required")
    return _path(value, field, max_length)


def _path(value: str, field: str, max_length: int = MAX_PATH_LENGTH) -> str:
    """Optional text of at most `max_length` characters, without U+0000."""
    if len(value) > max_length:
        raise InvalidArgument(field, f"must be at most {max_length} characters")
    if "\x00" in value:
        raise InvalidArgument(field, NUL_RULE)
    return value


def _ids(values: Sequence[str], field: str) -> list[str]:
    """1 to MAX_THREAD_IDS_PER_CALL ids, each valid."""
    if not values:
        raise InvalidArgument(field, "needs at least one id")
    if len(values) > MAX_THREAD_IDS_PER_CALL:
        raise InvalidArgument(field, f"must name at most {MAX_THREAD_IDS_PER_CALL} ids")
    return [require_id(value, f"{field}[{i}]") for i, value in enumerate(values)]
