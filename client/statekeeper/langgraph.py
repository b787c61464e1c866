"""`StatekeeperSaver`: a LangGraph checkpoint saver on ThreadCheckpointService.

Install with the `langgraph` extra. Every value goes through the saver's
serializer (`serde.dumps_typed` / `loads_typed`) and is stored byte for byte
as a typed blob; the server keeps each channel version once per thread and
namespace, so a step sends only the channels it changed. A checkpoint's
channel versions are kept by the server beside it, not a second time inside
its blob (unless some are not strings, which the server would return as
strings); a channel without a value stores nothing, and small scalar values
ride inside the checkpoint's blob instead of a stored version of their own.

The async methods (`aput`, `aput_writes`, `aget_tuple`, `alist`,
`adelete_thread`, `adelete_for_runs`, `acopy_thread`, `aprune`) do the work.
The blocking ones (`put`, `get_tuple`, `list`, ...) run those same
coroutines on the event loop the saver was created in, which owns the
client's channel: they are for other threads (LangGraph runs sync graphs'
checkpointing there), never for that loop's own thread.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from statekeeper._client import AsyncClient
from statekeeper.v1 import thread_checkpoints_pb2 as pb

T = TypeVar("T")


class StatekeeperSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer keeping its threads in a statekeeper server.

    `ttl` (seconds, 0 for never) sets when a thread expires after its newest
    save; None follows the server's `--checkpoint-ttl`.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        serde: SerializerProtocol | None = None,
        ttl: float | None = None,
    ) -> None:
        super().__init__(serde=serde)
        self.client = client
        self.ttl = ttl
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store the checkpoint and the values of the channel versions it introduces."""
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        checkpoint_ns = configurable.get("checkpoint_ns", "")
        copy: dict[str, Any] = dict(checkpoint)
        values: dict[str, Any] = copy.pop("channel_values", {})
        if all(isinstance(version, str) for version in checkpoint["channel_versions"].values()):
            del copy["channel_versions"]
        inline = {channel: value for channel, value in values.items() if _inline(value)}
        if inline:
            copy["channel_values"] = inline
        new_values = {
            (channel, str(version)): self.serde.dumps_typed(values[channel])
            for channel, version in new_versions.items()
            if channel in values and channel not in inline
        }
        stored_metadata = get_serializable_checkpoint_metadata(config, metadata)
        await self.client.threads.put_checkpoint(
            thread_id,
            checkpoint["id"],
            self.serde.dumps_typed(copy),
            self.serde.dumps_typed(stored_metadata),
            checkpoint_ns=checkpoint_ns,
            parent_checkpoint_id=configurable.get("checkpoint_id") or "",
            metadata_fields={k: v for k, v in stored_metadata.items() if _filterable(v)},
            channel_versions={
                channel: str(version) for channel, version in checkpoint["channel_versions"].items()
            },
            new_channel_values=new_values,
            ttl=self.ttl,
        )
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": checkpoint_ns,
                "checkpoint_id": checkpoint["id"],
            }
        }

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes; special writes replace, others are kept once."""
        configurable = config["configurable"]
        await self.client.threads.put_writes(
            str(configurable["thread_id"]),
            configurable["checkpoint_id"],
            task_id,
            [
                (channel, WRITES_IDX_MAP.get(channel, idx), self.serde.dumps_typed(value))
                for idx, (channel, value) in enumerate(writes)
            ],
            checkpoint_ns=configurable.get("checkpoint_ns", ""),
            task_path=task_path,
        )

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint named by `config`, or the newest of its thread and namespace."""
        configurable = config["configurable"]
        try:
            stored = await self.client.threads.get_checkpoint(
                str(configurable["thread_id"]),
                get_checkpoint_id(config) or "",
                checkpoint_ns=configurable.get("checkpoint_ns", ""),
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return self._tuple(stored)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,  # LangGraph's name
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints newest first, filtered on metadata, before `before`, at most `limit`."""
        thread_id = ""
        checkpoint_ns = None
        only_id = None
        if config is not None:
            thread_id = str(config["configurable"]["thread_id"])
            checkpoint_ns = config["configurable"].get("checkpoint_ns")
            only_id = get_checkpoint_id(config)
        filter = filter or {}
        server_filter = {k: v for k, v in filter.items() if _filterable(v)}
        local_filter = {k: v for k, v in filter.items() if k not in server_filter}
        if limit is not None and limit <= 0:
            return
        remaining = limit
        async for stored in self.client.threads.list_checkpoints(
            thread_id,
            checkpoint_ns=checkpoint_ns,
            before=(get_checkpoint_id(before) or "") if before else "",
            limit=0 if (local_filter or only_id) else (limit or 0),
            metadata_filter=server_filter,
        ):
            if only_id and stored.checkpoint_id != only_id:
                continue
            found = self._tuple(stored)
            if any(found.metadata.get(k) != v for k, v in local_filter.items()):
                continue
            yield found
            if remaining is not None:
                remaining -= 1
                if remaining <= 0:
                    return

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete the thread in every namespace."""
        await self.client.threads.delete_thread(str(thread_id))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and writes) of these runs."""
        if run_ids:
            await self.client.threads.delete_runs([str(run_id) for run_id in run_ids])

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy a thread, its values and writes, into another thread."""
        await self.client.threads.copy_thread(str(source_thread_id), str(target_thread_id))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Keep only the newest checkpoint per namespace (`keep_latest`), or `delete`."""
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}: use keep_latest or delete")
        if thread_ids:
            await self.client.threads.prune(
                [str(t) for t in thread_ids], keep_latest=strategy == "keep_latest"
            )

    # -- the blocking twins, for threads other than the saver's event loop ------------

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """`aput`, waited for from another thread."""
        return self._wait(self.aput(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """`aput_writes`, waited for from another thread."""
        self._wait(self.aput_writes(config, writes, task_id, task_path))

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """`aget_tuple`, waited for from another thread."""
        return self._wait(self.aget_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,  # LangGraph's name
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """`alist`, from another thread: each page is fetched when the previous one is
        used up."""
        listing = self.alist(config, filter=filter, before=before, limit=limit)

        async def step() -> CheckpointTuple:
            return await listing.__anext__()

        while True:
            try:
                yield self._wait(step())
            except StopAsyncIteration:
                return

    def delete_thread(self, thread_id: str) -> None:
        """`adelete_thread`, waited for from another thread."""
        self._wait(self.adelete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """`adelete_for_runs`, waited for from another thread."""
        self._wait(self.adelete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """`acopy_thread`, waited for from another thread."""
        self._wait(self.acopy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """`aprune`, waited for from another thread."""
        self._wait(self.aprune(thread_ids, strategy=strategy))

    def _wait(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the saver's event loop and wait for it from this thread.

        RuntimeError when the saver was made outside an event loop, or when called
        from that loop's own thread (waiting there could never finish).
        """
        loop = self.loop
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if loop is None or here is loop:
            work.close()
            raise RuntimeError(
                "StatekeeperSaver's blocking methods run on the event loop it was created in,"
                " from other threads; in that loop, use the async methods (aput, aget_tuple, ...)"
            )
        return asyncio.run_coroutine_threadsafe(work, loop).result()

    def get_next_version(self, current: str | None, channel: None) -> str:
        """The version after `current`, as LangGraph's own savers make them: a zero-padded
        counter and a random fraction, so versions sort as strings."""
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"

    def _tuple(self, stored: pb.ThreadCheckpoint) -> CheckpointTuple:
        """The CheckpointTuple of a stored checkpoint."""
        checkpoint: Checkpoint = self.serde.loads_typed(
            (stored.checkpoint.type, stored.checkpoint.data)
        )
        checkpoint["channel_values"] = {
            **checkpoint.get("channel_values", {}),
            **{
                value.channel: self.serde.loads_typed((value.value.type, value.value.data))
                for value in stored.channel_values
                if value.value.type != "empty"
            },
        }
        if "channel_versions" not in checkpoint:
            checkpoint["channel_versions"] = {
                version.channel: version.version for version in stored.channel_versions
            }
        parent = None
        if stored.parent_checkpoint_id:
            parent = _config(stored.thread_id, stored.checkpoint_ns, stored.parent_checkpoint_id)
        return CheckpointTuple(
            config=_config(stored.thread_id, stored.checkpoint_ns, stored.checkpoint_id),
            checkpoint=checkpoint,
            metadata=self.serde.loads_typed((stored.metadata.type, stored.metadata.data)),
            parent_config=parent,
            pending_writes=[
                (w.task_id, w.channel, self.serde.loads_typed((w.value.type, w.value.data)))
                for w in stored.pending_writes
            ],
        )


