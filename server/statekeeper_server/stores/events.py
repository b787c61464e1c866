"""The event log interface: per-run ordered events, and the rules every backend shares.

Backends keep the SQL; this module keeps what does not depend on a
database: validation of events, the decisions of an append (idempotent
retries, terminal runs, seq expectations), error construction, the key
followers are woken on. Envelopes travel as bytes (see `event_wire`):
appends encode them once, reads and replays send them as stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from statekeeper.v1 import events_pb2
from statekeeper.v1.common_pb2 import FinishReason
from statekeeper_server.errors import (
    Aborted,
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
)
from statekeeper_server.limits import PAGE_BUDGET_BYTES
from statekeeper_server.observability import store_metrics
from statekeeper_server.offload import off_loop_if_many
from statekeeper_server.stores import event_wire
from statekeeper_server.stores.paging import encode_page_token
from statekeeper_server.timestamps import to_timestamp
from statekeeper_server.uuid7 import uuid7
from statekeeper_server.validation import enum_value, is_id, optional_id, require_id, require_text

MAX_BATCH_EVENTS = 1000
MAX_SEQ = 2**63 - 1
"""No seq exceeds the largest signed 64-bit integer (the widest integer of every database)."""
MAX_CUSTOM_TYPE_LENGTH = 128
TERMINAL_KINDS = frozenset({"run_completed", "run_failed", "run_cancelled"})
EVENT_KINDS = ("run_started", "run_completed", "run_failed", "run_cancelled", "custom")
FINISH_REASONS = frozenset(FinishReason.values())


# -- records ---------------------------------------------------------------


class RunState(NamedTuple):
    """What a backend knows about one run of the event log.

    A named tuple: the writer thread builds one per append, and a frozen
    dataclass takes several times longer to construct.
    """

    run_id: str
    session_id: str
    first_seq: int
    """First seq still kept (last_seq + 1 when every event was truncated)."""
    last_seq: int
    terminal: bool
    create_us: int
    update_us: int

    def info(self) -> events_pb2.RunInfo:
        """This run as the API's RunInfo."""
        return events_pb2.RunInfo(
            run_id=self.run_id,
            session_id=self.session_id,
            first_seq=self.first_seq,
            last_seq=self.last_seq,
            terminal=self.terminal,
            create_time=to_timestamp(self.create_us),
            update_time=to_timestamp(self.update_us),
        )


class EventPage(NamedTuple):
    """Committed envelopes after a seq, read in one snapshot with their run's state.

    `envelopes` are serialized `EventEnvelope`s in seq order, exactly as
    stored; `through_seq` is the seq of the last one (the requested
    `after_seq` when there is none). `run` is None for an unknown run.
    """

    run: RunState | None
    envelopes: list[bytes]
    through_seq: int


@dataclass(frozen=True)
class RunPage:
    """One page of runs and the token of the next (empty at the end)."""

    runs: list[events_pb2.RunInfo]
    next_page_token: str


PREFIX_END = chr(0x10FFFF)
"""Sorts after every character: the runs of a prefix P are those in [P, P + PREFIX_END)."""


@dataclass(frozen=True)
class RunFilter:
    """Which runs a listing returns: those whose run_id starts with `prefix`, of
    `session_id` and of `terminal` state, each only when set ("" / None: any)."""

    prefix: str = ""
    session_id: str = ""
    terminal: bool | None = None

    def token_filters(self) -> dict[str, object]:
        """The filters a page token of this listing is bound to (an unfiltered
        listing's are RUNS_FILTERS, as they always were)."""
        filters = dict(RUNS_FILTERS)
        if self.prefix:
            filters["prefix"] = self.prefix
        if self.session_id:
            filters["session"] = self.session_id
        if self.terminal is not None:
            filters["terminal"] = self.terminal
        return filters

    def prefix_end(self) -> str:
        """The exclusive upper bound of the run ids of `prefix` (only when it is set)."""
        return self.prefix + PREFIX_END


ALL_RUNS = RunFilter()


@dataclass(frozen=True)
class Truncation:
    """The outcome of a truncation: the first seq kept and how many events went."""

    first_seq: int
    dropped: int


class PreparedInput(NamedTuple):
    """An input ready for the writer: its event and kind, its final event id, the digest
    that recognises a retry if the caller chose that id, and the two fields of its
    envelope that need no seq, already encoded (so the writer only joins bytes)."""

    event: events_pb2.AgentEvent
    event_id: str
    digest: bytes | None
    kind: str
    id_field: bytes
    event_field: bytes


@dataclass(frozen=True)
class StoredEventId:
    """A client event id already used in a run: where it went and what it carried."""

    seq: int
    digest: bytes


