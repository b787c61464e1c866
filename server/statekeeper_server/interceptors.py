"""The server's call layers: each cross-cutting concern of a call in one place.

One gRPC interceptor (`LayeredInterceptor`) runs them; in the order a call
meets them:

1. `ErrorLayer` turns a `ServiceError` into its rich status (ErrorInfo,
   BadRequest) and records its reason for the call (the access log writes
   the call's line); any other exception is a server fault, logged with its
   traceback and reported as INTERNAL without internals. A caller's mistake
   therefore never surfaces as UNKNOWN or INTERNAL.
2. `AuthLayer` (`statekeeper_server.auth.interceptor`), only when access
   control is configured: who calls, in which namespace, and may they.
3. `AdmissionLayer` decides whether the server takes the call: none
   once it is draining for shutdown (UNAVAILABLE, SERVER_STOPPING), and
   streams only up to the server's limits (RESOURCE_EXHAUSTED,
   TOO_MANY_STREAMS). It counts calls in flight so a shutdown can wait for
   them.
4. `RequestLayer` decodes the request itself, so a body that is not
   the method's message (corrupt bytes, a wrong wire type, text that is not
   UTF-8, nesting beyond protobuf's limit) is INVALID_ARGUMENT rather than
   a traceback; refuses a body over `--max-message-bytes`
   (RESOURCE_EXHAUSTED, REQUEST_TOO_LARGE); screens the JSON values of the
   body at C speed (`wire_twins`: key counts, depth, finite numbers) before
   the real decode; and runs `check_request` (`request_decoding`). A large
   body holding JSON values is screened, decoded and checked in a worker
   process, then decoded again in steps; a large one without is checked on
   a thread. Neither holds the event loop for long.
   It also encodes every response: a handler may answer with a message or
   with the response's wire bytes already built (from stored records, see
   `wire`), which are sent as they are. When asked (`count_bytes`), it
   counts the bytes of requests and responses into the call's record.

Each wraps a method's handler once, on its first call. Unary and
server-streaming handlers are wrapped whole; for streaming requests (the
reflection service) each message is checked as it arrives.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor
from google.protobuf.message import Message

from statekeeper_server.admission import Admission
from statekeeper_server.errors import InvalidArgument, ServiceError, TooLarge, internal_status
from statekeeper_server.limits import INLINE_CHECK_BYTES
from statekeeper_server.logs import RateLimit
from statekeeper_server.observability import call_record
from statekeeper_server.piecewise import decode_in_pieces
from statekeeper_server.request_checks import check_request
from statekeeper_server.request_decoding import UNDECODABLE, CheckWorkers, decode_checked
from statekeeper_server.request_turns import RequestTurns
from statekeeper_server.wire_twins import screen_for

log = logging.getLogger("statekeeper.calls")

Context = grpc.aio.ServicerContext[Any, Any]
Handler = Any
"""A method handler: at run time a named tuple of grpc's (the stubs type it abstractly)."""
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]
Unary = Callable[[Any, Context], Awaitable[Any]]
ServerStream = Callable[[Any, Context], AsyncIterator[Any]]


class Layer(Protocol):
    """One concern of every call: wraps a method's handler in it."""

    def wrap(self, method: str, handler: Handler) -> Handler:
        """The handler with this layer's concern around it."""
        ...


class LayeredInterceptor(grpc.aio.ServerInterceptor):
    """The server's one gRPC interceptor: `layers`, outermost first, around every method.

    Each method's handler is wrapped by all layers on its first call and
    reused after, so a call pays for one interceptor however many concerns
    it passes through (grpc runs every interceptor of a chain on every call).
    """

    def __init__(self, layers: Sequence[Layer]) -> None:
        self._layers = tuple(reversed(layers))
        self._wrapped: dict[str, Handler | None] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        """The method's handler inside every layer (None: unknown method)."""
        method: str = handler_call_details.method
        if method in self._wrapped:
            return self._wrapped[method]
        handler = await continuation(handler_call_details)
        if handler is not None:
            for layer in self._layers:
                handler = layer.wrap(method, handler)
        self._wrapped[method] = handler
        return handler


