"""The blocking client: the asyncio client driven on a private event loop.

Every family method of `AsyncClient` is available with the same name and
arguments; coroutines become blocking calls and async iterators become
iterators. Keeping one implementation means the two never disagree.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

from statekeeper._client import FAMILIES, AsyncClient

T = TypeVar("T")


async def _next(iterator: AsyncIterator[T]) -> T:
    return await iterator.__anext__()


class _Family:
    """Blocking view of one family client (`client.snapshots`, ...)."""

    def __init__(self, target: object, run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self._target = target
        self._run = run

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if inspect.isasyncgenfunction(attr):

            def iterate(*args: Any, **kwargs: Any) -> Iterator[Any]:
                agen: AsyncIterator[Any] = attr(*args, **kwargs)
                while True:
                    try:
                        yield self._run(_next(agen))
                    except StopAsyncIteration:
                        return

            return iterate
        if inspect.iscoroutinefunction(attr):

            def call(*args: Any, **kwargs: Any) -> Any:
                return self._run(attr(*args, **kwargs))

            return call
        return attr


class Client:
    """A blocking statekeeper client with the methods of `AsyncClient`.

    Use as `with Client(target) as client: client.snapshots.load("run-1")`.
    """

    def __init__(self, target: str | None = None, **options: Any) -> None:
        """Arguments as for `AsyncClient`; a callable token is called on the client's
        own thread."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="statekeeper-client", daemon=True
        )
        self._thread.start()

        async def connect() -> AsyncClient:
            return AsyncClient(target, **options)

        self._client = self._run(connect())
        for family in FAMILIES:
            setattr(self, family, _Family(getattr(self._client, family), self._run))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        """Close the channel and stop the private loop."""
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __getattr__(self, name: str) -> Any:
        # Families are set in __init__; this only serves type checkers' view.
        raise AttributeError(name)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
