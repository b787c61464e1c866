"""Call metrics under the names every gRPC dashboard knows (go-grpc-prometheus).

`MetricsLayer` counts, per method, calls started and handled (by status
code), messages received and sent, and the time each call took:

- grpc_server_started_total{grpc_type,grpc_service,grpc_method}
- grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}
- grpc_server_msg_received_total{grpc_type,grpc_service,grpc_method}
- grpc_server_msg_sent_total{grpc_type,grpc_service,grpc_method}
- grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method} (histogram)

as go-grpc-prometheus and py-grpc-prometheus count them: a unary call
receives one message and sends one when it succeeds; a stream counts every
message it sends (counted once gRPC has taken it, so a message the stream
was cut off before sending is not). The layer sits outside the error layer
and reads how a call ended with `call_status`. Labelled children are bound
once per method, in `wrap`; a call only increments them.

Handlers that write their responses through `context.write` (health's
Watch) are counted as started and handled, but their messages sent are not
seen.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from statekeeper_server.interceptors import Context, Handler, Layer, call_status

LABELS = ("grpc_type", "grpc_service", "grpc_method")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""go-grpc-prometheus's default buckets for the handling time (Prometheus's DefBuckets)."""

STARTED = Counter(
    "grpc_server_started_total", "Total number of RPCs started on the server.", LABELS
)
HANDLED = Counter(
    "grpc_server_handled_total",
    "Total number of RPCs completed on the server, regardless of success or failure.",
    (*LABELS, "grpc_code"),
)
RECEIVED = Counter(
    "grpc_server_msg_received_total",
    "Total number of RPC stream messages received on the server.",
    LABELS,
)
SENT = Counter(
    "grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.", LABELS
)
HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Histogram of response latency (seconds) of gRPC that had been application-level"
    " handled by the server.",
    LABELS,
    buckets=BUCKETS,
)

UNARY = "unary"
SERVER_STREAM = "server_stream"
CLIENT_STREAM = "client_stream"
BIDI_STREAM = "bidi_stream"

Behavior = Callable[..., Any]


def split_method(method: str) -> tuple[str, str]:
    """`/package.Service/Method` as (`package.Service`, `Method`)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class MethodMetrics:
    """The metric children of one method and kind of call, bound once."""

    __slots__ = ("_handled", "_labels", "handling", "received", "sent", "started")

    def __init__(self, grpc_type: str, method: str) -> None:
        service, name = split_method(method)
        self._labels = (grpc_type, service, name)
        self.started = STARTED.labels(*self._labels)
        self.received = RECEIVED.labels(*self._labels)
        self.sent = SENT.labels(*self._labels)
        self.handling = HANDLING.labels(*self._labels)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode, seconds: float) -> None:
        """Count the call as handled with `code` after `seconds`."""
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = HANDLED.labels(*self._labels, code.name)
        child.inc()
        self.handling.observe(seconds)


class MetricsLayer(Layer):
    """Counts every call of every method under the go-grpc-prometheus names."""

    def wrap(self, method: str, handler: Handler) -> Handler:
        """The handler, counted."""
        if handler.unary_unary is not None:
            metrics = MethodMetrics(UNARY, method)
            return handler._replace(unary_unary=_unary(metrics, handler.unary_unary))
        if handler.unary_stream is not None:
            metrics = MethodMetrics(SERVER_STREAM, method)
            return handler._replace(unary_stream=_responses(metrics, handler.unary_stream, False))
        if handler.stream_unary is not None:
            metrics = MethodMetrics(CLIENT_STREAM, method)
            return handler._replace(stream_unary=_requests(metrics, handler.stream_unary))
        if handler.stream_stream is not None:
            metrics = MethodMetrics(BIDI_STREAM, method)
            return handler._replace(stream_stream=_responses(metrics, handler.stream_stream, True))
        return handler


def _unary(metrics: MethodMetrics, behavior: Behavior) -> Behavior:
    started, received, sent = metrics.started, metrics.received, metrics.sent

    async def counted(request: Any, context: Context) -> Any:
        started.inc()
        received.inc()
        begin = time.perf_counter()
        try:
            response = await behavior(request, context)
        except BaseException as error:
            metrics.handled(call_status(context, error), time.perf_counter() - begin)
            raise
        metrics.handled(grpc.StatusCode.OK, time.perf_counter() - begin)
        sent.inc()
        return response

    return counted


def _responses(metrics: MethodMetrics, behavior: Behavior, streamed_requests: bool) -> Behavior:
    """A handler with a stream of responses (and of requests when `streamed_requests`)."""
    started, received, sent = metrics.started, metrics.received, metrics.sent

    def arguments(request: Any) -> Any:
        if streamed_requests:
            return _counted_requests(request, received)
        received.inc()
        return request

    if inspect.isasyncgenfunction(behavior):

        async def counted_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            started.inc()
            begin = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                async for response in behavior(arguments(request), context):
                    yield response
                    # Resumed: gRPC sent the message and asks for the next one.
                    sent.inc()
            except GeneratorExit:
                # gRPC stopped reading the stream: the call was cancelled.
                code = grpc.StatusCode.CANCELLED
                raise
            except BaseException as error:
                code = call_status(context, error)
                raise
            finally:
                metrics.handled(code, time.perf_counter() - begin)

        return counted_stream
    return _counted_call(metrics, behavior, arguments)


def _requests(metrics: MethodMetrics, behavior: Behavior) -> Behavior:
    """A handler with a stream of requests and one response."""
    received, sent = metrics.received, metrics.sent

    def arguments(requests: Any) -> Any:
        return _counted_requests(requests, received)

    counted = _counted_call(metrics, behavior, arguments)

    async def counted_with_response(requests: Any, context: Context) -> Any:
        response = await counted(requests, context)
        sent.inc()
        return response

    return counted_with_response


def _counted_call(
    metrics: MethodMetrics, behavior: Behavior, arguments: Callable[[Any], Any]
) -> Behavior:
    """A coroutine handler (one that writes through `context.write`, or returns one
    response), counted as started and handled."""
    started = metrics.started

    async def counted(request: Any, context: Context) -> Any:
        started.inc()
        begin = time.perf_counter()
        try:
            result = await behavior(arguments(request), context)
        except BaseException as error:
            metrics.handled(call_status(context, error), time.perf_counter() - begin)
            raise
        metrics.handled(grpc.StatusCode.OK, time.perf_counter() - begin)
        return result

    return counted


async def _counted_requests(requests: AsyncIterator[Any], received: Any) -> AsyncIterator[Any]:
    async for request in requests:
        received.inc()
        yield request
