"""Wake-ups per key: taken before a read, set by a commit or a timer."""

from __future__ import annotations

import asyncio

from statekeeper_server.notifier import Notifier


async def test_notify_wakes_the_keys_watchers_and_starts_a_new_event() -> None:
    notifier = Notifier()
    watched = notifier.watch("run-1")
    other = notifier.watch("run-2")
    notifier.notify("run-1")
    assert watched.is_set()
    assert not other.is_set()
    assert not notifier.watch("run-1").is_set()


async def test_wake_at_wakes_the_watchers_of_its_time() -> None:
    notifier = Notifier()
    loop = asyncio.get_running_loop()
    notifier.wake_at(loop.time() + 0.02, "run-1")
    watched = notifier.watch("run-1")
    await asyncio.wait_for(watched.wait(), 1)
    assert not notifier.watch("run-1").is_set()


async def test_a_cancelled_wake_at_wakes_no_one() -> None:
    notifier = Notifier()
    loop = asyncio.get_running_loop()
    watched = notifier.watch("run-1")
    notifier.wake_at(loop.time() + 0.01, "run-1").cancel()
    await asyncio.sleep(0.05)
    assert not watched.is_set()


def test_a_listener_hears_every_notified_key_until_it_stops_listening() -> None:
    notifier = Notifier()
    heard: list[object] = []
    notifier.listen(heard.append)
    notifier.notify(("events", "acme", "run-1"))
    notifier.notify("queue")
    notifier.unlisten(heard.append)
    notifier.notify("after")
    assert heard == [("events", "acme", "run-1"), "queue"]
