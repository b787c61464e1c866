"""OpenTelemetry traces: a SERVER span per call, child spans for store work.

Tracing is on when the standard `OTEL_*` environment asks for it (an
exporter in `OTEL_TRACES_EXPORTER` other than `none`, or an OTLP endpoint in
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) or
with `--otel`; `OTEL_SDK_DISABLED=true` keeps it off whatever else says.
The packages come with the `otel` extra: without them the server runs
without traces (and `--otel` refuses to start, naming the extra).

The exporters are the ones `OTEL_TRACES_EXPORTER` names (`otlp`, the
default, over gRPC; `console`), configured by the usual `OTEL_EXPORTER_OTLP_*`
variables; the resource by `OTEL_SERVICE_NAME` and
`OTEL_RESOURCE_ATTRIBUTES`; sampling by `OTEL_TRACES_SAMPLER`. A process that
already installed an SDK tracer provider (an embedding program, a test) keeps
its own.

`TracingLayer` makes one SERVER span per call, named after the method
(`statekeeper.v1.EventLog/AppendEvent`), with the RPC semantic-convention
attributes, its parent taken from the caller's `traceparent`/`tracestate`
metadata (W3C TraceContext); a server stream is one span for the whole
stream with the number of messages sent. Stores open child spans for their
work through `store_span`, only inside a traced call; while tracing is off
that costs them one check of a module global (`tracer` is None).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc

from statekeeper_server.interceptors import (
    Context,
    Handler,
    Layer,
    ServerStream,
    Unary,
    call_status,
)
from statekeeper_server.observability import call_record

if TYPE_CHECKING:
    from opentelemetry.context import Context as OtelContext
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'statekeeper[otel]'"
INSTRUMENTATION_NAME = "statekeeper_server"
MESSAGES_SENT = "statekeeper.rpc.messages_sent"
"""Span attribute of a server stream: how many messages it sent."""

tracer: Tracer | None = None
"""The tracer of store spans while tracing is on in this process; None while it is off."""


class TracingUnavailable(RuntimeError):
    """`--otel` was given but the OpenTelemetry packages are not installed."""


def wanted(otel_flag: bool, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether tracing should be on: `--otel` or the `OTEL_*` environment asks for it
    and `OTEL_SDK_DISABLED` is not `true`."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if otel_flag:
        return True
    exporters = environ.get("OTEL_TRACES_EXPORTER")
    if exporters is not None and exporters.strip():
        return any(name.strip() not in ("", "none") for name in exporters.split(","))
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def available() -> bool:
    """Whether the OpenTelemetry SDK (the `otel` extra) is installed."""
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


class Tracing:
    """Tracing switched on for a server: its call layer, and the provider to flush."""

    def __init__(self, provider: TracerProvider, owned: bool) -> None:
        self.provider = provider
        self._owned = owned

    def layer(self) -> TracingLayer:
        """The call layer making each call's SERVER span."""
        return TracingLayer(self.provider.get_tracer(INSTRUMENTATION_NAME))

    def shutdown(self) -> None:
        """Export what is pending and stop the exporters, if this server set them up
        (blocks: call it off the event loop)."""
        if self._owned:
            self.provider.shutdown()


def start_tracing(otel_flag: bool, environ: Mapping[str, str] = os.environ) -> Tracing | None:
    """Tracing for a server, or None when it is off (see `wanted`).

    Raises TracingUnavailable when `--otel` asks for it and the packages are
    missing; when only the environment asks, logs a warning and stays off.
    """
    global tracer
    if not wanted(otel_flag, environ):
        return None
    if not available():
        if otel_flag:
            raise TracingUnavailable(f"--otel needs the OpenTelemetry packages: {EXTRA_HINT}")
        log.warning("OTEL_* asks for traces, but the otel extra is missing (%s)", EXTRA_HINT)
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        result = Tracing(current, owned=False)
    else:
        provider = _new_provider(environ)
        trace.set_tracer_provider(provider)
        result = Tracing(provider, owned=True)
    tracer = result.provider.get_tracer(INSTRUMENTATION_NAME)
    return result


