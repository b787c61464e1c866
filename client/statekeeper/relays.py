"""`client.relays`: relays forwarding a namespace's events to one of the server's sinks."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Iterable

import grpc

from statekeeper._calls import CallOptions
from statekeeper.v1 import relays_pb2, relays_pb2_grpc

SERVICE = "statekeeper.v1.RelayService"
IDEMPOTENT = [
    (SERVICE, "CreateRelay"),
    (SERVICE, "GetRelay"),
    (SERVICE, "ListRelays"),
    (SERVICE, "DeleteRelay"),
]
"""Calls the channel may retry on UNAVAILABLE: creating a relay again with the same
definition returns it, deleting it again answers `deleted = false`."""


class RelaysClient:
    """Create, inspect (with their lag), list and delete relays."""

    def __init__(self, channel: grpc.aio.Channel, options: CallOptions) -> None:
        self._stub = relays_pb2_grpc.RelayServiceStub(channel)
        self._options = options

    async def create(
        self,
        name: str,
        sink: str,
        *,
        run_id_prefix: str = "",
        event_kinds: Iterable[str] = (),
    ) -> relays_pb2.Relay:
        """Forward every committed event of the namespace (of runs whose id starts with
        `run_id_prefix`, of `event_kinds` such as "custom", when given) to the
        server's sink `sink`; the relay. The same definition again returns the
        relay; another one under `name` raises ALREADY_EXISTS."""
        response = await self._stub.CreateRelay(
            relays_pb2.CreateRelayRequest(
                relay=relays_pb2.Relay(
                    name=name, sink=sink, run_id_prefix=run_id_prefix, event_kinds=event_kinds
                )
            ),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return response.relay

    async def get(self, name: str) -> relays_pb2.Relay:
        """The relay with its lag (`status`); raises NOT_FOUND if there is none."""
        response = await self._stub.GetRelay(
            relays_pb2.GetRelayRequest(name=name),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return response.relay

    async def list(self, *, page_size: int = 0) -> AsyncIterator[relays_pb2.Relay]:
        """Every relay of the namespace, by name, with its lag, page by page."""
        token = ""
        while True:
            response = await self._stub.ListRelays(
                relays_pb2.ListRelaysRequest(page_size=page_size, page_token=token),
                metadata=self._options.metadata,
                timeout=self._options.timeout,
            )
            for relay in response.relays:
                yield relay
            token = response.next_page_token
            if not token:
                return

    async def names(self) -> builtins.list[str]:
        """The names of the namespace's relays."""
        return [relay.name async for relay in self.list()]

    async def delete(self, name: str) -> bool:
        """Delete the relay and its position; whether it existed."""
        response = await self._stub.DeleteRelay(
            relays_pb2.DeleteRelayRequest(name=name),
            metadata=self._options.metadata,
            timeout=self._options.timeout,
        )
        return response.deleted
