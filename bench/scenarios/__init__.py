"""The scenarios, in the order they run; each returns rows for the table.

A scenario is measured on every store given to `run.py` when `every_store`
is set (the append, batch and replay hot paths), else on the first store
only. Peers (Redis, NATS) are measured once, beside the first store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.harness import Bench
from bench.report import Row


@dataclass(frozen=True)
class Scenario:
    """A named scenario: `run(bench, store, with_peers)` returns its rows."""

    name: str
    title: str
    run: Callable[[Bench, str, bool], list[Row]]
    every_store: bool = False


def all_scenarios() -> list[Scenario]:
    """Every scenario, in running order."""
    from bench.scenarios import (
        auth,
        console,
        events,
        follow,
        jobs,
        maxsize,
        memory,
        observe,
        relay,
        scale,
        stalled,
    )

    return [
        Scenario("append", "unary AppendEvent, 64 callers", events.append, every_store=True),
        Scenario("auth", "AppendEvent with a static token and a JWT vs no auth", auth.auth),
        Scenario(
            "observe",
            "AppendEvent and ReplayEvents with metrics and tracing on vs off",
            observe.observe,
        ),
        Scenario("batch", "AppendEvents of 100 events", events.batch, every_store=True),
        Scenario("replay", "ReplayEvents catch-up", events.replay, every_store=True),
        Scenario("follow", "live follow latency", follow.follow),
        Scenario("jobs", "enqueue -> lease -> complete", jobs.jobs),
        Scenario("scale", "latency at 10,000 vs 1,000,000", scale.scale),
        Scenario("memory", "server RSS with lagging and idle followers", memory.memory),
        Scenario("stalled", "followers that never read, and another caller", stalled.stalled),
        Scenario("maxsize", "max-size requests, and another caller", maxsize.maxsize),
        Scenario("relay", "relays to NATS JetStream and Redis Streams", relay.relay),
        Scenario("console", "console pages at 1,000,000 events and jobs", console.console),
    ]