def _config(thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": checkpoint_ns,
            "checkpoint_id": checkpoint_id,
        }
    }


MAX_INLINE_TEXT = 64
"""Longest string channel value kept inside the checkpoint's blob rather than stored once
per version (see `_inline`)."""


def _inline(value: object) -> bool:
    """Whether a channel value rides inside its checkpoint's blob: None, a bool, int or
    float, or a string of at most MAX_INLINE_TEXT characters. Such values are smaller
    than the row and index entry a stored version takes, so each checkpoint carries them
    (as LangGraph's own PostgreSQL saver does with its primitives)."""
    if value is None or type(value) in (bool, int, float):
        return True
    return type(value) is str and len(value) <= MAX_INLINE_TEXT


MAX_FILTERABLE_TEXT = 1024
"""Longest metadata string kept in the server's filterable copy (which is at most 64 KiB);
a filter on a longer one is compared here."""


def _filterable(value: object) -> bool:
    """Whether the server keeps and compares `value`: a JSON null, bool, string of at most
    MAX_FILTERABLE_TEXT characters, or number (integers only where a double holds them
    exactly). Saves and filters use this one rule, so they always agree."""
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, str):
        return len(value) <= MAX_FILTERABLE_TEXT
    if isinstance(value, int):
        return abs(value) <= 2**53
    return isinstance(value, float) and value == value and abs(value) != float("inf")