class EventStore(Protocol):
    """Keeps an append-only, ordered log of events per (namespace, run).

    Every backend guarantees: seqs start at 1 per run and are assigned at
    commit, gapless and unique under any concurrency; an append of several
    inputs is atomic; an acknowledged append is durable and only then wakes
    the followers of its run (`event_key`); a failed append leaves no trace
    and wakes no one; truncation never makes a seq reusable; client event
    ids stay reserved for the life of the run.
    """

    async def append(
        self,
        namespace: str,
        run_id: str,
        inputs: Sequence[events_pb2.EventInput],
        expectation: events_pb2.SeqExpectation | None,
    ) -> list[bytes]:
        """Append `inputs` in order; return one serialized envelope per input, in order.

        Inputs whose event_id is already stored with the same event yield
        their original envelope and store nothing. Raises InvalidArgument
        (see `validate_event_inputs`), AlreadyExists (EVENT_ID_CONFLICT,
        EVENT_TRUNCATED), FailedPrecondition (RUN_TERMINATED) or Aborted
        (SEQ_MISMATCH with `actual_last_seq`); then nothing is stored.
        """

    async def read(
        self,
        namespace: str,
        run_id: str,
        after_seq: int,
        limit: int,
        max_bytes: int = PAGE_BUDGET_BYTES,
        *,
        stream: bool = False,
    ) -> EventPage:
        """The committed envelopes with seq > after_seq, and the run's state.

        The page holds at most `limit` envelopes and `max_bytes` bytes of them
        (`stores.budget.fill_page`), at least one when any is left; the store
        reads no more than that. `stream` marks the read of a replay's next
        page: the backend serves it beside point reads, never ahead of them.
        """

    def recent(
        self,
        namespace: str,
        run_id: str,
        after_seq: int,
        limit: int,
        max_bytes: int = PAGE_BUDGET_BYTES,
    ) -> EventPage | None:
        """What `read` would return, from memory, when the run's newest commits made by
        this process are kept there and reach back to `after_seq`; else None (then read).

        For followers woken by those commits: it may lag a commit made
        elsewhere (another replica), which wakes them again.
        """

    async def list_runs(
        self, namespace: str, page_size: int, page_token: str, where: RunFilter = ALL_RUNS
    ) -> RunPage:
        """A page of the namespace's runs that pass `where` (default: all), in run_id
        order, at most `page_size` and PAGE_BUDGET_BYTES of them.

        Every filter is served by an index range: a filtered page reads the
        runs it returns (and one more), however many runs fail the filter.
        The page token is bound to `where`.
        """

    async def delete_run(self, namespace: str, run_id: str) -> bool:
        """Delete the run, its events and its event ids; whether it existed."""

    async def truncate(self, namespace: str, run_id: str, up_to_seq: int) -> Truncation:
        """Drop the run's events with seq <= up_to_seq; NotFound for an unknown run."""


RUNS_FILTERS: dict[str, object] = {"list": "runs"}
"""The filters a page token of an unfiltered run listing is bound to."""


def run_filter(prefix: str, session_id: str, terminal: bool | None) -> RunFilter:
    """The filter of a ListRuns request; InvalidArgument naming `run_id_prefix` or
    `session_id` unless each is empty or has the form of an id (so a prefix holds
    no character a range bound could misread)."""
    return RunFilter(
        optional_id(prefix, "run_id_prefix"), optional_id(session_id, "session_id"), terminal
    )


def start_after(after: str, where: RunFilter) -> tuple[str, bool]:
    """The lower bound of a filtered page's run ids: (bound, inclusive). A page resumes
    after the token's run `after`, and never starts before the prefix."""
    if where.prefix and where.prefix > after:
        return where.prefix, True
    return after, False


def run_page(runs: list[events_pb2.RunInfo], more: bool, where: RunFilter = ALL_RUNS) -> RunPage:
    """The listing page of `runs` under `where`; `more`: runs follow them."""
    token = encode_page_token(runs[-1].run_id, where.token_filters()) if more and runs else ""
    return RunPage(runs, token)


def run_info_size(run: events_pb2.RunInfo) -> int:
    """The encoded size of `run` in a run listing."""
    return run.ByteSize()


def event_key(namespace: str, run_id: str) -> tuple[str, str, str]:
    """The notifier key woken after every commit that changes the run's log."""
    return ("events", namespace, run_id)


# -- validation --------------------------------------------------------------


def is_terminal(kind: str | None) -> bool:
    """Whether an event of `kind` (its `kind` oneof) ends its run: completed, failed or
    cancelled."""
    return kind in TERMINAL_KINDS


