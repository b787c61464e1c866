"""The checkpoint store interface: histories of workflow and agent checkpoints.

Besides the `CheckpointStore` protocol, this module holds everything every
backend shares: retention decisions, the minting of ids and create times,
metadata filters, decoding (with DataLoss for an unreadable record), the
fall-back walk to the newest readable checkpoint, paging, and the errors.

A checkpoint is stored as its encoding and handed back as those bytes: a
save stamps the caller's message in place and encodes it once, and loads
and listings return the stored bytes (checked readable) for the servicer
to answer with, never a message rebuilt from them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import DecodeError

from statekeeper.v1 import checkpoints_pb2
from statekeeper_server.errors import Aborted, DataLoss, InvalidArgument, NotFound
from statekeeper_server.limits import MAX_FILTER_KEYS
from statekeeper_server.observability import store_metrics
from statekeeper_server.offload import off_loop_if_large
from statekeeper_server.piecewise import merge_in_pieces
from statekeeper_server.stores.paging import encode_page_token
from statekeeper_server.timestamps import to_timestamp
from statekeeper_server.uuid7 import uuid7

M = TypeVar("M", checkpoints_pb2.WorkflowCheckpoint, checkpoints_pb2.AgentCheckpoint)

FALLBACK_CHUNK = 64
"""How many older checkpoints one read fetches while falling back."""

NUL_RULE = "must not contain the character U+0000"
"""Why text holding U+0000 is refused: not every backend can store it."""


@dataclass(frozen=True)
class CheckpointKind:
    """Whose checkpoints: a workflow run's or an agent's (for ids and errors)."""

    noun: str
    owner_field: str


WORKFLOW = CheckpointKind(noun="run", owner_field="run_id")
AGENT = CheckpointKind(noun="agent", owner_field="agent_id")


def metric_kind(kind: CheckpointKind) -> str:
    """The `kind` label of the checkpoint metrics: workflow or agent."""
    return "workflow" if kind is WORKFLOW else "agent"


# -- retention ------------------------------------------------------------


@dataclass(frozen=True)
class RetentionPolicy:
    """How many checkpoints of one run or agent to keep.

    `keep_last` 0 keeps every checkpoint; `ttl_us` 0 keeps them forever.
    Whatever the policy, the newest checkpoint is never dropped.
    """

    keep_last: int = 0
    ttl_us: int = 0

    def cutoff_us(self, now_us: int) -> int | None:
        """Checkpoints created before this time are expired; None if none expire."""
        return now_us - self.ttl_us if self.ttl_us > 0 else None

    @property
    def keeps_everything(self) -> bool:
        """Whether this policy never drops anything."""
        return self.keep_last == 0 and self.ttl_us == 0


@dataclass(frozen=True)
class RetentionOverride:
    """The retention a save names; None fields follow the server's defaults.

    It is stored with the saved checkpoint and governs its run or agent
    (on that save and in sweeps) until the next save.
    """

    keep_last: int | None = None
    ttl_us: int | None = None

    def resolve(self, defaults: RetentionPolicy) -> RetentionPolicy:
        """The policy in force: these fields where set, `defaults` elsewhere."""
        return RetentionPolicy(
            keep_last=defaults.keep_last if self.keep_last is None else self.keep_last,
            ttl_us=defaults.ttl_us if self.ttl_us is None else self.ttl_us,
        )


# -- metadata filters -----------------------------------------------------

ValueKind = Literal["string", "number", "bool", "null"]


@dataclass(frozen=True)
class MetadataCondition:
    """Top-level `key` of the metadata holds a value of `kind` equal to `value`."""

    key: str
    kind: ValueKind
    value: str | float | bool | None


@dataclass(frozen=True)
class WorkflowFilter:
    """Which workflow checkpoints a listing returns; empty fields match all."""

    workflow_name: str = ""
    metadata: tuple[MetadataCondition, ...] = ()

    def token_filters(self) -> dict[str, object]:
        """The filters a page token is bound to."""
        return {
            "workflow_name": self.workflow_name,
            "metadata": [[c.key, c.kind, c.value] for c in self.metadata],
        }


def metadata_conditions(
    metadata_filter: struct_pb2.Struct, field: str
) -> tuple[MetadataCondition, ...]:
    """The conditions of a filter object.

    InvalidArgument for more than MAX_FILTER_KEYS keys, a non-scalar value,
    or text holding U+0000 (no stored metadata can hold it).
    """
    if len(metadata_filter.fields) > MAX_FILTER_KEYS:
        raise InvalidArgument(field, f"must hold at most {MAX_FILTER_KEYS} keys")
    conditions = []
    for key in sorted(metadata_filter.fields):
        value = metadata_filter.fields[key]
        which = value.WhichOneof("kind")
        if "\x00" in key:
            raise InvalidArgument(field, f"keys {NUL_RULE}")
        if which == "string_value" and "\x00" in value.string_value:
            raise InvalidArgument(f"{field}.{key}", NUL_RULE)
        if which == "string_value":
            conditions.append(MetadataCondition(key, "string", value.string_value))
        elif which == "number_value":
            conditions.append(MetadataCondition(key, "number", value.number_value))
        elif which == "bool_value":
            conditions.append(MetadataCondition(key, "bool", value.bool_value))
        elif which == "null_value":
            conditions.append(MetadataCondition(key, "null", None))
        else:
            raise InvalidArgument(f"{field}.{key}", "must be a string, a number, a boolean or null")
    return tuple(conditions)


async def metadata_conditions_off_loop(
    metadata_filter: struct_pb2.Struct, field: str
) -> tuple[MetadataCondition, ...]:
    """`metadata_conditions`, on a worker thread for a large filter (its text is copied
    out of the message and scanned, a few milliseconds per megabyte)."""
    return await off_loop_if_large(
        metadata_filter.ByteSize(), metadata_conditions, metadata_filter, field
    )


def metadata_json(metadata: struct_pb2.Struct, field: str = "checkpoint.metadata") -> str:
    """The metadata as a JSON object (the copy filters run on).

    InvalidArgument naming `field` if it holds a number JSON cannot carry
    (NaN or an infinity), or text (a key or a string) holding U+0000.
    """
    try:
        document = json_format.MessageToDict(metadata)
    except ValueError:
        raise InvalidArgument(field, "numbers must be finite") from None
    if _holds_nul(document):
        raise InvalidArgument(field, NUL_RULE)
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


def _holds_nul(value: object) -> bool:
    """Whether a decoded JSON value has U+0000 in any key or string."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in key or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