def call_status(context: Context, error: BaseException | None) -> grpc.StatusCode:
    """The status a call ended with, as a layer outside the error layer sees it.

    OK when the handler returned (or a stream ran out); CANCELLED when the
    call was cancelled or its stream closed from outside (GeneratorExit: the
    call may be gone, so its context is not read); otherwise the code the
    error layer aborted with (UNKNOWN only if something aborted without one).
    """
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


# -- errors -----------------------------------------------------------------------------


class ErrorLayer(Layer):
    """Maps ServiceError to gRPC statuses for unary and server-streaming calls.

    Streaming handlers are wrapped when they are async generators (ours are);
    handlers that write through `context.write` (health's Watch) pass as is.
    """

    def __init__(self) -> None:
        self._fault_lines = RateLimit(per_second=1.0, burst=10)

    def wrap(self, method: str, handler: Handler) -> Handler:
        """The handler with its errors mapped to statuses."""
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._wrap_unary(method, handler.unary_unary))
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            return handler._replace(unary_stream=self._wrap_stream(method, handler.unary_stream))
        return handler

    def _wrap_unary(self, method: str, behavior: Unary) -> Unary:
        async def wrapped(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            try:
                response = await behavior(request, context)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                await self._abort(method, context, exc, started)
                raise  # unreachable: abort raises
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s OK (%.1f ms)", method, (time.perf_counter() - started) * 1000)
            return response

        return wrapped

    def _wrap_stream(self, method: str, behavior: ServerStream) -> ServerStream:
        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            try:
                async for response in behavior(request, context):
                    yield response
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                await self._abort(method, context, exc, started)
                raise
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s OK (%.1f ms)", method, (time.perf_counter() - started) * 1000)

        return wrapped

    async def _abort(self, method: str, context: Context, exc: Exception, started: float) -> None:
        if isinstance(exc, ServiceError):
            # The access log writes the call's one line, with this reason.
            call_record.note_reason(exc.reason)
            await context.abort_with_status(exc.to_status())
        elapsed_ms = (time.perf_counter() - started) * 1000
        if self._fault_lines.allow():
            suppressed = self._fault_lines.take_suppressed()
            log.error(
                "%s INTERNAL (%.1f ms): unexpected error%s",
                method,
                elapsed_ms,
                f" ({suppressed} more not logged)" if suppressed else "",
                exc_info=exc,
            )
        await context.abort_with_status(internal_status("internal server error; see server logs"))


# -- admission --------------------------------------------------------------------------


class AdmissionLayer(Layer):
    """Admits calls through `admission`: none while draining, streams up to its limits."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    def wrap(self, method: str, handler: Handler) -> Handler:
        """The handler, entered only when the server admits the call."""
        admission = self._admission
        if handler.unary_unary is not None:
            behavior: Unary = handler.unary_unary

            async def admitted_call(request: Any, context: Context) -> Any:
                with admission.call():
                    return await behavior(request, context)

            return handler._replace(unary_unary=admitted_call)
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            stream: ServerStream = handler.unary_stream

            async def admitted_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                with admission.call(), admission.stream(context.peer(), method):
                    async for response in stream(request, context):
                        yield response

            return handler._replace(unary_stream=admitted_stream)
        return handler


# -- requests ---------------------------------------------------------------------------


class _Refused:
    """What the decoder hands on for a request it refuses: the error to raise."""

    __slots__ = ("error",)

    def __init__(self, error: ServiceError) -> None:
        self.error = error


class _Pending:
    """A large body holding JSON values: served in a turn of `turns`, checked by a worker
    process, then decoded in steps."""

    __slots__ = ("data", "message_class", "turns", "workers")

    def __init__(
        self,
        data: bytes,
        message_class: type[Message],
        workers: CheckWorkers,
        turns: RequestTurns,
    ) -> None:
        self.data = data
        self.message_class = message_class
        self.workers = workers
        self.turns = turns


class _Unchecked:
    """A decoded request too large to check on the event loop; checked on a thread."""

    __slots__ = ("message",)

    def __init__(self, message: Any) -> None:
        self.message = message


class RequestLayer(Layer):
    """Decodes and checks every request before its handler runs.

    With `count_bytes` it also counts each request's and response's bytes
    into the call's record (`call_record`), encoding responses inside the
    handler so the count is complete when the outer layers see the call end.
    """

    def __init__(
        self,
        max_request_bytes: int,
        workers: CheckWorkers,
        turns: RequestTurns,
        *,
        count_bytes: bool = False,
    ) -> None:
        self._max_request_bytes = max_request_bytes
        self._workers = workers
        self._turns = turns
        self._count_bytes = count_bytes

    def wrap(self, method: str, handler: Handler) -> Handler:
        """The handler with a decoder that never raises, checks before it runs, and an
        encoder that passes pre-encoded responses through."""
        decode = self._decoder(handler.request_deserializer)
        encode = _encoder(handler.response_serializer)
        if self._count_bytes:
            decode = _counting_decoder(decode)
            counted = _counted(encode)
            handler = handler._replace(
                request_deserializer=decode, response_serializer=_counting_encoder(encode)
            )
            if handler.unary_unary is not None:
                return handler._replace(
                    unary_unary=_encoded_unary(_checked_unary(handler.unary_unary), counted)
                )
            if handler.unary_stream is not None and inspect.isasyncgenfunction(
                handler.unary_stream
            ):
                return handler._replace(
                    unary_stream=_encoded_stream(_checked_stream(handler.unary_stream), counted)
                )
        else:
            handler = handler._replace(request_deserializer=decode, response_serializer=encode)
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_checked_unary(handler.unary_unary))
        if handler.unary_stream is not None:
            if inspect.isasyncgenfunction(handler.unary_stream):
                return handler._replace(unary_stream=_checked_stream(handler.unary_stream))
            return handler._replace(unary_stream=_checked_unary(handler.unary_stream))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=_checked_requests(handler.stream_unary))
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=_checked_requests(handler.stream_stream))
        return handler

    def _decoder(self, deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
        """Decode a body into the request, or into `_Refused`; never raise.

        A large body holding JSON values is left to a worker process
        (`_Pending`); a large one without is decoded (it holds no value slow
        to decode) and checked on a thread (`_Unchecked`).
        """
        limit = self._max_request_bytes
        workers, turns = self._workers, self._turns
        message_class = _message_class_of(deserialize)
        holds_json = message_class is not None and screen_for(message_class.DESCRIPTOR) is not None

        def decode(data: bytes) -> Any:
            if len(data) > limit:
                return _Refused(
                    TooLarge("REQUEST_TOO_LARGE", "request", len(data), limit, "the request")
                )
            if deserialize is None:
                return data
            large = len(data) > INLINE_CHECK_BYTES
            if large and holds_json:
                assert message_class is not None
                return _Pending(data, message_class, workers, turns)
            try:
                if message_class is not None and not large:
                    return decode_checked(message_class, data)
                request = deserialize(data)
            except ServiceError as error:
                return _Refused(error)
            except Exception:
                return _Refused(InvalidArgument("request", UNDECODABLE, "UNDECODABLE_REQUEST"))
            if large:
                return _Unchecked(request)
            try:
                check_request(request)
            except ServiceError as error:
                return _Refused(error)
            return request

        return decode


def _message_class_of(deserialize: Callable[[bytes], Any] | None) -> type[Message] | None:
    """The message a method's deserializer decodes (a generated message class's
    `FromString`), if it is one."""
    message_class = getattr(deserialize, "__self__", None)
    message_type = getattr(message_class, "DESCRIPTOR", None)
    if not isinstance(message_type, descriptor.Descriptor):
        return None
    return message_class


async def _worked_request(pending: _Pending) -> Any:
    """A large body holding JSON values, checked by a worker process, then decoded on the
    event loop in steps of about a millisecond, other calls served in between."""
    await pending.workers.check(pending.message_class, pending.data)
    try:
        return await decode_in_pieces(pending.message_class, pending.data)
    except Exception as exc:  # the worker decoded it: only a fault of the server's own
        raise InvalidArgument("request", UNDECODABLE, "UNDECODABLE_REQUEST") from exc


def _counting_decoder(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """`decode`, counting each body into the call's record (gRPC decodes in the call's
    task, before any layer runs: the record starts here)."""

    def counting(data: bytes) -> Any:
        call_record.current_or_new().request_bytes += len(data)
        return decode(data)

    return counting


def _counted(encode: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """`encode`, counting the bytes of each response into the call's record."""

    def counted(response: Any) -> bytes:
        data = encode(response)
        call_record.current_or_new().response_bytes += len(data)
        return data

    return counted