def validate_event_input(item: events_pb2.EventInput, field: str) -> str:
    """Return the event's kind; raise InvalidArgument naming the part of `item` (called
    `field`) that is wrong.

    The event must set one kind; a RunStarted needs a session_id (an id), a
    RunCompleted a known finish reason, a custom event a type of 1-128
    characters; a supplied event_id must be an id.
    """
    event = item.event
    kind = event.WhichOneof("kind")
    # Field names are spelled out only on the way to an error: this runs per event.
    if kind is None:
        if not item.HasField("event"):
            raise InvalidArgument(f"{field}.event", "is required")
        raise InvalidArgument(f"{field}.event", "must set one of " + ", ".join(EVENT_KINDS))
    if kind == "custom":
        if not 0 < len(event.custom.type) <= MAX_CUSTOM_TYPE_LENGTH:
            require_text(
                event.custom.type, f"{field}.event.custom.type", max_length=MAX_CUSTOM_TYPE_LENGTH
            )
    elif kind == "run_started":
        require_id(event.run_started.session_id, f"{field}.event.run_started.session_id")
    elif kind == "run_completed":
        enum_value(
            event.run_completed.finish_reason,
            f"{field}.event.run_completed.finish_reason",
            FINISH_REASONS,
            required=False,
        )
    if item.event_id and not is_id(item.event_id):
        require_id(item.event_id, f"{field}.event_id")
    return kind


def validate_event_inputs(inputs: Sequence[events_pb2.EventInput], field_prefix: str) -> list[str]:
    """Return each input's kind; raise InvalidArgument naming `<field_prefix>[i]...`
    unless the batch can be appended.

    A batch holds 1 to 1000 valid inputs (`validate_event_input`), no event
    id twice, and nothing after a terminal event.
    """
    if not 1 <= len(inputs) <= MAX_BATCH_EVENTS:
        raise InvalidArgument(field_prefix, f"must hold 1 to {MAX_BATCH_EVENTS} events")
    kinds: list[str] = []
    first_use: dict[str, int] = {}
    terminal_at: int | None = None
    for index, item in enumerate(inputs):
        kinds.append(validate_event_input(item, f"{field_prefix}[{index}]"))
        if terminal_at is not None:
            raise InvalidArgument(
                f"{field_prefix}[{index}].event",
                f"follows the terminal event {field_prefix}[{terminal_at}]; nothing may follow it",
            )
        if is_terminal(kinds[-1]):
            terminal_at = index
        if item.event_id:
            earlier = first_use.setdefault(item.event_id, index)
            if earlier != index:
                raise InvalidArgument(
                    f"{field_prefix}[{index}].event_id",
                    f"repeats {field_prefix}[{earlier}].event_id",
                )
    return kinds


def validate_expectation(expectation: events_pb2.SeqExpectation | None, field: str) -> None:
    """Raise InvalidArgument if a flag condition of `expectation` is set to false."""
    if expectation is None:
        return
    condition = expectation.WhichOneof("condition")
    if condition in ("no_run", "run_exists") and not getattr(expectation, condition):
        raise InvalidArgument(f"{field}.{condition}", "must be true when set")


# -- decisions of an append ----------------------------------------------------


def event_digest(event: events_pb2.AgentEvent) -> bytes:
    """A digest of the event as sent, equal for equal events (deterministic encoding)."""
    return hashlib.sha256(event.SerializeToString(deterministic=True)).digest()


def prepare_inputs(
    inputs: Sequence[events_pb2.EventInput], kinds: Sequence[str]
) -> list[PreparedInput]:
    """Give every input (of the kind in `kinds`) its final event id, a minted UUIDv7
    unless supplied, and encode what its envelope takes from it.

    Only supplied ids get a digest: minted ones are new by construction.
    """
    prepared: list[PreparedInput] = []
    for item, kind in zip(inputs, kinds, strict=True):
        event, event_id = item.event, item.event_id
        digest = event_digest(event) if event_id else None
        event_id = event_id or str(uuid7())
        prepared.append(
            PreparedInput(
                event,
                event_id,
                digest,
                kind,
                event_wire.event_id_field(event_id),
                event_wire.event_field(event.SerializeToString()),
            )
        )
    return prepared


