"""Wake-ups across replicas through LISTEN/NOTIFY, and the payload that carries the key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from statekeeper_server.errors import Aborted
from statekeeper_server.notifier import Notifier
from statekeeper_server.stores.postgres.engine import PostgresEngine
from statekeeper_server.stores.postgres.notify import decode_payload, encode_payload
from tests.postgres_harness import open_engine, terminate_backend

KEY = ("events", "default", "run-1")
OTHER_KEY = ("events", "default", "run-2")
WAKE_TIMEOUT = 10.0
"""Generous bound on waiting for a wake-up that must come (never a speed assertion)."""


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[PostgresEngine, PostgresEngine]]:
    async with open_engine(postgres_url) as first, open_engine(postgres_url) as second:
        yield first, second


async def commit_notifying(engine: PostgresEngine, *keys: tuple[str, ...]) -> None:
    async with engine.transaction() as tx:
        for key in keys:
            await tx.notify(key)


async def notify_then_fail(engine: PostgresEngine, key: tuple[str, ...]) -> None:
    async with engine.transaction() as tx:
        await tx.notify(key)
        raise Aborted("TEST", "the transaction changed its mind")


async def woken(event: asyncio.Event) -> bool:
    await asyncio.wait_for(event.wait(), WAKE_TIMEOUT)
    return event.is_set()


def test_payload_round_trips_a_key_whatever_its_parts_hold() -> None:
    key = ("jobs", 'na,me"space', "ünïcode run", 42, "")
    assert decode_payload(encode_payload("origin-1", key)) == ("origin-1", key)


def test_payload_is_compact_json() -> None:
    assert encode_payload("5f1c09ab", KEY) == '["5f1c09ab","events","default","run-1"]'


def test_a_key_too_long_for_notify_becomes_a_wake_everyone_payload() -> None:
    assert decode_payload(encode_payload("origin-1", ("events", "x" * 9000))) == ("origin-1", None)


def test_a_foreign_payload_wakes_everyone() -> None:
    assert decode_payload("not json")[1] is None
    assert decode_payload('{"a": 1}')[1] is None


def test_keys_that_cannot_cross_replicas_are_refused() -> None:
    with pytest.raises(TypeError):
        encode_payload("origin-1", "events/run-1")
    with pytest.raises(TypeError):
        encode_payload("origin-1", ("events", 1.5))


async def test_a_commit_on_one_replica_wakes_watchers_on_the_other(
    replicas: tuple[PostgresEngine, PostgresEngine],
) -> None:
    first, second = replicas
    event = second.notifier.watch(KEY)
    await commit_notifying(first, KEY)
    assert await woken(event)


async def test_a_commit_wakes_its_own_replicas_watchers_when_it_returns(
    replicas: tuple[PostgresEngine, PostgresEngine],
) -> None:
    first, _ = replicas
    event = first.notifier.watch(KEY)
    async with first.transaction() as tx:
        await tx.notify(KEY)
        assert not event.is_set()
    assert event.is_set()


async def test_a_rolled_back_transaction_wakes_no_one(
    replicas: tuple[PostgresEngine, PostgresEngine],
) -> None:
    first, second = replicas
    rolled_back = second.notifier.watch(KEY)
    local = first.notifier.watch(KEY)
    with pytest.raises(Aborted):
        await notify_then_fail(first, KEY)
    # Notifications arrive in commit order: once the later one is in, the
    # rolled-back one would have been too.
    later = second.notifier.watch(OTHER_KEY)
    await commit_notifying(first, OTHER_KEY)
    assert await woken(later)
    assert not rolled_back.is_set()
    assert not local.is_set()


async def test_only_the_notified_key_is_woken(
    replicas: tuple[PostgresEngine, PostgresEngine],
) -> None:
    first, second = replicas
    other = second.notifier.watch(OTHER_KEY)
    event = second.notifier.watch(KEY)
    await commit_notifying(first, KEY)
    assert await woken(event)
    assert not other.is_set()


async def test_a_replica_whose_listener_reconnects_wakes_every_watcher_and_listens_again(
    postgres_url: str,
) -> None:
    notifier = Notifier()
    async with (
        open_engine(postgres_url) as first,
        open_engine(postgres_url, None, notifier) as second,
    ):
        pid = second.listener.server_pid
        assert pid is not None
        unrelated = notifier.watch(("jobs", "default", "queue-1"))
        await terminate_backend(pid)
        # The reconnect may have missed commits: every watcher re-reads.
        assert await woken(unrelated)
        assert second.listener.server_pid not in (None, pid)
        event = notifier.watch(KEY)
        await commit_notifying(first, KEY)
        assert await woken(event)
