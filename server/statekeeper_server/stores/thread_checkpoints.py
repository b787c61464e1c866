"""Thread checkpoints: what every backend stores and guarantees, and the code they share.

A backend keeps four kinds of rows per statekeeper namespace: a thread row
(its expiry), checkpoint rows keyed by (thread, checkpoint namespace,
checkpoint id) that hold the channel versions they name in one column
(`encode_versions`), channel values keyed by (thread, checkpoint namespace,
channel, version) and stored once, and pending writes keyed by (thread,
checkpoint namespace, checkpoint id, task id, idx). Each call is one
transaction; sizes are checked inside it before it commits, so a refused
call leaves nothing behind.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf import struct_pb2

from statekeeper.v1 import thread_checkpoints_pb2 as pb
from statekeeper_server.errors import InvalidArgument, NotFound, TooLarge
from statekeeper_server.limits import (
    MAX_THREAD_PAGE_TOKEN_LENGTH,
    MAX_THREAD_STATE_BYTES,
    MAX_THREAD_WRITES_BYTES,
    THREAD_ENTRY_OVERHEAD_BYTES,
)
from statekeeper_server.stores.checkpoints import MetadataCondition
from statekeeper_server.stores.paging import filters_digest

RECORD_TOO_LARGE = "RECORD_TOO_LARGE"


@dataclass(frozen=True)
class Blob:
    """A caller-encoded value: its encoding name and its bytes."""

    type: str
    data: bytes


@dataclass(frozen=True)
class NewCheckpoint:
    """A checkpoint to store, validated by the servicer."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_id: str
    checkpoint: Blob
    metadata: Blob
    metadata_json: str
    run_id: str | None
    channel_versions: Mapping[str, str]
    new_values: Mapping[tuple[str, str], Blob]
    ttl_us: int
    """0 keeps the thread forever."""

    def fixed_bytes(self) -> int:
        """The bytes of its state that do not depend on what is stored already."""
        return (
            len(self.checkpoint.data)
            + len(self.metadata.data)
            + len(self.metadata_json)
            + sum(
                len(channel) + len(version) + THREAD_ENTRY_OVERHEAD_BYTES
                for channel, version in self.channel_versions.items()
            )
        )


@dataclass(frozen=True)
class NewWrite:
    """One pending write to store."""

    channel: str
    idx: int
    value: Blob


@dataclass(frozen=True)
class CheckpointKey:
    """Where a listing stands: the last checkpoint it returned."""

    checkpoint_id: str
    thread_id: str
    checkpoint_ns: str


@dataclass(frozen=True)
class ListQuery:
    """What ListThreadCheckpoints asks for, validated."""

    thread_id: str
    checkpoint_ns: str | None
    before: str
    metadata: tuple[MetadataCondition, ...]
    page_size: int
    remaining: int | None
    """How many more checkpoints the caller's `limit` allows; None for no limit."""
    after: CheckpointKey | None


CheckpointRow = tuple[str, str, str, str, str, bytes, str, bytes, str]
"""thread_id, checkpoint_ns, checkpoint_id, parent_id, checkpoint type and data,
metadata type and data, metadata JSON."""
ValueRow = tuple[str, str, str | None, bytes | None]
"""channel, version, and the stored value's type and data (None when not stored)."""
WriteRow = tuple[str, int, str, str, bytes, str]
"""task_id, idx, channel, type, data, task_path."""