def _counting_encoder(encode: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """The method's encoder when bytes are counted: responses of wrapped handlers arrive
    encoded and counted; the others (written through `context.write`) are counted here."""

    def encoder(response: Any) -> bytes:
        if isinstance(response, bytes):
            return response
        data = encode(response)
        call_record.current_or_new().response_bytes += len(data)
        return data

    return encoder


def _encoded_unary(behavior: Unary, encode: Callable[[Any], bytes]) -> Unary:
    async def encoded(request: Any, context: Context) -> Any:
        return encode(await behavior(request, context))

    return encoded


def _encoded_stream(behavior: ServerStream, encode: Callable[[Any], bytes]) -> ServerStream:
    async def encoded(request: Any, context: Context) -> AsyncIterator[Any]:
        async for response in behavior(request, context):
            yield encode(response)

    return encoded


def _encoder(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes]:
    """Encode a response with `serialize` (the method's own encoder), unless it is
    already bytes: those are the response's wire bytes and pass as they are."""

    def encode(response: Any) -> bytes:
        if isinstance(response, bytes):
            return response
        if serialize is None:
            encoded: bytes = response.SerializeToString()
            return encoded
        return serialize(response)

    return encode


async def _checked(request: Any) -> Any:
    """The request to serve: raise a refusal, check a large request on a thread."""
    if isinstance(request, _Refused):
        raise request.error
    if isinstance(request, _Unchecked):
        await asyncio.to_thread(check_request, request.message)
        return request.message
    if isinstance(request, _Pending):
        return await _worked_request(request)
    return request


def _checked_unary(behavior: Unary) -> Unary:
    async def checked(request: Any, context: Context) -> Any:
        if isinstance(request, _Pending):
            # A large request is checked and served in its turn (`request_turns`).
            async with request.turns.turn(len(request.data)):
                return await behavior(await _worked_request(request), context)
        return await behavior(await _checked(request), context)

    return checked


def _checked_stream(behavior: ServerStream) -> ServerStream:
    async def checked(request: Any, context: Context) -> AsyncIterator[Any]:
        async for response in behavior(await _checked(request), context):
            yield response

    return checked


def _checked_requests(behavior: Callable[[Any, Context], Any]) -> Callable[[Any, Context], Any]:
    """A streaming-request handler that aborts on the first request it must refuse."""

    def each(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        async def checked_requests() -> AsyncIterator[Any]:
            async for request in requests:
                try:
                    checked = await _checked(request)
                except ServiceError as error:
                    await context.abort_with_status(error.to_status())
                    raise
                yield checked

        return checked_requests()

    if inspect.isasyncgenfunction(behavior):

        async def checked_stream(requests: AsyncIterator[Any], context: Context) -> Any:
            async for response in behavior(each(requests, context), context):
                yield response

        return checked_stream

    async def checked(requests: AsyncIterator[Any], context: Context) -> Any:
        return await behavior(each(requests, context), context)

    return checked
