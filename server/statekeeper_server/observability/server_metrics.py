"""Metrics of the server itself: its build, whether it is ready, its open streams.

- statekeeper_build_info{version,python} = 1
- statekeeper_ready: 1 when `/readyz` would answer 200, else 0
- statekeeper_active_streams{grpc_method}: ReplayEvents and WatchJobs
  streams admitted and not yet ended, from the admission's own count
- statekeeper_connections: client connections open now (read from the
  kernel's TCP tables, see `connections`; no sample where they cannot be read)
- statekeeper_large_requests_waiting: large requests waiting for their turn
  (`request_turns`)

The last four are read at scrape time by one process-wide collector from the
servers `track`ed with it (tests run several in one process); with none
tracked they have no sample. Reading them costs a call nothing.
"""

from __future__ import annotations

import importlib.metadata
import platform
import weakref
from collections.abc import Iterable
from typing import Protocol

from prometheus_client import REGISTRY, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from statekeeper_server.admission import Admission
from statekeeper_server.observability.connections import established_connections
from statekeeper_server.observability.grpc_metrics import split_method
from statekeeper_server.request_turns import RequestTurns


class ObservedServer(Protocol):
    """What the collector reads of a server."""

    admission: Admission
    request_turns: RequestTurns
    port: int
    """The port the gRPC server is bound to (0 before it is)."""

    def readiness(self) -> str | None:
        """None when ready to take calls, else why not."""


def _version() -> str:
    try:
        return importlib.metadata.version("statekeeper")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


BUILD_INFO = Gauge(
    "statekeeper_build_info",
    "Always 1; the labels say which statekeeper and Python the server runs.",
    ("version", "python"),
)
BUILD_INFO.labels(_version(), platform.python_version()).set(1)


class ServerCollector(Collector):
    """Reads readiness and open streams of every tracked server at scrape time."""

    def __init__(self) -> None:
        self._servers: weakref.WeakSet[ObservedServer] = weakref.WeakSet()

    def track(self, server: ObservedServer) -> None:
        """Report `server` from now on."""
        self._servers.add(server)

    def forget(self, server: ObservedServer) -> None:
        """Stop reporting `server`."""
        self._servers.discard(server)

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples (so registering reads no server)."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        """The families with the tracked servers' current values."""
        ready, streams, connections, waiting = self._families()
        servers = list(self._servers)
        if servers:
            ready.add_metric([], float(all(s.readiness() is None for s in servers)))
        by_method: dict[str, int] = {}
        for server in servers:
            for method, count in server.admission.streams_by_method().items():
                name = split_method(method)[1]
                by_method[name] = by_method.get(name, 0) + count
        for name, count in sorted(by_method.items()):
            streams.add_metric([name], float(count))
        counts = [established_connections(server.port) for server in servers]
        known = [count for count in counts if count is not None]
        if known:
            connections.add_metric([], float(sum(known)))
        if servers:
            waiting.add_metric([], float(sum(s.request_turns.waiting for s in servers)))
        return [ready, streams, connections, waiting]

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily
    ]:
        return (
            GaugeMetricFamily(
                "statekeeper_ready",
                "1 when the server takes calls (/readyz answers 200): serving, not draining"
                " for shutdown, and its store answers; else 0.",
            ),
            GaugeMetricFamily(
                "statekeeper_active_streams",
                "ReplayEvents and WatchJobs streams open now, by method.",
                labels=["grpc_method"],
            ),
            GaugeMetricFamily(
                "statekeeper_connections",
                "Client connections open now (established TCP connections to the gRPC port).",
            ),
            GaugeMetricFamily(
                "statekeeper_large_requests_waiting",
                "Requests over 16 KiB holding JSON values waiting for their turn: more than"
                " --large-request-bytes of such bodies arrived at once.",
            ),
        )


SERVERS = ServerCollector()
"""The one collector of this module, registered with the default registry at import."""
REGISTRY.register(SERVERS)
