"""The event loop's lag: a step that holds the loop shows in
statekeeper_event_loop_lag_seconds, which a running server serves on /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import REGISTRY

from statekeeper_server.observability.loop_lag import watch_loop_lag
from tests.harness import running_app
from tests.metrics_scrape import scrape
from tests.waiting import until_async

LAG = "statekeeper_event_loop_lag_seconds"


def samples_over(seconds: float) -> float:
    """How many lag samples so far were longer than `seconds` (a bucket bound)."""
    count = REGISTRY.get_sample_value(f"{LAG}_count") or 0.0
    within = REGISTRY.get_sample_value(f"{LAG}_bucket", {"le": str(seconds)}) or 0.0
    return count - within


async def test_a_step_that_holds_the_loop_is_sampled_as_lag() -> None:
    before = samples_over(0.05)
    watcher = asyncio.create_task(watch_loop_lag(interval=0.005))
    await asyncio.sleep(0.02)
    time.sleep(0.12)  # noqa: ASYNC251 - holds the event loop, as a long step of a call would
    await asyncio.sleep(0.02)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    assert samples_over(0.05) - before >= 1


async def test_a_server_with_its_side_port_serves_the_lag() -> None:
    before = REGISTRY.get_sample_value(f"{LAG}_count") or 0.0
    async with running_app("memory:") as app:

        async def sampled() -> bool:
            return (await scrape(app.http_port)).value(f"{LAG}_count") > before

        await until_async(sampled, "a lag sample on /metrics")
