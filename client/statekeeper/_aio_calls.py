"""The asyncio client's way of carrying out the plans of `_calls`.

A family class lists its methods as `save = unary(SnapshotCalls.save)`: the
method takes the operation's arguments and returns a coroutine (`unary`,
`collected`) or an async iterator (`pages`, `stream`). The blocking twin is
`_sync_calls`, with the same four names.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Coroutine
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
    """One family of calls over an asyncio channel (`client.snapshots`, ...)."""

    stub: ClassVar[type[Any]]
    """The generated stub class of the family's service."""

    def __init__(self, channel: grpc.aio.Channel, options: CallOptions) -> None:
        self._channel = channel
        self._stub = self.stub(channel)
        self._options = options

    async def _unary(self, plan: Unary[T]) -> T:
        """Call, retrying an idempotent call on UNAVAILABLE; errors as StatekeeperError."""
        method = getattr(self._stub, plan.method)
        attempts = Attempts(
            self._options, idempotent=plan.idempotent, extra_timeout=plan.extra_timeout
        )
        while True:
            try:
                response = await method(
                    plan.request, metadata=self._options.metadata, timeout=attempts.timeout()
                )
            except grpc.aio.AioRpcError as exc:
                error = StatekeeperError.from_call(exc)
                pause = attempts.pause_after(error.code())
                if pause is None:
                    raise error from None
                await asyncio.sleep(pause)
                continue
            return plan.unpack(response)

    async def _pages(self, plan: Pages[T] | Collected[T]) -> AsyncGenerator[T, None]:
        token = ""
        while True:
            response = await self._unary(
                Unary(plan.method, plan.request(token), whole, idempotent=True)
            )
            for item in plan.items(response):
                yield item
            token = response.next_page_token
            if not token:
                return

    async def _collected(self, plan: Collected[T]) -> list[T]:
        return [item async for item in self._pages(plan)]

    async def _stream(self, plan: Stream[T]) -> AsyncGenerator[T, None]:
        call = getattr(self._stub, plan.method)(plan.request, metadata=self._options.metadata)
        try:
            async for response in call:
                for item in plan.items(response):
                    yield item
        except grpc.aio.AioRpcError as exc:
            raise StatekeeperError.from_call(exc) from None
        finally:
            call.cancel()


class unary(FamilyMethod[Family, P, Coroutine[Any, Any, T]]):  # noqa: N801 (used as a decorator-like name)
    """A method returning the coroutine of a `Unary` plan's call."""

    answer = "Coroutine[Any, Any, {}]"

    def __init__(self, operation: Callable[P, Unary[T]]) -> None:
        super().__init__(operation)

    def _bind(self, family: Family) -> Callable[P, Coroutine[Any, Any, T]]:
        operation: Callable[P, Unary[T]] = self.operation

        async def call(*args: P.args, **kwargs: P.kwargs) -> T:
            return await family._unary(operation(*args, **kwargs))

        return call


class pages(FamilyMethod[Family, P, AsyncGenerator[T, None]]):  # noqa: N801
    """A method returning an async iterator over the items of a `Pages` plan."""

    answer = "AsyncGenerator[{}, None]"

    def __init__(self, operation: Callable[P, Pages[T]]) -> None:
        super().__init__(operation)

    def _bind(self, family: Family) -> Callable[P, AsyncGenerator[T, None]]:
        operation: Callable[P, Pages[T]] = self.operation

        def call(*args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[T, None]:
            return family._pages(operation(*args, **kwargs))

        return call


class collected(FamilyMethod[Family, P, Coroutine[Any, Any, list[T]]]):  # noqa: N801
    """A method returning the coroutine of a `Collected` plan's list."""

    answer = "Coroutine[Any, Any, list[{}]]"

    def __init__(self, operation: Callable[P, Collected[T]]) -> None:
        super().__init__(operation)

    def _bind(self, family: Family) -> Callable[P, Coroutine[Any, Any, list[T]]]:
        operation: Callable[P, Collected[T]] = self.operation

        async def call(*args: P.args, **kwargs: P.kwargs) -> list[T]:
            return await family._collected(operation(*args, **kwargs))

        return call


class stream(FamilyMethod[Family, P, AsyncGenerator[T, None]]):  # noqa: N801
    """A method returning an async iterator over a `Stream` plan's items."""

    answer = "AsyncGenerator[{}, None]"

    def __init__(self, operation: Callable[P, Stream[T]]) -> None:
        super().__init__(operation)

    def _bind(self, family: Family) -> Callable[P, AsyncGenerator[T, None]]:
        operation: Callable[P, Stream[T]] = self.operation

        def call(*args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[T, None]:
            return family._stream(operation(*args, **kwargs))

        return call