def resolve_retries(
    run_id: str,
    prepared: Sequence[PreparedInput],
    stored: Mapping[str, StoredEventId],
    run: RunState | None,
) -> dict[int, int]:
    """Map the index of each input that repeats a stored event to its original seq.

    Raises AlreadyExists EVENT_ID_CONFLICT when a stored id carried another
    event, and EVENT_TRUNCATED when the original was truncated away (so a
    late retry never appends a second copy).
    """
    retries: dict[int, int] = {}
    for index, item in enumerate(prepared):
        if item.digest is None or item.event_id not in stored:
            continue
        original = stored[item.event_id]
        if original.digest != item.digest:
            raise AlreadyExists(
                "EVENT_ID_CONFLICT",
                f"event id {item.event_id} of run {run_id} is already used by another event"
                f" (seq {original.seq})",
                run_id=run_id,
                event_id=item.event_id,
                seq=original.seq,
            )
        if run is not None and original.seq < run.first_seq:
            raise AlreadyExists(
                "EVENT_TRUNCATED",
                f"event {item.event_id} of run {run_id} was appended as seq {original.seq},"
                f" which truncation has since dropped",
                run_id=run_id,
                event_id=item.event_id,
                seq=original.seq,
                first_seq=run.first_seq,
            )
        retries[index] = original.seq
    return retries


def check_append_allowed(
    run_id: str, run: RunState | None, expectation: events_pb2.SeqExpectation | None
) -> None:
    """Raise unless new events may be appended to `run` now.

    A terminal run takes no more events (FailedPrecondition RUN_TERMINATED);
    a failed expectation is Aborted SEQ_MISMATCH with `actual_last_seq`.
    """
    if run is not None and run.terminal:
        raise FailedPrecondition(
            "RUN_TERMINATED",
            f"run {run_id} ended with its terminal event at seq {run.last_seq}",
            run_id=run_id,
            last_seq=run.last_seq,
        )
    if expectation is None:
        return
    condition = expectation.WhichOneof("condition")
    actual = run.last_seq if run is not None else 0
    if condition == "no_run":
        met, wanted = run is None, "no run yet"
    elif condition == "run_exists":
        met, wanted = run is not None, "an existing run"
    elif condition == "last_seq":
        met, wanted = actual == expectation.last_seq, f"last seq {expectation.last_seq}"
    else:
        return
    if not met:
        raise Aborted(
            "SEQ_MISMATCH",
            f"run {run_id} is at last seq {actual}; the append expected {wanted}",
            run_id=run_id,
            actual_last_seq=actual,
        )


@dataclass(frozen=True)
class NewEvents:
    """Serialized envelopes built for an append, and the run's state after it."""

    encoded: list[bytes]
    first_seq: int
    """Seq of the first envelope; the others follow it one by one."""
    session_id: str
    last_seq: int
    terminal: bool


def build_envelopes(
    run_id: str, run: RunState | None, prepared: Sequence[PreparedInput], now_us: int
) -> NewEvents:
    """Number `prepared` after the run's last seq and encode each in its envelope.

    A RunStarted sets the session of itself and of every later envelope.
    """
    session_id = run.session_id if run is not None else ""
    seq = run.last_seq if run is not None else 0
    first_seq = seq + 1
    run_field = event_wire.run_id_field(run_id)
    session_field = event_wire.session_id_field(session_id)
    time_field = event_wire.timestamp_field(now_us)
    encoded: list[bytes] = []
    terminal = False
    for item in prepared:
        seq += 1
        if item.kind == "run_started":
            session_id = item.event.run_started.session_id
            session_field = event_wire.session_id_field(session_id)
        elif is_terminal(item.kind):
            terminal = True
        encoded.append(
            event_wire.envelope(
                item.id_field, seq, run_field, session_field, item.event_field, time_field
            )
        )
    return NewEvents(encoded, first_seq, session_id, seq, terminal)


def run_after_append(run_id: str, run: RunState | None, new: NewEvents, now_us: int) -> RunState:
    """The run's state once `new` is committed (a first append creates the run at `now_us`)."""
    return RunState(
        run_id=run_id,
        session_id=new.session_id,
        first_seq=run.first_seq if run is not None else 1,
        last_seq=new.last_seq,
        terminal=new.terminal,
        create_us=run.create_us if run is not None else now_us,
        update_us=now_us,
    )


def merge_results(
    count: int, retries: Mapping[int, int], originals: Mapping[int, bytes], new: Iterable[bytes]
) -> list[bytes]:
    """One envelope per input, in input order: the original for a retry, else the next new one."""
    fresh = iter(new)
    return [originals[retries[i]] if i in retries else next(fresh) for i in range(count)]


async def prepare_append(
    run_id: str,
    inputs: Sequence[events_pb2.EventInput],
    expectation: events_pb2.SeqExpectation | None,
) -> list[PreparedInput]:
    """Validate an append and give each input its final event id (`prepare_inputs`), on
    a worker thread for a large batch.

    Raises InvalidArgument naming `run_id`, `inputs[i]...` or `expectation...`.
    """
    return await off_loop_if_many(len(inputs), _prepare_append, run_id, inputs, expectation)


