"""RelayService: declaring relays, reading their lag, and running them in the background."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any

import grpc
from google.protobuf import duration_pb2

from statekeeper.v1 import relays_pb2, relays_pb2_grpc
from statekeeper_server.config import Settings
from statekeeper_server.errors import InvalidArgument
from statekeeper_server.notifier import Notifier
from statekeeper_server.observability import relay_metrics
from statekeeper_server.publish.relays import RelayRunner
from statekeeper_server.publish.sinks import Sinks
from statekeeper_server.services.context import request_namespace
from statekeeper_server.stores.events import EventStore
from statekeeper_server.stores.paging import decode_page_token, encode_page_token
from statekeeper_server.stores.relays import (
    RELAY_KINDS,
    RelaySpec,
    RelayStore,
    StoredRelay,
    relay_not_found,
)
from statekeeper_server.timestamps import now_us, to_timestamp
from statekeeper_server.validation import optional_id, page_size, require_id

Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
LIST_FILTERS: dict[str, object] = {"list": "relays"}
"""The filters a page token of a relay listing is bound to."""


def relay_spec(
    name: str,
    sink: str,
    run_id_prefix: str,
    event_kinds: Iterable[str],
    sinks: Sinks,
    field: str,
) -> RelaySpec:
    """A relay's definition checked; InvalidArgument naming `<field><part>` (such as
    `relay.sink`) if a part is wrong or the sink is not one of `sinks`."""
    require_id(name, f"{field}name")
    if not sink:
        raise InvalidArgument(f"{field}sink", "is required (the name of a server sink)")
    if sink not in sinks:
        configured = ", ".join(sinks.names()) or "none (see --sink)"
        raise InvalidArgument(f"{field}sink", f"names no sink of the server; sinks: {configured}")
    optional_id(run_id_prefix, f"{field}run_id_prefix")
    kinds: set[str] = set()
    for index, kind in enumerate(event_kinds):
        if kind not in RELAY_KINDS:
            raise InvalidArgument(
                f"{field}event_kinds[{index}]", "must be one of " + ", ".join(RELAY_KINDS)
            )
        kinds.add(kind)
    return RelaySpec(name, sink, run_id_prefix, tuple(sorted(kinds)))


class RelayServicer(relays_pb2_grpc.RelayServiceServicer):
    """Serves RelayService from a RelayStore, and runs this replica's share of the relays."""

    service_name = relays_pb2.DESCRIPTOR.services_by_name["RelayService"].full_name

    def __init__(
        self,
        relays: RelayStore,
        events: EventStore,
        sinks: Sinks,
        notifier: Notifier,
        settings: Settings,
        stopping: asyncio.Event,
    ) -> None:
        self._relays = relays
        self._sinks = sinks
        self.runner = RelayRunner(
            relays,
            events,
            sinks,
            notifier,
            stopping,
            settings.relay_poll_interval,
            settings.relay_lease_duration,
        )

    def add_to(self, server: grpc.aio.Server) -> None:
        """Register this servicer on `server`."""
        relays_pb2_grpc.add_RelayServiceServicer_to_server(self, server)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """The relay runner (its relays' lag counted in the metrics while it runs)."""
        return [self._run()]

    async def _run(self) -> None:
        relay_metrics.RUNNERS.track(self.runner)
        try:
            await self.runner.run()
        finally:
            relay_metrics.RUNNERS.forget(self.runner)

    async def CreateRelay(
        self, request: relays_pb2.CreateRelayRequest, context: Context
    ) -> relays_pb2.CreateRelayResponse:
        """Validate the relay and store it (or return the same one stored before)."""
        namespace = request_namespace(context)
        if not request.HasField("relay"):
            raise InvalidArgument("relay", "is required")
        relay = request.relay
        spec = relay_spec(
            relay.name, relay.sink, relay.run_id_prefix, relay.event_kinds, self._sinks, "relay."
        )
        stored, created = await self._relays.create(namespace, spec)
        self.runner.wake()
        return relays_pb2.CreateRelayResponse(
            relay=await self._with_status(stored), created=created
        )

    async def GetRelay(
        self, request: relays_pb2.GetRelayRequest, context: Context
    ) -> relays_pb2.GetRelayResponse:
        """The relay with its lag."""
        namespace = request_namespace(context)
        name = require_id(request.name, "name")
        stored = await self._relays.get(namespace, name)
        if stored is None:
            raise relay_not_found(name)
        return relays_pb2.GetRelayResponse(relay=await self._with_status(stored))

    async def ListRelays(
        self, request: relays_pb2.ListRelaysRequest, context: Context
    ) -> relays_pb2.ListRelaysResponse:
        """A page of the namespace's relays, with their lag."""
        namespace = request_namespace(context)
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        after = decode_page_token(request.page_token, LIST_FILTERS, str) or ""
        stored = await self._relays.list(namespace, after, size + 1)
        page = stored[:size]
        response = relays_pb2.ListRelaysResponse(
            relays=[await self._with_status(relay) for relay in page]
        )
        if len(stored) > size:
            response.next_page_token = encode_page_token(page[-1].spec.name, LIST_FILTERS)
        return response

    async def DeleteRelay(
        self, request: relays_pb2.DeleteRelayRequest, context: Context
    ) -> relays_pb2.DeleteRelayResponse:
        """Delete the relay and its position."""
        namespace = request_namespace(context)
        name = require_id(request.name, "name")
        deleted = await self._relays.delete(namespace, name)
        self.runner.wake()
        return relays_pb2.DeleteRelayResponse(deleted=deleted)

    async def _with_status(self, stored: StoredRelay) -> relays_pb2.Relay:
        """The relay as the API shows it, its lag measured now."""
        spec = stored.spec
        lag = await self._relays.lag(stored.namespace, spec.name, spec.run_id_prefix)
        age_us = 0 if lag.oldest_us is None else max(0, now_us() - lag.oldest_us)
        return relays_pb2.Relay(
            name=spec.name,
            sink=spec.sink,
            run_id_prefix=spec.run_id_prefix,
            event_kinds=spec.event_kinds,
            create_time=to_timestamp(stored.create_us),
            status=relays_pb2.RelayStatus(
                lag_events=lag.events,
                lag=duration_pb2.Duration(
                    seconds=age_us // 1_000_000, nanos=age_us % 1_000_000 * 1000
                ),
                owner=stored.owner,
                last_error=stored.last_error,
            ),
        )
