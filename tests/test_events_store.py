"""Conformance of every backend's EventStore."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from statekeeper.v1 import events_pb2
from statekeeper_server.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from statekeeper_server.stores import Store
from statekeeper_server.stores.events import RunFilter, event_key
from statekeeper_server.stores.paging import encode_page_token

NS = "default"
Expectation = events_pb2.SeqExpectation


def started(session_id: str = "session-1", event_id: str = "") -> events_pb2.EventInput:
    """A RunStarted input."""
    event = events_pb2.AgentEvent(
        run_started=events_pb2.RunStarted(session_id=session_id, provider="acme", model="m-1")
    )
    return events_pb2.EventInput(event=event, event_id=event_id)


def custom(
    event_type: str = "tool.call", event_id: str = "", **data: float | str
) -> events_pb2.EventInput:
    """A custom event input carrying `data`."""
    event = events_pb2.AgentEvent(custom=events_pb2.CustomEvent(type=event_type))
    event.custom.data.update(data)
    return events_pb2.EventInput(event=event, event_id=event_id)


def completed(event_id: str = "") -> events_pb2.EventInput:
    """A RunCompleted input (terminal)."""
    event = events_pb2.AgentEvent(
        run_completed=events_pb2.RunCompleted(finish_reason=1, iterations=1)  # type: ignore[arg-type]
    )
    return events_pb2.EventInput(event=event, event_id=event_id)


def failed() -> events_pb2.EventInput:
    """A RunFailed input (terminal)."""
    return events_pb2.EventInput(
        event=events_pb2.AgentEvent(run_failed=events_pb2.RunFailed(error="boom"))
    )


def cancelled() -> events_pb2.EventInput:
    """A RunCancelled input (terminal)."""
    return events_pb2.EventInput(
        event=events_pb2.AgentEvent(run_cancelled=events_pb2.RunCancelled(reason="user"))
    )


async def append(
    store: Store,
    run_id: str,
    *inputs: events_pb2.EventInput,
    expectation: events_pb2.SeqExpectation | None = None,
) -> list[events_pb2.EventEnvelope]:
    appended = await store.events.append(NS, run_id, inputs, expectation)
    return [events_pb2.EventEnvelope.FromString(data) for data in appended]


async def stored(store: Store, run_id: str, after_seq: int = 0) -> list[events_pb2.EventEnvelope]:
    page = await store.events.read(NS, run_id, after_seq, 1000)
    return [events_pb2.EventEnvelope.FromString(data) for data in page.envelopes]


async def last_seq(store: Store, run_id: str) -> int:
    run = (await store.events.read(NS, run_id, 0, 1)).run
    return run.last_seq if run else 0


# -- seq, session and reads (the seed's behaviour) -----------------------------


async def test_append_assigns_monotonic_seq_per_run(store: Store) -> None:
    envelopes = [
        (await append(store, "run-1", item))[0] for item in (started(), custom(), custom())
    ]
    assert [e.seq for e in envelopes] == [1, 2, 3]


async def test_each_run_counts_its_own_seqs(store: Store) -> None:
    await append(store, "run-a", started(), custom())
    (first_of_b,) = await append(store, "run-b", started())
    assert first_of_b.seq == 1


async def test_append_propagates_session_id_from_run_started(store: Store) -> None:
    (start,) = await append(store, "run-1", started("session-9"))
    (later,) = await append(store, "run-1", completed())
    assert (start.session_id, later.session_id) == ("session-9", "session-9")


async def test_events_before_run_started_have_no_session(store: Store) -> None:
    (early,) = await append(store, "run-1", custom())
    assert early.session_id == ""


async def test_a_later_run_started_switches_the_session(store: Store) -> None:
    await append(store, "run-1", started("session-1"))
    envelopes = await append(store, "run-1", started("session-2"), custom())
    assert [e.session_id for e in envelopes] == ["session-2", "session-2"]


async def test_envelope_carries_run_event_and_commit_time(store: Store) -> None:
    item = custom(step=3)
    (envelope,) = await append(store, "run-1", item)
    assert envelope.run_id == "run-1"
    assert envelope.event == item.event
    assert envelope.emitted_at.seconds > 0


async def test_read_returns_exactly_the_appended_envelopes(store: Store) -> None:
    appended = await append(store, "run-1", started(), custom(a=1), completed())
    assert await stored(store, "run-1") == appended


async def test_read_after_filters_by_seq(store: Store) -> None:
    await append(store, "run-1", started(), custom(), custom())
    assert [e.seq for e in await stored(store, "run-1", after_seq=2)] == [3]


async def test_read_respects_limit(store: Store) -> None:
    await append(store, "run-1", started(), custom(), custom())
    page = await store.events.read(NS, "run-1", 0, 2)
    assert len(page.envelopes) == 2
    assert page.through_seq == 2


async def test_read_after_the_largest_wire_seq_returns_nothing(store: Store) -> None:
    await append(store, "run-1", started())
    page = await store.events.read(NS, "run-1", 2**64 - 1, 10)
    assert (page.envelopes, page.through_seq) == ([], 2**64 - 1)


async def test_unknown_run_reads_as_no_run(store: Store) -> None:
    page = await store.events.read(NS, "no-such-run", 0, 10)
    assert page.run is None
    assert page.envelopes == []


@pytest.mark.parametrize("terminal", [completed, failed, cancelled])
async def test_terminal_variants_close_the_run(store: Store, terminal: object) -> None:
    assert callable(terminal)
    await append(store, "run-1", started())
    assert not (await store.events.read(NS, "run-1", 0, 1)).run.terminal  # type: ignore[union-attr]
    await append(store, "run-1", terminal())
    assert (await store.events.read(NS, "run-1", 0, 1)).run.terminal  # type: ignore[union-attr]


async def test_append_after_the_terminal_event_is_run_terminated(store: Store) -> None:
    await append(store, "run-1", started(), completed())
    with pytest.raises(FailedPrecondition) as caught:
        await append(store, "run-1", custom())
    assert caught.value.reason == "RUN_TERMINATED"
    assert caught.value.metadata["last_seq"] == "2"
    assert await last_seq(store, "run-1") == 2


# -- concurrency ---------------------------------------------------------------


async def test_fifty_concurrent_appenders_get_seqs_one_to_n(store: Store) -> None:
    async def appender(worker: int) -> list[int]:
        return [(await append(store, "run-1", custom(worker=worker)))[0].seq for _ in range(4)]

    seqs = [seq for worker in await asyncio.gather(*map(appender, range(50))) for seq in worker]
    assert sorted(seqs) == list(range(1, 201))
    assert [e.seq for e in await stored(store, "run-1")] == list(range(1, 201))


async def test_concurrent_batches_are_never_interleaved(store: Store) -> None:
    batches = await asyncio.gather(
        *(append(store, "run-1", *[custom(batch=b)] * 5) for b in range(20))
    )
    for batch in batches:
        seqs = [e.seq for e in batch]
        assert seqs == list(range(seqs[0], seqs[0] + 5))
    assert sorted(e.seq for batch in batches for e in batch) == list(range(1, 101))


# -- event ids and idempotency -------------------------------------------------


async def test_server_mints_uuid7_event_ids(store: Store) -> None:
    envelopes = await append(store, "run-1", custom(), custom())
    ids = [uuid.UUID(e.event_id) for e in envelopes]
    assert [i.version for i in ids] == [7, 7]
    assert ids[0] != ids[1]


async def test_supplied_event_id_is_kept(store: Store) -> None:
    (envelope,) = await append(store, "run-1", custom(event_id="call-1"))
    assert envelope.event_id == "call-1"


async def test_retry_with_the_same_event_id_returns_the_original_envelope(store: Store) -> None:
    (original,) = await append(store, "run-1", custom(event_id="e-1", n=1))
    await append(store, "run-1", custom())
    (retried,) = await append(store, "run-1", custom(event_id="e-1", n=1))
    assert retried == original
    assert await last_seq(store, "run-1") == 2


async def test_same_event_id_with_other_content_is_event_id_conflict(store: Store) -> None:
    await append(store, "run-1", custom(event_id="e-1", n=1))
    with pytest.raises(AlreadyExists) as caught:
        await append(store, "run-1", custom(event_id="e-1", n=2))
    assert caught.value.reason == "EVENT_ID_CONFLICT"
    assert caught.value.metadata == {"run_id": "run-1", "event_id": "e-1", "seq": "1"}
    assert await last_seq(store, "run-1") == 1


async def test_event_ids_are_scoped_to_their_run(store: Store) -> None:
    await append(store, "run-1", custom(event_id="e-1", n=1))
    (other,) = await append(store, "run-2", custom(event_id="e-1", n=2))
    assert (other.run_id, other.seq) == ("run-2", 1)


async def test_retry_of_a_truncated_event_is_event_truncated(store: Store) -> None:
    await append(store, "run-1", custom(event_id="e-1"), custom(), custom())
    await store.events.truncate(NS, "run-1", 2)
    with pytest.raises(AlreadyExists) as caught:
        await append(store, "run-1", custom(event_id="e-1"))
    assert caught.value.reason == "EVENT_TRUNCATED"
    assert (caught.value.metadata["seq"], caught.value.metadata["first_seq"]) == ("1", "3")
    assert await last_seq(store, "run-1") == 3


async def test_retry_after_the_terminal_event_returns_the_original(store: Store) -> None:
    (original,) = await append(store, "run-1", completed(event_id="done"))
    assert await append(store, "run-1", completed(event_id="done")) == [original]


async def test_retry_ignores_the_expectation(store: Store) -> None:
    (original,) = await append(
        store, "run-1", custom(event_id="e-1"), expectation=Expectation(no_run=True)
    )
    retried = await append(
        store, "run-1", custom(event_id="e-1"), expectation=Expectation(no_run=True)
    )
    assert retried == [original]


async def test_batch_retry_appends_only_the_new_inputs(store: Store) -> None:
    (first,) = await append(store, "run-1", custom(event_id="a"))
    envelopes = await append(store, "run-1", custom(event_id="a"), custom(event_id="b"))
    assert envelopes[0] == first
    assert (envelopes[1].event_id, envelopes[1].seq) == ("b", 2)
    assert await last_seq(store, "run-1") == 2


# -- expectations --------------------------------------------------------------


async def test_no_expectation_appends_whatever_the_last_seq(store: Store) -> None:
    await append(store, "run-1", custom(), expectation=None)
    await append(store, "run-1", custom(), expectation=Expectation())
    assert await last_seq(store, "run-1") == 2


async def test_expect_no_run_passes_for_a_new_run(store: Store) -> None:
    (envelope,) = await append(store, "run-1", started(), expectation=Expectation(no_run=True))
    assert envelope.seq == 1


async def test_expect_no_run_fails_for_an_existing_run(store: Store) -> None:
    await append(store, "run-1", started(), custom())
    with pytest.raises(Aborted) as caught:
        await append(store, "run-1", started(), expectation=Expectation(no_run=True))
    assert caught.value.reason == "SEQ_MISMATCH"
    assert caught.value.metadata["actual_last_seq"] == "2"


async def test_expect_run_exists_passes_for_an_existing_run(store: Store) -> None:
    await append(store, "run-1", started())
    (envelope,) = await append(store, "run-1", custom(), expectation=Expectation(run_exists=True))
    assert envelope.seq == 2


async def test_expect_run_exists_fails_for_a_new_run(store: Store) -> None:
    with pytest.raises(Aborted) as caught:
        await append(store, "run-1", custom(), expectation=Expectation(run_exists=True))
    assert caught.value.metadata["actual_last_seq"] == "0"
    assert (await store.events.read(NS, "run-1", 0, 1)).run is None


async def test_expect_last_seq_passes_when_it_matches(store: Store) -> None:
    await append(store, "run-1", started(), custom())
    (envelope,) = await append(store, "run-1", custom(), expectation=Expectation(last_seq=2))
    assert envelope.seq == 3


async def test_expect_last_seq_fails_with_the_actual_last_seq(store: Store) -> None:
    await append(store, "run-1", started(), custom(), custom())
    with pytest.raises(Aborted) as caught:
        await append(store, "run-1", custom(), expectation=Expectation(last_seq=2))
    assert caught.value.reason == "SEQ_MISMATCH"
    assert caught.value.metadata["actual_last_seq"] == "3"
    assert await last_seq(store, "run-1") == 3


async def test_expect_last_seq_zero_means_no_run_yet(store: Store) -> None:
    await append(store, "run-1", started(), expectation=Expectation(last_seq=0))
    with pytest.raises(Aborted):
        await append(store, "run-1", custom(), expectation=Expectation(last_seq=0))


async def test_only_one_of_racing_compare_and_set_appends_wins(store: Store) -> None:
    await append(store, "run-1", started())
    outcomes = await asyncio.gather(
        *(append(store, "run-1", custom(), expectation=Expectation(last_seq=1)) for _ in range(10)),
        return_exceptions=True,
    )
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 1
    assert all(isinstance(o, Aborted) for o in outcomes if isinstance(o, BaseException))


# -- atomic batches ------------------------------------------------------------


async def test_batch_gets_consecutive_seqs_in_order(store: Store) -> None:
    envelopes = await append(store, "run-1", started(), custom("a"), custom("b"), completed())
    assert [e.seq for e in envelopes] == [1, 2, 3, 4]
    assert [e.event.WhichOneof("kind") for e in envelopes] == [
        "run_started",
        "custom",
        "custom",
        "run_completed",
    ]


async def test_batch_with_one_invalid_event_stores_nothing(store: Store) -> None:
    await append(store, "run-1", started())
    with pytest.raises(InvalidArgument) as caught:
        await append(store, "run-1", custom(), custom(""), custom())
    assert caught.value.field == "inputs[1].event.custom.type"
    assert await last_seq(store, "run-1") == 1


async def test_batch_failing_its_expectation_stores_nothing(store: Store) -> None:
    with pytest.raises(Aborted):
        await append(store, "run-1", custom(), custom(), expectation=Expectation(run_exists=True))
    assert (await store.events.read(NS, "run-1", 0, 1)).run is None


async def test_batch_with_a_conflicting_event_id_stores_nothing(store: Store) -> None:
    await append(store, "run-1", custom(event_id="taken", n=1))
    with pytest.raises(AlreadyExists):
        await append(store, "run-1", custom(event_id="new"), custom(event_id="taken", n=2))
    assert await last_seq(store, "run-1") == 1
    (retry_of_new,) = await append(store, "run-1", custom(event_id="new"))
    assert retry_of_new.seq == 2


async def test_batch_after_the_terminal_event_stores_nothing(store: Store) -> None:
    await append(store, "run-1", failed())
    with pytest.raises(FailedPrecondition):
        await append(store, "run-1", custom(), custom())
    assert await last_seq(store, "run-1") == 1


# -- truncation and deletion ---------------------------------------------------


async def test_truncate_drops_events_up_to_seq(store: Store) -> None:
    await append(store, "run-1", *[custom()] * 5)
    truncation = await store.events.truncate(NS, "run-1", 3)
    assert (truncation.first_seq, truncation.dropped) == (4, 3)
    assert [e.seq for e in await stored(store, "run-1", after_seq=3)] == [4, 5]
    assert (await store.events.read(NS, "run-1", 0, 1)).run.first_seq == 4  # type: ignore[union-attr]


async def test_seqs_are_never_reused_after_truncation(store: Store) -> None:
    await append(store, "run-1", *[custom()] * 5)
    await store.events.truncate(NS, "run-1", 5)
    (envelope,) = await append(store, "run-1", custom())
    assert envelope.seq == 6


async def test_truncate_beyond_the_last_seq_drops_every_event(store: Store) -> None:
    await append(store, "run-1", *[custom()] * 3)
    truncation = await store.events.truncate(NS, "run-1", 100)
    assert (truncation.first_seq, truncation.dropped) == (4, 3)
    page = await store.events.read(NS, "run-1", 3, 10)
    assert page.envelopes == []
    assert page.run is not None
    assert page.run.last_seq == 3


async def test_truncating_again_drops_nothing(store: Store) -> None:
    await append(store, "run-1", *[custom()] * 3)
    await store.events.truncate(NS, "run-1", 2)
    truncation = await store.events.truncate(NS, "run-1", 1)
    assert (truncation.first_seq, truncation.dropped) == (3, 0)


async def test_truncate_unknown_run_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound) as caught:
        await store.events.truncate(NS, "no-such-run", 1)
    assert caught.value.reason == "RUN_NOT_FOUND"


async def test_delete_run_removes_it_and_a_new_run_starts_at_one(store: Store) -> None:
    await append(store, "run-1", started(), custom(event_id="e-1", n=1))
    assert await store.events.delete_run(NS, "run-1") is True
    assert (await store.events.read(NS, "run-1", 0, 10)).run is None
    (reborn,) = await append(store, "run-1", custom(event_id="e-1", n=2))
    assert (reborn.seq, reborn.session_id) == (1, "")


async def test_delete_unknown_run_reports_false(store: Store) -> None:
    assert await store.events.delete_run(NS, "no-such-run") is False


# -- runs ----------------------------------------------------------------------


async def test_run_info_reports_seqs_session_terminal_and_times(store: Store) -> None:
    await append(store, "run-1", started("session-5"), custom(), custom())
    await store.events.truncate(NS, "run-1", 1)
    await append(store, "run-1", cancelled())
    page = await store.events.list_runs(NS, 10, "")
    (info,) = page.runs
    assert (info.run_id, info.session_id, info.first_seq, info.last_seq, info.terminal) == (
        "run-1",
        "session-5",
        2,
        4,
        True,
    )
    assert info.create_time.ToMicroseconds() <= info.update_time.ToMicroseconds()


async def test_list_runs_pages_in_run_id_order(store: Store) -> None:
    for i in (3, 1, 4, 0, 2):
        await append(store, f"run-{i}", custom())
    first = await store.events.list_runs(NS, 3, "")
    second = await store.events.list_runs(NS, 3, first.next_page_token)
    assert [r.run_id for r in first.runs + second.runs] == [f"run-{i}" for i in range(5)]
    assert second.next_page_token == ""


async def run_ids(store: Store, where: RunFilter, page_size: int = 10) -> list[str]:
    """Every run passing `where`, paging through the listing `page_size` at a time."""
    found: list[str] = []
    token = ""
    while True:
        page = await store.events.list_runs(NS, page_size, token, where)
        found += [run.run_id for run in page.runs]
        token = page.next_page_token
        if not token:
            return found


async def test_a_prefix_lists_only_the_runs_whose_id_starts_with_it(store: Store) -> None:
    for run_id in ("run-1", "run-10", "run-2", "run.1", "run-", "ru", "other-1"):
        await append(store, run_id, custom())
    assert await run_ids(store, RunFilter(prefix="run-1")) == ["run-1", "run-10"]
    assert await run_ids(store, RunFilter(prefix="run-")) == ["run-", "run-1", "run-10", "run-2"]
    assert await run_ids(store, RunFilter(prefix="zzz")) == []


async def test_a_prefix_listing_pages_within_the_prefix(store: Store) -> None:
    for n in range(7):
        await append(store, f"a-{n}", custom())
        await append(store, f"b-{n}", custom())
    assert await run_ids(store, RunFilter(prefix="b-"), page_size=3) == [f"b-{n}" for n in range(7)]


async def test_a_session_lists_only_its_runs(store: Store) -> None:
    await append(store, "run-1", started("session-a"))
    await append(store, "run-2", started("session-b"))
    await append(store, "run-3", started("session-a"), completed())
    await append(store, "run-4", custom())
    assert await run_ids(store, RunFilter(session_id="session-a"), page_size=1) == [
        "run-1",
        "run-3",
    ]


async def test_the_terminal_state_lists_ended_or_open_runs(store: Store) -> None:
    await append(store, "run-1", started(), completed())
    await append(store, "run-2", started())
    await append(store, "run-3", custom(), failed())
    await append(store, "run-4", custom())
    assert await run_ids(store, RunFilter(terminal=True), page_size=1) == ["run-1", "run-3"]
    assert await run_ids(store, RunFilter(terminal=False), page_size=1) == ["run-2", "run-4"]


async def test_a_run_that_ends_moves_from_the_open_runs_to_the_ended_ones(store: Store) -> None:
    await append(store, "run-1", started())
    assert await run_ids(store, RunFilter(terminal=True)) == []
    await append(store, "run-1", cancelled())
    assert await run_ids(store, RunFilter(terminal=True)) == ["run-1"]
    assert await run_ids(store, RunFilter(terminal=False)) == []


async def test_filters_combine(store: Store) -> None:
    await append(store, "job-1", started("session-a"), completed())
    await append(store, "job-2", started("session-a"))
    await append(store, "task-1", started("session-a"), completed())
    await append(store, "job-3", started("session-b"), completed())
    where = RunFilter(prefix="job-", session_id="session-a", terminal=True)
    assert await run_ids(store, where) == ["job-1"]


async def test_a_page_token_is_bound_to_the_filters_it_was_issued_for(store: Store) -> None:
    for n in range(3):
        await append(store, f"run-{n}", custom())
    page = await store.events.list_runs(NS, 1, "", RunFilter(prefix="run-"))
    with pytest.raises(InvalidArgument) as raised:
        await store.events.list_runs(NS, 1, page.next_page_token, RunFilter(prefix="run-1"))
    assert raised.value.field == "page_token"


async def test_an_unfiltered_listing_accepts_the_tokens_it_always_issued(store: Store) -> None:
    for n in range(3):
        await append(store, f"run-{n}", custom())
    token = encode_page_token("run-0", {"list": "runs"})
    page = await store.events.list_runs(NS, 10, token)
    assert [run.run_id for run in page.runs] == ["run-1", "run-2"]


async def test_namespaces_are_isolated(store: Store) -> None:
    await store.events.append("tenant-a", "run-1", [custom()], None)
    (data,) = await store.events.append("tenant-b", "run-1", [custom()], None)
    assert events_pb2.EventEnvelope.FromString(data).seq == 1
    assert [r.run_id for r in (await store.events.list_runs("tenant-c", 10, "")).runs] == []


# -- wake-ups --------------------------------------------------------------------


async def test_committed_append_wakes_the_runs_watchers(store: Store) -> None:
    woken = store.notifier.watch(event_key(NS, "run-1"))
    other = store.notifier.watch(event_key(NS, "run-2"))
    await append(store, "run-1", custom())
    assert woken.is_set()
    assert not other.is_set()


async def test_failed_append_wakes_no_one(store: Store) -> None:
    await append(store, "run-1", completed())
    watchers = [store.notifier.watch(event_key(NS, run_id)) for run_id in ("run-1", "run-2")]
    with pytest.raises(FailedPrecondition):
        await append(store, "run-1", custom())
    with pytest.raises(Aborted):
        await append(store, "run-2", custom(), expectation=Expectation(run_exists=True))
    assert not any(woken.is_set() for woken in watchers)


# -- the newest commit, kept for followers ------------------------------------------


async def test_recent_page_is_what_a_read_returns(store: Store) -> None:
    await append(store, "run-1", started(), custom())
    await append(store, "run-1", custom("a"), custom("b"))
    recent = store.events.recent(NS, "run-1", 2, 100)
    if recent is not None:
        assert recent == await store.events.read(NS, "run-1", 2, 100)


async def test_embedded_store_keeps_the_newest_commit(store_url: str, store: Store) -> None:
    await append(store, "run-1", started(), custom())
    recent = store.events.recent(NS, "run-1", 0, 100)
    if store_url.startswith("postgresql"):
        assert recent is None  # other replicas commit too: followers always read
    else:
        assert recent == await store.events.read(NS, "run-1", 0, 100)


async def test_recent_page_covers_consecutive_commits(store_url: str, store: Store) -> None:
    await append(store, "run-1", started(), custom())
    await append(store, "run-1", custom())
    recent = store.events.recent(NS, "run-1", 1, 100)
    if store_url.startswith("postgresql"):
        assert recent is None
    else:
        assert recent == await store.events.read(NS, "run-1", 1, 100)


async def test_recent_page_is_dropped_by_truncation(store: Store) -> None:
    await append(store, "run-1", started(), custom())
    await store.events.truncate(NS, "run-1", 1)
    assert store.events.recent(NS, "run-1", 0, 100) is None


async def test_recent_page_is_dropped_with_its_run(store: Store) -> None:
    await append(store, "run-1", started())
    await store.events.delete_run(NS, "run-1")
    assert store.events.recent(NS, "run-1", 0, 100) is None


async def test_recent_page_of_a_caught_up_follower_is_empty(store_url: str, store: Store) -> None:
    await append(store, "run-1", started(), custom())
    recent = store.events.recent(NS, "run-1", 2, 100)
    if not store_url.startswith("postgresql"):
        assert recent == await store.events.read(NS, "run-1", 2, 100)
        assert recent is not None
        assert recent.envelopes == []


async def test_retries_leave_the_recent_page_alone(store: Store) -> None:
    await append(store, "run-1", started(event_id="e-1"))
    before = store.events.recent(NS, "run-1", 0, 100)
    await append(store, "run-1", started(event_id="e-1"))
    assert store.events.recent(NS, "run-1", 0, 100) == before