# -- records ---------------------------------------------------------------


@dataclass(frozen=True)
class StoredCheckpoint:
    """One stored row: its position in save order, owner, id and encoded proto."""

    position: int
    owner: str
    checkpoint_id: str
    data: bytes


@dataclass(frozen=True)
class Minted(Generic[M]):
    """A checkpoint about to be stored: the caller's message stamped in place, its
    encoding, and its create time in microseconds."""

    checkpoint: M
    data: bytes
    create_us: int


@dataclass(frozen=True)
class Saved(Generic[M]):
    """A stored checkpoint (the caller's message, stamped, and its encoding as
    stored) and how many older ones retention dropped with it."""

    checkpoint: M
    data: bytes
    dropped_count: int


@dataclass(frozen=True)
class Recovered:
    """A loaded checkpoint's encoding, as stored, and the newer corrupt ones passed
    over, newest first."""

    data: bytes
    skipped_checkpoint_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CheckpointPage:
    """One page of a listing (each checkpoint's encoding, as stored) and the token of
    the next (empty at the end)."""

    checkpoints: list[bytes]
    next_page_token: str


class CheckpointStore(Protocol):
    """Keeps the checkpoint history of each (namespace, run) and (namespace, agent).

    Every backend guarantees: each save adds a checkpoint with a fresh
    time-sortable id, strictly after every earlier one of its run or agent
    (even within one millisecond) and with a create time never earlier; the
    newest checkpoint is found by an index lookup; the parent check, the
    insert and the retention it triggers form one transaction; an
    acknowledged save is durable; a record that cannot be decoded is
    DataLoss naming it, never skipped unless a fall-back was asked for;
    retention never drops the newest checkpoint.
    """

    async def save_workflow(
        self,
        namespace: str,
        checkpoint: checkpoints_pb2.WorkflowCheckpoint,
        *,
        expected_parent: str | None,
        retention: RetentionOverride,
        defaults: RetentionPolicy,
        now_us: int,
    ) -> Saved[checkpoints_pb2.WorkflowCheckpoint]:
        """Add `checkpoint`, stamped in place (`stamp_workflow`), as its run's newest;
        Aborted if `expected_parent` differs."""

    async def load_workflow(
        self, namespace: str, run_id: str, checkpoint_id: str, *, fallback_to_readable: bool
    ) -> Recovered:
        """The run's newest checkpoint, or the one named; NotFound if there is none."""

    async def list_workflow_history(
        self,
        namespace: str,
        run_id: str,
        where: WorkflowFilter,
        *,
        before: str,
        page_size: int,
        page_token: str,
    ) -> CheckpointPage:
        """A page of the run's checkpoints, newest first."""

    async def list_latest_workflows(
        self, namespace: str, where: WorkflowFilter, *, page_size: int, page_token: str
    ) -> CheckpointPage:
        """A page of the newest checkpoint of each run, in run_id order."""

    async def delete_workflow(self, namespace: str, run_id: str) -> int:
        """Delete the run's whole history; how many checkpoints it had."""

    async def persist_agent(
        self,
        namespace: str,
        checkpoint: checkpoints_pb2.AgentCheckpoint,
        *,
        retention: RetentionOverride,
        defaults: RetentionPolicy,
        now_us: int,
    ) -> Saved[checkpoints_pb2.AgentCheckpoint]:
        """Add `checkpoint`, stamped in place (`stamp_agent`), as its agent's newest."""

    async def recover_agent(
        self, namespace: str, agent_id: str, *, fallback_to_readable: bool
    ) -> Recovered:
        """The agent's newest (readable) checkpoint; NotFound if there is none."""

    async def list_agent_history(
        self, namespace: str, agent_id: str, *, before: str, page_size: int, page_token: str
    ) -> CheckpointPage:
        """A page of the agent's checkpoints, newest first."""

    async def list_latest_agents(
        self, namespace: str, agent_id_prefix: str, *, page_size: int, page_token: str
    ) -> CheckpointPage:
        """A page of the newest checkpoint of each agent whose id starts with
        `agent_id_prefix` (all when empty), in agent_id order: an index range
        scan, however many agents and checkpoints there are."""

    async def delete_agent(self, namespace: str, agent_id: str) -> int:
        """Delete the agent's whole history; how many checkpoints it had."""

    async def sweep(self, defaults: RetentionPolicy, now_us: int) -> int:
        """Apply retention to every run and agent; how many checkpoints it dropped."""


