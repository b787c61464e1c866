"""How long work that becomes ready waits for the event loop.

- statekeeper_event_loop_lag_seconds (histogram): how late a timer fired,
  sampled every LAG_SAMPLE_SECONDS

Every call's steps run on one event loop; while one step runs (or another
thread holds the interpreter's lock), everything else that became ready
waits. A timer due at an arbitrary moment and fired late by the lag is
what any such piece of work meets, so the histogram says how long callers
wait behind other callers' work: its upper buckets show a step that held
the loop too long.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Histogram

LAG_SAMPLE_SECONDS = 0.02
"""How often the lag is sampled (each sample costs the loop a few microseconds)."""

LOOP_LAG = Histogram(
    "statekeeper_event_loop_lag_seconds",
    "How late the event loop ran a timer, sampled every 20 ms: how long work that became"
    " ready waited behind other work.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


async def watch_loop_lag(interval: float = LAG_SAMPLE_SECONDS) -> None:
    """Sample the event loop's lag into LOOP_LAG every `interval` seconds, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        LOOP_LAG.observe(max(0.0, loop.time() - due))
