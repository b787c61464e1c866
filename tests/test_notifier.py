"""Wake-ups per key: taken before a read, set by a commit; a waiter's own timer wakes it alone."""

from __future__ import annotations

import asyncio

import pytest

from statekeeper_server.notifier import Notifier


async def test_notify_wakes_the_keys_watchers_and_starts_a_new_event() -> None:
    notifier = Notifier()
    watched = notifier.watch("run-1")
    other = notifier.watch("run-2")
    notifier.notify("run-1")
    assert watched.is_set()
    assert not other.is_set()
    assert not notifier.watch("run-1").is_set()


async def test_set_wakes_the_waiters_of_wait_and_of_wait_or() -> None:
    watched = Notifier().watch("run-1")
    loop = asyncio.get_running_loop()
    waiters = [
        asyncio.ensure_future(watched.wait()),
        asyncio.ensure_future(watched.wait_or(loop.create_future())),
        asyncio.ensure_future(watched.wait_or(loop.create_future())),
    ]
    await asyncio.sleep(0)
    watched.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)


async def test_a_waiter_whose_own_future_is_resolved_wakes_alone() -> None:
    watched = Notifier().watch("run-1")
    loop = asyncio.get_running_loop()
    own, other = loop.create_future(), loop.create_future()
    woken = asyncio.ensure_future(watched.wait_or(own))
    still = [asyncio.ensure_future(watched.wait_or(other)), asyncio.ensure_future(watched.wait())]
    await asyncio.sleep(0)
    own.set_result(None)
    await asyncio.wait_for(woken, 1)
    await asyncio.sleep(0)
    assert not any(waiter.done() for waiter in still)
    assert not watched.is_set()
    watched.set()
    await asyncio.wait_for(asyncio.gather(*still), 1)


async def test_wait_or_returns_at_once_once_the_event_is_set() -> None:
    notifier = Notifier()
    watched = notifier.watch("run-1")
    notifier.notify("run-1")
    never = asyncio.get_running_loop().create_future()
    await asyncio.wait_for(watched.wait_or(never), 1)
    assert not never.done()


async def test_a_cancelled_wait_or_leaves_the_other_waiters_waiting() -> None:
    watched = Notifier().watch("run-1")
    loop = asyncio.get_running_loop()
    cancelled = asyncio.ensure_future(watched.wait_or(loop.create_future()))
    other = asyncio.ensure_future(watched.wait_or(loop.create_future()))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert not other.done()
    watched.set()
    await asyncio.wait_for(other, 1)


def test_a_listener_hears_every_notified_key_until_it_stops_listening() -> None:
    notifier = Notifier()
    heard: list[object] = []
    notifier.listen(heard.append)
    notifier.notify(("events", "acme", "run-1"))
    notifier.notify("queue")
    notifier.unlisten(heard.append)
    notifier.notify("after")
    assert heard == [("events", "acme", "run-1"), "queue"]