def _prepare_append(
    run_id: str,
    inputs: Sequence[events_pb2.EventInput],
    expectation: events_pb2.SeqExpectation | None,
) -> list[PreparedInput]:
    require_id(run_id, "run_id")
    kinds = validate_event_inputs(inputs, "inputs")
    validate_expectation(expectation, "expectation")
    return prepare_inputs(inputs, kinds)


def supplied_event_ids(prepared: Sequence[PreparedInput]) -> list[str]:
    """The event ids the caller chose (the only ones a stored event may already hold)."""
    return [item.event_id for item in prepared if item.digest is not None]


@dataclass(frozen=True)
class AppendPlan:
    """What an append does, decided against the run's state under the writer's lock."""

    count: int
    """Inputs of the append."""
    retries: dict[int, int]
    """Index of each input that repeats a stored event -> the seq it was stored as."""
    fresh: list[PreparedInput]
    """Inputs to store, in order; empty when the whole append is a retry."""

    def results(self, originals: Mapping[int, bytes], new: Iterable[bytes]) -> list[bytes]:
        """One envelope per input (`merge_results`) from the originals and the new envelopes."""
        return merge_results(self.count, self.retries, originals, new)


def plan_append(
    run_id: str,
    prepared: Sequence[PreparedInput],
    stored: Mapping[str, StoredEventId],
    run: RunState | None,
    expectation: events_pb2.SeqExpectation | None,
) -> AppendPlan:
    """Split an append into retries of stored events and inputs to store.

    `stored` holds the run's events with any of `supplied_event_ids(prepared)`.
    Raises as `resolve_retries` does, and, when anything is left to store, as
    `check_append_allowed` does; a pure retry ignores terminal runs and
    expectations.
    """
    retries = resolve_retries(run_id, prepared, stored, run)
    fresh = [item for index, item in enumerate(prepared) if index not in retries]
    if fresh:
        check_append_allowed(run_id, run, expectation)
    return AppendPlan(len(prepared), retries, fresh)


# -- errors and decoding ---------------------------------------------------------


def run_not_found(run_id: str, *, deleted: bool = False) -> NotFound:
    """The error of every backend for a run without events."""
    message = f"run {run_id} was deleted" if deleted else f"run {run_id} has no events"
    return NotFound("RUN_NOT_FOUND", message, run_id=run_id)


def check_read_position(run_id: str, run: RunState, after_seq: int) -> None:
    """Raise OutOfRange unless reading after `after_seq` misses nothing and skips nothing.

    Below the first kept seq minus one is SEQ_TRUNCATED (metadata `first_seq`);
    above the last seq is SEQ_BEYOND_LAST (metadata `last_seq`).
    """
    if after_seq < run.first_seq - 1:
        raise OutOfRange(
            "SEQ_TRUNCATED",
            f"run {run_id} keeps events from seq {run.first_seq}; seqs after {after_seq}"
            " were truncated",
            run_id=run_id,
            first_seq=run.first_seq,
        )
    if after_seq > run.last_seq:
        raise OutOfRange(
            "SEQ_BEYOND_LAST",
            f"run {run_id} has events up to seq {run.last_seq}, not {after_seq}",
            run_id=run_id,
            last_seq=run.last_seq,
        )


def query_seq(seq: int) -> int:
    """`seq` as a query bound: a wire seq (uint64) above MAX_SEQ selects as MAX_SEQ does."""
    return min(seq, MAX_SEQ)


def truncation_point(run: RunState, up_to_seq: int) -> int | None:
    """The run's first kept seq once events up to `up_to_seq` are dropped (at most all
    of them); None when that drops nothing more."""
    first_seq = min(up_to_seq, run.last_seq) + 1
    return first_seq if first_seq > run.first_seq else None


def missing_event(run_id: str, seq: int) -> DataLoss:
    """The error for a seq the run's counters promise but the store does not hold."""
    store_metrics.store_error("corrupt")
    return DataLoss(
        "MISSING_EVENT",
        f"event {seq} of run {run_id} is missing from the store",
        run_id=run_id,
        seq=seq,
    )


def require_originals(
    run_id: str, seqs: Iterable[int], found: Mapping[int, bytes]
) -> dict[int, bytes]:
    """The stored envelopes of `seqs` from `found` by seq; DataLoss MISSING_EVENT for a
    seq not found."""
    originals: dict[int, bytes] = {}
    for seq in seqs:
        if seq not in found:
            raise missing_event(run_id, seq)
        originals[seq] = found[seq]
    return originals
