"""The relay metrics: how far behind each relay this replica runs is, read at scrape.

`statekeeper_relay_lag_events` (events committed, not yet acknowledged by
the sink), `statekeeper_relay_lag_seconds` (age of the oldest of them) and
`statekeeper_relay_events_forwarded_total`, labelled with the relay's
`namespace` and `relay`. Only the replica holding a relay's lease reports
it, so summing over replicas counts each relay once. The lag is measured by
the runner at most every `publish.relays.LAG_EVERY` seconds; a scrape does
no I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from statekeeper_server.publish.relays import RelayRunner

LABELS = ["namespace", "relay"]


class RelayRunners(Collector):
    """The runners of every server of the process, and their metrics at scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runners: list[RelayRunner] = []

    def track(self, runner: RelayRunner) -> None:
        """Report `runner`'s relays until `forget`."""
        with self._lock:
            self._runners.append(runner)

    def forget(self, runner: RelayRunner) -> None:
        """Stop reporting `runner`'s relays."""
        with self._lock:
            if runner in self._runners:
                self._runners.remove(runner)

    def collect(self) -> Iterator[Metric]:
        """The three relay families (see the module)."""
        lag_events = GaugeMetricFamily(
            "statekeeper_relay_lag_events",
            "Committed events a relay run by this replica has not had acknowledged by its"
            " sink yet.",
            labels=LABELS,
        )
        lag_seconds = GaugeMetricFamily(
            "statekeeper_relay_lag_seconds",
            "Seconds since the oldest event a relay run by this replica has not forwarded"
            " was committed (0 when it is caught up).",
            labels=LABELS,
        )
        forwarded = CounterMetricFamily(
            "statekeeper_relay_events_forwarded",
            "Events a relay published and its sink acknowledged, since this replica took"
            " the relay.",
            labels=LABELS,
        )
        with self._lock:
            runners = list(self._runners)
        for runner in runners:
            for state in runner.running():
                labels = [state.namespace, state.name]
                lag_events.add_metric(labels, state.lag.events)
                lag_seconds.add_metric(labels, state.lag_seconds)
                forwarded.add_metric(labels, state.forwarded)
        yield lag_events
        yield lag_seconds
        yield forwarded


RUNNERS = RelayRunners()
REGISTRY.register(RUNNERS)