class ThreadCheckpointStore(Protocol):
    """Thread checkpoints of every namespace on one backend.

    Reads never return a checkpoint of an expired thread; a save into an
    expired thread first deletes what it held.
    """

    async def put_checkpoint(self, namespace: str, new: NewCheckpoint, now_us: int) -> None:
        """Store the checkpoint and its new channel values; TooLarge when its state would
        exceed MAX_THREAD_STATE_BYTES."""
        ...

    async def put_writes(
        self,
        namespace: str,
        key: CheckpointKey,
        task_id: str,
        task_path: str,
        writes: Sequence[NewWrite],
        now_us: int,
    ) -> None:
        """Store pending writes (negative idx replaces, others insert if absent), whether
        or not the checkpoint is stored yet; TooLarge past MAX_THREAD_WRITES_BYTES."""
        ...

    async def get_checkpoint(
        self, namespace: str, thread_id: str, checkpoint_ns: str, checkpoint_id: str, now_us: int
    ) -> pb.ThreadCheckpoint:
        """The named checkpoint, or the newest of the namespace; NotFound if none."""
        ...

    async def list_checkpoints(
        self, namespace: str, query: ListQuery, now_us: int
    ) -> tuple[list[pb.ThreadCheckpoint], CheckpointKey | None]:
        """A page newest first, bounded by page size and THREAD_PAGE_BYTES, and the key to
        resume after (None when nothing is left)."""
        ...

    async def delete_thread(self, namespace: str, thread_id: str) -> int:
        """Delete everything of the thread; the number of checkpoints deleted."""
        ...

    async def delete_runs(self, namespace: str, run_ids: Sequence[str]) -> int:
        """Delete the checkpoints whose metadata names one of `run_ids`, with their writes
        and the channel values nothing names any more."""
        ...

    async def copy_thread(self, namespace: str, source: str, target: str, now_us: int) -> int:
        """Copy the source thread into the target, keeping what the target holds."""
        ...

    async def prune(self, namespace: str, thread_ids: Sequence[str], keep_latest: bool) -> int:
        """Keep only the newest checkpoint of each checkpoint namespace, or delete all."""
        ...

    async def sweep(self, now_us: int) -> int:
        """Delete every expired thread; the number of checkpoints deleted."""
        ...


# -- shared by the backends ---------------------------------------------------


def no_checkpoint(thread_id: str, checkpoint_id: str) -> NotFound:
    """The NotFound of a missing checkpoint or of a thread without one."""
    if checkpoint_id:
        return NotFound(
            "NO_CHECKPOINT",
            "no such checkpoint in this thread",
            thread_id=thread_id,
            checkpoint_id=checkpoint_id,
        )
    return NotFound("NO_CHECKPOINT", "the thread has no checkpoint", thread_id=thread_id)


def write_bytes(task_id: str, channel: str, task_path: str, data_size: int) -> int:
    """What one pending write counts against MAX_THREAD_WRITES_BYTES."""
    return len(task_id) + len(channel) + len(task_path) + data_size + THREAD_ENTRY_OVERHEAD_BYTES


def check_state_bytes(size: int) -> None:
    """TooLarge (on `new_channel_values`) when a checkpoint's state exceeds its limit."""
    if size > MAX_THREAD_STATE_BYTES:
        raise TooLarge(
            RECORD_TOO_LARGE,
            "new_channel_values",
            size,
            MAX_THREAD_STATE_BYTES,
            "the checkpoint with the channel values it names",
        )


def check_writes_bytes(size: int) -> None:
    """TooLarge (on `writes`) when a checkpoint's pending writes exceed their limit."""
    if size > MAX_THREAD_WRITES_BYTES:
        raise TooLarge(
            RECORD_TOO_LARGE,
            "writes",
            size,
            MAX_THREAD_WRITES_BYTES,
            "the pending writes of the checkpoint",
        )


def encode_versions(versions: Mapping[str, str]) -> str:
    """A checkpoint's channel versions as one string: for each channel, in channel order,
    `<length>:<channel><length>:<version>` (lengths in characters). The migrations build
    the same string in SQL from the rows they replace."""
    return "".join(
        f"{len(channel)}:{channel}{len(version)}:{version}"
        for channel, version in sorted(versions.items())
    )


def decode_versions(encoded: str) -> list[tuple[str, str]]:
    """The (channel, version) pairs of `encode_versions`, in channel order."""
    pairs: list[tuple[str, str]] = []
    parts: list[str] = []
    at = 0
    while at < len(encoded):
        colon = encoded.index(":", at)
        end = colon + 1 + int(encoded[at:colon])
        parts.append(encoded[colon + 1 : end])
        at = end
        if len(parts) == 2:
            pairs.append((parts[0], parts[1]))
            parts = []
    pairs.sort()
    return pairs


