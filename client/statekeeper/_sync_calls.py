"""The blocking client's way of carrying out the plans of `_calls`, on gRPC's
synchronous API (no event loop, no thread of its own).

A family class lists its methods as `save = unary(SnapshotCalls.save)`: the
method takes the operation's arguments and returns the answer (`unary`,
`collected`) or an iterator (`pages`, `stream`). The asyncio twin is
`_aio_calls`, with the same four names.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any, ClassVar

import grpc

from statekeeper._calls import (
    Attempts,
    CallOptions,
    Collected,
    FamilyMethod,
    P,
    Pages,
    Stream,
    T,
    Unary,
    whole,
)
from statekeeper.errors import StatekeeperError


class Family:
    """One family of calls over a blocking channel (`client.snapshots`, ...)."""

    stub: ClassVar[type[Any]]
    """The generated stub class of the family's service."""

    def __init__(self, channel: grpc.Channel, options: CallOptions) -> None:
        self._channel = channel
        self._stub = self.stub(channel)
        self._options = options

    def _unary(self, plan: Unary[T]) -> T:
        """Call, retrying an idempotent call on UNAVAILABLE; errors as StatekeeperError."""
        method = getattr(self._stub, plan.method)
        attempts = Attempts(
            self._options, idempotent=plan.idempotent, extra_timeout=plan.extra_timeout
        )
        while True:
            try:
                response = method(
                    plan.request, metadata=self._options.metadata, timeout=attempts.timeout()
                )
            except grpc.RpcError as exc:
                error = StatekeeperError.from_call(exc)
                pause = attempts.pause_after(error.code())
                if pause is None:
                    raise error from None
                time.sleep(pause)
                continue
            return plan.unpack(response)

    def _pages(self, plan: Pages[T] | Collected[T]) -> Generator[T, None, None]:
        token = ""
        while True:
            response = self._unary(Unary(plan.method, plan.request(token), whole, idempotent=True))
            yield from plan.items(response)
            token = response.next_page_token
            if not token:
                return

    def _collected(self, plan: Collected[T]) -> list[T]:
        return [item for item in self._pages(plan)]

    def _stream(self, plan: Stream[T]) -> Generator[T, None, None]:
        call = getattr(self._stub, plan.method)(plan.request, metadata=self._options.metadata)
        try:
            for response in call:
                yield from plan.items(response)
        except grpc.RpcError as exc:
            raise StatekeeperError.from_call(exc) from None
        finally:
            call.cancel()


class unary(FamilyMethod[Family, P, T]):  # noqa: N801 (used as a decorator-like name)
    """A method returning the answer of a `Unary` plan's call."""

    answer = "{}"

    def __init__(self, operation: Callable[P, Unary[T]]) -> None:
        super().__init__(operation)

    def _bind(self, family: Family) -> Callable[P, T]:
        operation: Callable[P, Unary[T]] = self.operation

        def call(*args: P.args, **kwargs: P.kwargs) -> T:
            return family._unary(operation(*args, **kwargs))

        return call


class pages(FamilyMethod[Family, P, Generator[T, None, None]]):  # noqa: N801
    """A method returning an iterator over the items of a `Pages` plan."""

    answer = "Generator[{}, None, None]"

    def __init__(self, operation: Callable[P, Pages[T]]) -> None:
        super().__init__(operation)

    def _bind(self, family: Family) -> Callable[P, Generator[T, None, None]]:
        operation: Callable[P, Pages[T]] = self.operation

        def call(*args: P.args, **kwargs: P.kwargs) -> Generator[T, None, None]:
            return family._pages(operation(*args, **kwargs))

        return call


class collected(FamilyMethod[Family, P, list[T]]):  # noqa: N801
    """A method returning a `Collected` plan's list."""

    answer = "list[{}]"

    def __init__(self, operation: Callable[P, Collected[T]]) -> None:
        super().__init__(operation)

    def _bind(self, family: Family) -> Callable[P, list[T]]:
        operation: Callable[P, Collected[T]] = self.operation

        def call(*args: P.args, **kwargs: P.kwargs) -> list[T]:
            return family._collected(operation(*args, **kwargs))

        return call


class stream(FamilyMethod[Family, P, Generator[T, None, None]]):  # noqa: N801
    """A method returning an iterator over a `Stream` plan's items."""

    answer = "Generator[{}, None, None]"

    def __init__(self, operation: Callable[P, Stream[T]]) -> None:
        super().__init__(operation)

    def _bind(self, family: Family) -> Callable[P, Generator[T, None, None]]:
        operation: Callable[P, Stream[T]] = self.operation

        def call(*args: P.args, **kwargs: P.kwargs) -> Generator[T, None, None]:
            return family._stream(operation(*args, **kwargs))

        return call