# -- minting ---------------------------------------------------------------


def next_create_us(now_us: int, previous_create_us: int | None) -> int:
    """The create time of a new checkpoint: now, but never before the previous one."""
    return now_us if previous_create_us is None else max(now_us, previous_create_us)


_RANDOM_BITS = 74  # rand_a (12 bits) and rand_b (62 bits) of a UUIDv7
_RAND_B_BITS = 62


def new_checkpoint_id(create_us: int, previous_id: str) -> str:
    """A fresh UUIDv7 carrying `create_us`, sorting after `previous_id`.

    Ids therefore sort by creation time, and strictly in save order within
    one run or agent: when the random bits of a checkpoint minted in the same
    millisecond would sort first, the previous id plus one is used instead.
    """
    minted = str(uuid7(nanoseconds=create_us * 1000))
    if not previous_id or minted > previous_id:
        return minted
    return _successor(previous_id)


def _successor(checkpoint_id: str) -> str:
    """The UUIDv7 right after `checkpoint_id`: its random bits plus one."""
    value = uuid.UUID(checkpoint_id).int
    millis = value >> 80
    rand_a = (value >> 64) & 0xFFF
    rand_b = value & ((1 << _RAND_B_BITS) - 1)
    counter = ((rand_a << _RAND_B_BITS) | rand_b) + 1
    if counter >> _RANDOM_BITS:
        millis, counter = millis + 1, 0
    rand_a, rand_b = counter >> _RAND_B_BITS, counter & ((1 << _RAND_B_BITS) - 1)
    return str(uuid.UUID(int=(millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b))


def mint_workflow(
    checkpoint: checkpoints_pb2.WorkflowCheckpoint,
    *,
    newest_id: str,
    newest_create_us: int | None,
    expected_parent: str | None,
    now_us: int,
) -> Minted[checkpoints_pb2.WorkflowCheckpoint]:
    """The run's next checkpoint, after the newest (`newest_id`, "" if none):
    `checkpoint` stamped in place.

    Raises Aborted (PARENT_MISMATCH) if `expected_parent` is not the newest.
    """
    check_expected_parent(checkpoint.run_id, newest_id, expected_parent)
    create_us = next_create_us(now_us, newest_create_us)
    checkpoint_id = new_checkpoint_id(create_us, newest_id)
    data = stamp_workflow(checkpoint, checkpoint_id, newest_id, create_us)
    return Minted(checkpoint, data, create_us)


def mint_agent(
    checkpoint: checkpoints_pb2.AgentCheckpoint,
    *,
    newest_id: str,
    newest_create_us: int | None,
    now_us: int,
) -> Minted[checkpoints_pb2.AgentCheckpoint]:
    """The agent's next checkpoint, after the newest (`newest_id`, "" if none):
    `checkpoint` stamped in place."""
    create_us = next_create_us(now_us, newest_create_us)
    checkpoint_id = new_checkpoint_id(create_us, newest_id)
    return Minted(checkpoint, stamp_agent(checkpoint, checkpoint_id, create_us), create_us)


def stamp_workflow(
    checkpoint: checkpoints_pb2.WorkflowCheckpoint,
    checkpoint_id: str,
    parent_id: str,
    create_us: int,
) -> bytes:
    """Set the server-assigned fields of `checkpoint` in place; its encoding, to store.

    The caller's message itself is stamped, never copied (a copy of a large
    checkpoint costs as much as parsing it). The server's fields are
    replaced whole, so nothing a caller put in them survives.
    """
    checkpoint.checkpoint_id = checkpoint_id
    checkpoint.parent_checkpoint_id = parent_id
    checkpoint.create_time.CopyFrom(to_timestamp(create_us))
    return checkpoint.SerializeToString()


def stamp_agent(
    checkpoint: checkpoints_pb2.AgentCheckpoint, checkpoint_id: str, create_us: int
) -> bytes:
    """Set the server-assigned fields of `checkpoint` in place, and its timestamp
    (the create time) if it has none; its encoding, to store.

    As `stamp_workflow`: no copy, and nothing a caller put in the server's
    fields survives.
    """
    checkpoint.checkpoint_id = checkpoint_id
    checkpoint.create_time.CopyFrom(to_timestamp(create_us))
    if not checkpoint.HasField("timestamp"):
        checkpoint.timestamp.CopyFrom(checkpoint.create_time)
    return checkpoint.SerializeToString()


# -- decoding and recovery ---------------------------------------------------


def readable_checkpoint(
    message_type: type[M], kind: CheckpointKind, row: StoredCheckpoint
) -> bytes:
    """The stored encoding of `row`'s checkpoint, once it parsed as `message_type`;
    DataLoss (CORRUPT_CHECKPOINT) if it is unreadable.

    A record that parses but does not carry its own row's id is corrupt too
    (random bytes can happen to be valid protobuf). The parse only checks: a
    reply carries the stored bytes themselves, so no client ever receives a
    record that does not decode.
    """
    message = message_type()
    try:
        merge_in_pieces(message, row.data)
    except DecodeError:
        raise corrupt_checkpoint(kind, row.owner, row.checkpoint_id) from None
    if message.checkpoint_id != row.checkpoint_id:
        raise corrupt_checkpoint(kind, row.owner, row.checkpoint_id)
    return row.data


async def newest_readable(
    message_type: type[M],
    kind: CheckpointKind,
    newest: StoredCheckpoint,
    older: Callable[[int, int], Awaitable[Sequence[StoredCheckpoint]]],
    *,
    fallback_to_readable: bool,
) -> Recovered:
    """Check `newest` readable; if it is corrupt and a fall-back was asked, walk back.

    `older(position, limit)` returns up to `limit` checkpoints saved before
    `position`, newest first (fewer when they are large, at least one).
    Without the fall-back a corrupt newest is DataLoss; with it, DataLoss only
    when no checkpoint is readable.
    """
    try:
        return Recovered(readable_checkpoint(message_type, kind, newest))
    except DataLoss as error:
        if not fallback_to_readable:
            raise
        newest_error = error
    skipped = [newest.checkpoint_id]
    position = newest.position
    while rows := await older(position, FALLBACK_CHUNK):
        for row in rows:
            try:
                return Recovered(readable_checkpoint(message_type, kind, row), skipped)
            except DataLoss:
                skipped.append(row.checkpoint_id)
        position = rows[-1].position
    raise DataLoss(
        newest_error.reason,
        f"no checkpoint of {kind.noun} {newest.owner} is readable ({len(skipped)} corrupt)",
        **newest_error.metadata,
    )


# -- paging ------------------------------------------------------------------


def workflow_history_filters(run_id: str, before: str, where: WorkflowFilter) -> dict[str, object]:
    """The filters a page token of a run's history is bound to."""
    return {"list": "workflow_history", "run_id": run_id, "before": before, **where.token_filters()}


def latest_workflows_filters(where: WorkflowFilter) -> dict[str, object]:
    """The filters a page token of the newest-per-run listing is bound to."""
    return {"list": "latest_workflows", **where.token_filters()}


def latest_agents_filters(agent_id_prefix: str) -> dict[str, object]:
    """The filters a page token of the newest-per-agent listing is bound to."""
    return {"list": "latest_agents", "agent_id_prefix": agent_id_prefix}


_MAX_CODE_POINT = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


def prefix_end(prefix: str) -> str | None:
    """The smallest key after every key that starts with `prefix`, in code point
    order (the byte order of UTF-8, which SQLite's BINARY and PostgreSQL's "C"
    collations follow); None when no key bounds them from above (an empty
    prefix, or one made only of the last code point).

    The keys starting with `prefix` are exactly those in `[prefix, end)`: an
    index on the key answers that as a range scan, unlike LIKE on caller text.
    """
    stem = prefix
    while stem and ord(stem[-1]) == _MAX_CODE_POINT:
        stem = stem[:-1]
    if not stem:
        return None
    following = ord(stem[-1]) + 1
    if following in _SURROGATES:
        following = _SURROGATES.stop
    return stem[:-1] + chr(following)


def agent_history_filters(agent_id: str, before: str) -> dict[str, object]:
    """The filters a page token of an agent's history is bound to."""
    return {"list": "agent_history", "agent_id": agent_id, "before": before}


def stored_size(row: StoredCheckpoint) -> int:
    """The encoded size of a stored row's checkpoint as a listing returns it."""
    return len(row.data)


def history_page(
    message_type: type[M],
    kind: CheckpointKind,
    rows: Sequence[StoredCheckpoint],
    more: bool,
    filters: dict[str, object],
) -> CheckpointPage:
    """A history page of `rows`, newest first; `more`: older rows follow them.

    The token then resumes below the position of the page's last row.
    """
    checkpoints = [readable_checkpoint(message_type, kind, row) for row in rows]
    token = encode_page_token(rows[-1].position, filters) if more and rows else ""
    return CheckpointPage(checkpoints, token)


def latest_page(
    message_type: type[M],
    kind: CheckpointKind,
    rows: Sequence[StoredCheckpoint],
    more: bool,
    filters: dict[str, object],
) -> CheckpointPage:
    """A newest-per-run page of `rows`, in owner order; `more`: rows follow them.

    The token then resumes after the owner of the page's last row.
    """
    checkpoints = [readable_checkpoint(message_type, kind, row) for row in rows]
    token = encode_page_token(rows[-1].owner, filters) if more and rows else ""
    return CheckpointPage(checkpoints, token)


# -- errors ----------------------------------------------------------------


def check_expected_parent(run_id: str, actual_parent: str, expected_parent: str | None) -> None:
    """Raise Aborted (PARENT_MISMATCH) unless `expected_parent` is None or the newest id.

    An empty `expected_parent` expects a run without checkpoints; an empty
    `actual_parent` means the run has none.
    """
    if expected_parent is not None and expected_parent != actual_parent:
        newest = f"checkpoint {actual_parent}" if actual_parent else "no checkpoint"
        raise Aborted(
            "PARENT_MISMATCH",
            f"run {run_id} has {newest} as its newest, not {expected_parent or 'none'}",
            run_id=run_id,
            expected_parent=expected_parent,
            actual_parent=actual_parent,
        )


def no_checkpoint(kind: CheckpointKind, owner: str) -> NotFound:
    """The error of every backend for a run or agent without checkpoints."""
    return NotFound(
        "NO_CHECKPOINT", f"{kind.noun} {owner} has no checkpoint", **{kind.owner_field: owner}
    )


def checkpoint_not_found(kind: CheckpointKind, owner: str, checkpoint_id: str) -> NotFound:
    """The error for a checkpoint id the run or agent does not have."""
    return NotFound(
        "NO_CHECKPOINT",
        f"{kind.noun} {owner} has no checkpoint {checkpoint_id}",
        checkpoint_id=checkpoint_id,
        **{kind.owner_field: owner},
    )


def corrupt_checkpoint(kind: CheckpointKind, owner: str, checkpoint_id: str) -> DataLoss:
    """The error for a stored checkpoint that cannot be decoded."""
    store_metrics.store_error("corrupt")
    return DataLoss(
        "CORRUPT_CHECKPOINT",
        f"checkpoint {checkpoint_id} of {kind.noun} {owner} is corrupt",
        checkpoint_id=checkpoint_id,
        **{kind.owner_field: owner},
    )
