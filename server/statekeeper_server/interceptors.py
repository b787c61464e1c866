"""The server interceptor that turns errors into statuses and logs each call.

Every handler of every service is wrapped once: a `ServiceError` becomes its
rich status (ErrorInfo, BadRequest); any other exception is a server fault,
logged with its traceback and reported as INTERNAL without internals. A
caller's mistake therefore never surfaces as UNKNOWN or INTERNAL.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from statekeeper_server.errors import ServiceError, internal_status

log = logging.getLogger("statekeeper.calls")

Unary = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
ServerStream = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps ServiceError to gRPC statuses for unary and server-streaming calls.

    Streaming handlers are wrapped when they are async generators (ours are);
    handlers that write through `context.write` (health's Watch) pass as is.
    Each handler is wrapped once, on its first call.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        """Wrap the handler's behaviour; leave unknown methods alone."""
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary is not None:
            handler = handler._replace(unary_unary=_wrap_unary(method, handler.unary_unary))
        elif handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            handler = handler._replace(unary_stream=_wrap_stream(method, handler.unary_stream))
        self._wrapped[method] = handler
        return handler


async def _abort(
    method: str, context: grpc.aio.ServicerContext[Any, Any], exc: Exception, started: float
) -> None:
    elapsed_ms = (time.perf_counter() - started) * 1000
    if isinstance(exc, ServiceError):
        log.info("%s %s %s (%.1f ms): %s", method, exc.code.name, exc.reason, elapsed_ms, exc)
        await context.abort_with_status(exc.to_status())
    log.exception("%s INTERNAL (%.1f ms): unexpected error", method, elapsed_ms, exc_info=exc)
    await context.abort_with_status(internal_status("internal server error; see server logs"))


def _wrap_unary(method: str, behavior: Unary) -> Unary:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        try:
            response = await behavior(request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(method, context, exc, started)
            raise  # unreachable: abort raises
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s OK (%.1f ms)", method, (time.perf_counter() - started) * 1000)
        return response

    return wrapped


def _wrap_stream(method: str, behavior: ServerStream) -> ServerStream:
    async def wrapped(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        started = time.perf_counter()
        try:
            async for response in behavior(request, context):
                yield response
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(method, context, exc, started)
            raise
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s OK (%.1f ms)", method, (time.perf_counter() - started) * 1000)

    return wrapped
