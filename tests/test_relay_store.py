"""The relay store on every backend: definitions, leases, cursors fenced by the lease,
and the backlog and lag a relay works from."""

from __future__ import annotations

import pytest

from statekeeper.v1 import events_pb2
from statekeeper_server.errors import AlreadyExists
from statekeeper_server.stores import Store
from statekeeper_server.stores.relays import Lag, RelaySpec
from statekeeper_server.timestamps import now_us

NS = "default"
SPEC = RelaySpec("billing", "events", "run-", ("custom",))
LEASE_US = 5_000_000


def started() -> events_pb2.EventInput:
    return events_pb2.EventInput(
        event=events_pb2.AgentEvent(run_started=events_pb2.RunStarted(session_id="s"))
    )


def step(n: int) -> events_pb2.EventInput:
    return events_pb2.EventInput(
        event=events_pb2.AgentEvent(custom=events_pb2.CustomEvent(type=f"step-{n}"))
    )


async def append(store: Store, run_id: str, count: int) -> None:
    await store.events.append(NS, run_id, [started(), *(step(n) for n in range(count - 1))], None)


async def test_creating_a_relay_twice_with_one_definition_returns_the_first(store: Store) -> None:
    first, created = await store.relays.create(NS, SPEC)
    again, created_again = await store.relays.create(NS, SPEC)
    assert (created, created_again) == (True, False)
    assert again == first
    assert first.spec == SPEC


async def test_a_relay_name_taken_by_another_definition_is_a_conflict(store: Store) -> None:
    await store.relays.create(NS, SPEC)
    with pytest.raises(AlreadyExists):
        await store.relays.create(NS, RelaySpec("billing", "other", "", ()))


async def test_one_owner_at_a_time_holds_a_relay_until_it_releases_it(store: Store) -> None:
    await store.relays.create(NS, SPEC)
    assert await store.relays.claim(NS, "billing", "replica-a", LEASE_US)
    assert not await store.relays.claim(NS, "billing", "replica-b", LEASE_US)
    assert await store.relays.claim(NS, "billing", "replica-a", LEASE_US)
    relay = await store.relays.get(NS, "billing")
    assert relay is not None
    assert relay.owner == "replica-a"
    await store.relays.release(NS, "billing", "replica-a")
    assert await store.relays.claim(NS, "billing", "replica-b", LEASE_US)


async def test_an_expired_lease_can_be_taken_by_another_owner(store: Store) -> None:
    await store.relays.create(NS, SPEC)
    assert await store.relays.claim(NS, "billing", "replica-a", 1)
    assert await store.relays.claim(NS, "billing", "replica-b", LEASE_US)


async def test_the_backlog_lists_runs_of_the_prefix_with_events_after_the_cursor(
    store: Store,
) -> None:
    await store.relays.create(NS, SPEC)
    await append(store, "run-1", 3)
    await append(store, "other-1", 2)
    [pending] = await store.relays.backlog(NS, "billing", "run-", 10)
    assert (pending.run_id, pending.after_seq, pending.last_seq) == ("run-1", 0, 3)


async def test_only_the_lease_holder_moves_the_cursor_and_only_forward(store: Store) -> None:
    await store.relays.create(NS, SPEC)
    await append(store, "run-1", 3)
    [pending] = await store.relays.backlog(NS, "billing", "", 10)
    assert not await store.relays.advance(NS, "billing", "replica-a", pending, 2)
    await store.relays.claim(NS, "billing", "replica-a", LEASE_US)
    assert await store.relays.advance(NS, "billing", "replica-a", pending, 2)
    assert await store.relays.advance(NS, "billing", "replica-a", pending, 1)
    [after] = await store.relays.backlog(NS, "billing", "", 10)
    assert after.after_seq == 2
    assert await store.relays.advance(NS, "billing", "replica-a", pending, 3)
    assert await store.relays.backlog(NS, "billing", "", 10) == []


async def test_a_run_started_again_under_its_id_is_forwarded_from_its_first_event(
    store: Store,
) -> None:
    await store.relays.create(NS, SPEC)
    await store.relays.claim(NS, "billing", "replica-a", LEASE_US)
    await append(store, "run-1", 3)
    [pending] = await store.relays.backlog(NS, "billing", "", 10)
    await store.relays.advance(NS, "billing", "replica-a", pending, 3)
    await store.events.delete_run(NS, "run-1")
    await append(store, "run-1", 2)
    [again] = await store.relays.backlog(NS, "billing", "", 10)
    assert (again.after_seq, again.last_seq) == (0, 2)


async def test_a_truncated_run_is_forwarded_from_its_first_kept_event(store: Store) -> None:
    await store.relays.create(NS, SPEC)
    await append(store, "run-1", 5)
    await store.events.truncate(NS, "run-1", 3)
    [pending] = await store.relays.backlog(NS, "billing", "", 10)
    assert pending.after_seq == 3


async def test_the_lag_counts_events_not_forwarded_and_dates_the_oldest(store: Store) -> None:
    await store.relays.create(NS, SPEC)
    await store.relays.claim(NS, "billing", "replica-a", LEASE_US)
    before = now_us()
    await append(store, "run-1", 4)
    await append(store, "run-2", 2)
    lag = await store.relays.lag(NS, "billing", "")
    assert lag.events == 6
    assert lag.oldest_us is not None
    assert before <= lag.oldest_us <= now_us()
    [run_1] = await store.relays.backlog(NS, "billing", "run-1", 10)
    await store.relays.advance(NS, "billing", "replica-a", run_1, 4)
    assert (await store.relays.lag(NS, "billing", "")).events == 2
    [run_2] = await store.relays.backlog(NS, "billing", "", 10)
    await store.relays.advance(NS, "billing", "replica-a", run_2, 2)
    assert await store.relays.lag(NS, "billing", "") == Lag(0, None)


async def test_deleting_a_relay_deletes_its_cursors(store: Store) -> None:
    await store.relays.create(NS, SPEC)
    await store.relays.claim(NS, "billing", "replica-a", LEASE_US)
    await append(store, "run-1", 2)
    [pending] = await store.relays.backlog(NS, "billing", "", 10)
    await store.relays.advance(NS, "billing", "replica-a", pending, 2)
    assert await store.relays.delete(NS, "billing")
    assert not await store.relays.delete(NS, "billing")
    await store.relays.create(NS, SPEC)
    [again] = await store.relays.backlog(NS, "billing", "", 10)
    assert again.after_seq == 0