def _new_provider(environ: Mapping[str, str]) -> TracerProvider:
    """An SDK provider exporting through the exporters `OTEL_TRACES_EXPORTER` names."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", "statekeeper")})
    provider = TracerProvider(resource=resource)
    # Unset means otlp; `none` (with --otel) makes spans (trace ids in the access log)
    # without exporting them.
    names = [
        name.strip()
        for name in (environ.get("OTEL_TRACES_EXPORTER", "").strip() or "otlp").split(",")
        if name.strip() not in ("", "none")
    ]
    for name in dict.fromkeys(names):
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            log.warning("unknown trace exporter %r in OTEL_TRACES_EXPORTER, ignored", name)
    return provider


def trace_id() -> str:
    """The trace id of the current span as 32 hex digits; "" when tracing is off or no
    span is current."""
    if tracer is None:
        return ""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


@contextmanager
def store_span(name: str, attributes: Mapping[str, str | int]) -> Iterator[None]:
    """A child span of the current call's span around store work (nothing outside a
    traced call). Callers check `tracer is not None` first, so it costs nothing while
    tracing is off."""
    from opentelemetry import trace

    active = tracer
    if active is None or not trace.get_current_span().is_recording():
        yield
        return
    with active.start_as_current_span(
        name, kind=trace.SpanKind.CLIENT, attributes=dict(attributes)
    ):
        yield


# -- the call layer ---------------------------------------------------------------------


def _metadata_carrier(context: Context) -> dict[str, str]:
    """The propagation headers of a call's metadata (text values only)."""
    carrier: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if key in ("traceparent", "tracestate") and isinstance(value, str):
            carrier[key] = value
    return carrier


def peer_attributes(peer: str) -> dict[str, str | int]:
    """`network.peer.*` attributes from gRPC's peer string (`ipv4:10.0.0.1:5000`,
    `ipv6:[::1]:5000`); nothing for other kinds of peers."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return {}
    host, _, port = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit():
        return {}
    return {"network.peer.address": host, "network.peer.port": int(port)}


class TracingLayer(Layer):
    """The outermost call layer: one SERVER span per call (see the module).

    A failed call's span has status ERROR (described by its ErrorInfo reason
    when it has one, else its code) and `rpc.grpc.status_code`.
    """

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer
        self._propagator = TraceContextTextMapPropagator()

    def wrap(self, method: str, handler: Handler) -> Handler:
        """The handler inside its call's span."""
        name = method.removeprefix("/")
        service, _, rpc_method = name.partition("/")
        attributes: dict[str, str | int] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": rpc_method,
        }
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behavior = getattr(handler, kind)
            if behavior is None:
                continue
            if inspect.isasyncgenfunction(behavior):
                return handler._replace(**{kind: self._stream(name, attributes, behavior)})
            return handler._replace(**{kind: self._unary(name, attributes, behavior)})
        return handler

    def _start(
        self, name: str, attributes: dict[str, str | int], context: Context
    ) -> tuple[Span, call_record.CallRecord]:
        from opentelemetry.trace import SpanKind

        record = call_record.current_or_new()
        parent: OtelContext = self._propagator.extract(_metadata_carrier(context))
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        for key, value in peer_attributes(context.peer()).items():
            span.set_attribute(key, value)
        return span, record

    def _unary(self, name: str, attributes: dict[str, str | int], behavior: Unary) -> Unary:
        from opentelemetry.trace import use_span

        async def traced(request: Any, context: Context) -> Any:
            span, record = self._start(name, attributes, context)
            error: BaseException | None = None
            try:
                with use_span(span, record_exception=False, set_status_on_exception=False):
                    return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                _end(span, record, context, error)

        return traced

    def _stream(
        self, name: str, attributes: dict[str, str | int], behavior: ServerStream
    ) -> ServerStream:
        from opentelemetry import context as otel_context
        from opentelemetry.trace import set_span_in_context

        async def traced(request: Any, context: Context) -> AsyncIterator[Any]:
            span, record = self._start(name, attributes, context)
            traced_context = set_span_in_context(span)
            responses = behavior(request, context)
            sent = 0
            error: BaseException | None = None
            try:
                while True:
                    # The span is current only while the handler runs, never across a
                    # yield: the stream may be closed from another task's context.
                    token = otel_context.attach(traced_context)
                    try:
                        response = await anext(responses)
                    except StopAsyncIteration:
                        break
                    finally:
                        otel_context.detach(token)
                    sent += 1
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                token = otel_context.attach(traced_context)
                try:
                    await responses.aclose()  # type: ignore[attr-defined]
                finally:
                    otel_context.detach(token)
                span.set_attribute(MESSAGES_SENT, sent)
                _end(span, record, context, error)

        return traced


def _end(
    span: Span, record: call_record.CallRecord, context: Context, error: BaseException | None
) -> None:
    """End `span` with the call's status code."""
    from opentelemetry.trace import Status, StatusCode

    code = call_status(context, error)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        reason = record.reason or code.name
        span.set_status(Status(StatusCode.ERROR, reason))
    span.end()
