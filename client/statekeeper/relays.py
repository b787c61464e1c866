"""`client.relays`: relays forwarding a namespace's events to one of the server's sinks.

`RelayCalls` says what each method sends and returns; `RelaysClient` (asyncio)
and `BlockingRelaysClient` make the calls.
"""

from __future__ import annotations

from collections.abc import Iterable

from statekeeper import _aio_calls as aio
from statekeeper import _sync_calls as sync
from statekeeper._calls import Collected, Pages, Unary
from statekeeper.v1 import relays_pb2, relays_pb2_grpc


class RelayCalls:
    """The operations of the relays family, shared by both clients. Every one is
    safe to repeat: creating a relay again with the same definition returns it,
    deleting it again answers `deleted = false`."""

    @staticmethod
    def create(
        name: str,
        sink: str,
        *,
        run_id_prefix: str = "",
        event_kinds: Iterable[str] = (),
    ) -> Unary[relays_pb2.Relay]:
        """Forward every committed event of the namespace (of runs whose id starts with
        `run_id_prefix`, of `event_kinds` such as "custom", when given) to the
        server's sink `sink`; the relay. The same definition again returns the
        relay; another one under `name` raises ALREADY_EXISTS."""
        return Unary(
            "CreateRelay",
            relays_pb2.CreateRelayRequest(
                relay=relays_pb2.Relay(
                    name=name, sink=sink, run_id_prefix=run_id_prefix, event_kinds=event_kinds
                )
            ),
            lambda response: response.relay,
            idempotent=True,
        )

    @staticmethod
    def get(name: str) -> Unary[relays_pb2.Relay]:
        """The relay with its lag (`status`); raises NOT_FOUND if there is none."""
        return Unary(
            "GetRelay",
            relays_pb2.GetRelayRequest(name=name),
            lambda response: response.relay,
            idempotent=True,
        )

    @staticmethod
    def list(*, page_size: int = 0) -> Pages[relays_pb2.Relay]:
        """Every relay of the namespace, by name, with its lag, page by page."""
        return Pages(
            "ListRelays",
            lambda token: relays_pb2.ListRelaysRequest(page_size=page_size, page_token=token),
            lambda response: response.relays,
        )

    @staticmethod
    def names() -> Collected[str]:
        """The names of the namespace's relays."""
        return Collected(
            "ListRelays",
            lambda token: relays_pb2.ListRelaysRequest(page_token=token),
            lambda response: [relay.name for relay in response.relays],
        )

    @staticmethod
    def delete(name: str) -> Unary[bool]:
        """Delete the relay and its position; whether it existed."""
        return Unary(
            "DeleteRelay",
            relays_pb2.DeleteRelayRequest(name=name),
            lambda response: response.deleted,
            idempotent=True,
        )


class RelaysClient(aio.Family):
    """Create, inspect (with their lag), list and delete relays."""

    stub = relays_pb2_grpc.RelayServiceStub
    create = aio.unary(RelayCalls.create)
    get = aio.unary(RelayCalls.get)
    list = aio.pages(RelayCalls.list)
    names = aio.collected(RelayCalls.names)
    delete = aio.unary(RelayCalls.delete)


class BlockingRelaysClient(sync.Family):
    """Create, inspect (with their lag), list and delete relays (blocking)."""

    stub = relays_pb2_grpc.RelayServiceStub
    create = sync.unary(RelayCalls.create)
    get = sync.unary(RelayCalls.get)
    list = sync.pages(RelayCalls.list)
    names = sync.collected(RelayCalls.names)
    delete = sync.unary(RelayCalls.delete)