def build_checkpoint(
    row: CheckpointRow, values: Sequence[ValueRow], writes: Sequence[WriteRow]
) -> pb.ThreadCheckpoint:
    """The response message of one stored checkpoint; writes are sorted here."""
    thread_id, checkpoint_ns, checkpoint_id, parent_id, cp_type, cp_data, md_type, md_data = row[:8]
    fields = struct_pb2.Struct()
    fields.update(json.loads(row[8]))
    message = pb.ThreadCheckpoint(
        thread_id=thread_id,
        checkpoint_ns=checkpoint_ns,
        checkpoint_id=checkpoint_id,
        parent_checkpoint_id=parent_id,
        checkpoint=pb.TypedBlob(type=cp_type, data=bytes(cp_data)),
        metadata=pb.TypedBlob(type=md_type, data=bytes(md_data)),
        metadata_fields=fields,
    )
    for channel, version, value_type, data in values:
        message.channel_versions.append(pb.ChannelVersion(channel=channel, version=version))
        if value_type is not None and data is not None:
            message.channel_values.append(
                pb.ChannelValue(
                    channel=channel,
                    version=version,
                    value=pb.TypedBlob(type=value_type, data=bytes(data)),
                )
            )
    for task_id, idx, channel, write_type, data, task_path in sorted(
        writes, key=lambda w: (w[5], w[0], w[1])
    ):
        message.pending_writes.append(
            pb.PendingWrite(
                task_id=task_id,
                idx=idx,
                channel=channel,
                value=pb.TypedBlob(type=write_type, data=bytes(data)),
                task_path=task_path,
            )
        )
    return message


def run_id_of(metadata_fields: struct_pb2.Struct) -> str | None:
    """The `run_id` DeleteThreadRuns matches: the metadata's top-level string `run_id`."""
    value = metadata_fields.fields.get("run_id")
    if value is not None and value.WhichOneof("kind") == "string_value":
        return value.string_value
    return None


def list_filters(
    thread_id: str,
    checkpoint_ns: str | None,
    before: str,
    metadata: tuple[MetadataCondition, ...],
) -> dict[str, object]:
    """What a page token is bound to: the filters of the listing."""
    return {
        "thread": thread_id,
        "ns": checkpoint_ns,
        "before": before,
        "metadata": [[c.key, c.kind, c.value] for c in metadata],
    }


def encode_list_token(
    after: CheckpointKey, remaining: int | None, filters: Mapping[str, object]
) -> str:
    """A token that resumes a listing after `after`, with `remaining` of its limit."""
    raw = json.dumps(
        {
            "k": [after.checkpoint_id, after.thread_id, after.checkpoint_ns],
            "r": remaining,
            "f": filters_digest(filters),
        },
        separators=(",", ":"),
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_list_token(
    token: str, filters: Mapping[str, object]
) -> tuple[CheckpointKey, int | None] | None:
    """The key and remaining limit stored in `token` (None for an empty token);
    InvalidArgument on `page_token` for anything this call did not issue."""
    if not token:
        return None
    if len(token) > MAX_THREAD_PAGE_TOKEN_LENGTH:
        raise InvalidArgument(
            "page_token", f"must be at most {MAX_THREAD_PAGE_TOKEN_LENGTH} characters"
        )
    try:
        raw = base64.urlsafe_b64decode((token + "=" * (-len(token) % 4)).encode("ascii"))
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError, TypeError):
        raise InvalidArgument("page_token", "is not a token of this listing") from None
    if not (
        isinstance(data, dict)
        and data.keys() == {"k", "r", "f"}
        and isinstance(data["k"], list)
        and len(data["k"]) == 3
        and all(isinstance(part, str) for part in data["k"])
        and (data["r"] is None or (type(data["r"]) is int and data["r"] > 0))
    ):
        raise InvalidArgument("page_token", "is not a token of this listing")
    if data["f"] != filters_digest(filters):
        raise InvalidArgument("page_token", "was issued for other filters")
    checkpoint_id, thread_id, checkpoint_ns = data["k"]
    return CheckpointKey(checkpoint_id, thread_id, checkpoint_ns), data["r"]
