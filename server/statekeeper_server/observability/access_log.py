"""One line per finished call (`--access-log`), and the format of every log line
(`--log-format`).

`AccessLogLayer` writes, at INFO on the `statekeeper.access` logger, one
line per call that ended (`all`) or per call that did not end OK
(`errors`, the default; rate-limited like every line callers can provoke,
the line after a pause says how many were held back): the method, the
namespace, the principal, the peer, the status code and ErrorInfo reason,
the duration in milliseconds, the bytes of the request and of the responses,
and the trace id when tracing is on. It is the only line a failed call
gets (server faults also get their traceback from the error layer).

In `text` format a line is `key=value` pairs, values with spaces, quotes or
`=` quoted, and every control character escaped (`EscapingFormatter`); in
`json` format every line of the server is one JSON object (`time`, `level`,
`logger`, `message`, and an access line's fields), with control characters
escaped by JSON. Caller text is never written raw in either.
"""

from __future__ import annotations

import datetime
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import grpc

from statekeeper_server.interceptors import (
    Context,
    Handler,
    Layer,
    ServerStream,
    Unary,
    call_status,
)
from statekeeper_server.logs import EscapingFormatter, RateLimit
from statekeeper_server.observability import call_record, tracing
from statekeeper_server.services.context import (
    DEFAULT_NAMESPACE,
    NAMESPACE_HEADER,
    admitted_namespace,
    call_principal,
)

log = logging.getLogger("statekeeper.access")
UTC = datetime.timezone.utc

LogFormat = Literal["text", "json"]
AccessLogMode = Literal["all", "errors", "off"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
ACCESS_MESSAGE = "call ended"
"""The `message` of an access line in JSON (its facts are fields of their own)."""


class AccessFields(dict[str, str | int | float]):
    """The fields of one access line; as text, `key=value` pairs (see the module)."""

    def __str__(self) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in self.items())


def _logfmt_value(value: str | int | float) -> str:
    if not isinstance(value, str):
        return str(value)
    if value and not any(c in value for c in ' "=\\'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class JsonFormatter(logging.Formatter):
    """Each log record as one JSON object on one line: `time` (UTC, ISO 8601), `level`,
    `logger`, `message`, an access line's fields, `exception` for a traceback.

    Every control character is escaped (JSON's own escapes plus DEL and every
    non-ASCII character), so no value can break the line.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        access = getattr(record, "access", None)
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": ACCESS_MESSAGE if isinstance(access, dict) else record.getMessage(),
        }
        if isinstance(access, dict):
            entry.update(access)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=True).replace("\x7f", "\\u007f")


def log_formatter(log_format: LogFormat) -> logging.Formatter:
    """The formatter of every server log line in `log_format`."""
    if log_format == "json":
        return JsonFormatter()
    return EscapingFormatter(TEXT_FORMAT, TIME_FORMAT)


def _namespace(context: Context) -> str:
    """The call's namespace for its line: the one admitted, else the header as sent
    (possibly invalid: the line escapes it), else the default."""
    admitted = admitted_namespace()
    if admitted is not None:
        return admitted
    for key, value in context.invocation_metadata() or ():
        if key == NAMESPACE_HEADER:
            return value if isinstance(value, str) else repr(value)
    return DEFAULT_NAMESPACE


class AccessLogLayer(Layer):
    """Writes one access line per finished call (`all`) or failed call (`errors`).

    Sits outside the error layer: it sees the status the call ended with and
    the reason the error layer recorded. Never added with `--access-log off`.
    """

    def __init__(self, mode: Literal["all", "errors"]) -> None:
        self._errors_only = mode == "errors"
        self._lines = RateLimit() if self._errors_only else None

    def wrap(self, method: str, handler: Handler) -> Handler:
        """The handler, with a line written when its call ends."""
        name = method.removeprefix("/")
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behavior = getattr(handler, kind)
            if behavior is None:
                continue
            if inspect.isasyncgenfunction(behavior):
                return handler._replace(**{kind: self._stream(name, behavior)})
            return handler._replace(**{kind: self._unary(name, behavior)})
        return handler

    def _unary(self, name: str, behavior: Unary) -> Unary:
        async def logged(request: Any, context: Context) -> Any:
            record = call_record.current_or_new()
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                code = call_status(context, error)
                self._write(name, context.peer() or "", code, record, started, _who(context))

        return logged

    def _stream(self, name: str, behavior: ServerStream) -> ServerStream:
        async def logged(request: Any, context: Context) -> AsyncIterator[Any]:
            record = call_record.current_or_new()
            started = time.perf_counter()
            error: BaseException | None = None
            # Everything the line needs from the call is read now, in the call's own
            # task: a stream may be closed from another task after any yield, once
            # gRPC has let go of the call, and the context must not be touched then.
            who = _who(context)
            peer = context.peer() or ""
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                code = call_status(context, error)
                self._write(name, peer, code, record, started, who)

        return logged

    def _write(
        self,
        name: str,
        peer: str,
        code: grpc.StatusCode,
        record: call_record.CallRecord,
        started: float,
        who: tuple[str, str],
    ) -> None:
        if self._errors_only and code is grpc.StatusCode.OK:
            return
        if not log.isEnabledFor(logging.INFO):
            return
        suppressed = 0
        if self._lines is not None:
            if not self._lines.allow():
                return
            suppressed = self._lines.take_suppressed()
        namespace, principal = who
        fields = AccessFields(
            method=name,
            code=code.name,
            reason=record.reason,
            namespace=namespace,
            principal=principal,
            peer=peer,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            request_bytes=record.request_bytes,
            response_bytes=record.response_bytes,
            trace_id=tracing.trace_id(),
        )
        if suppressed:
            fields["suppressed"] = suppressed
        log.info("%s", fields, extra={"access": fields})


def _who(context: Context) -> tuple[str, str]:
    """The call's namespace and principal, read from the call's own context."""
    return _namespace(context), call_principal()
