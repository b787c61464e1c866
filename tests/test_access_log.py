"""Access lines of real calls to real servers, in both log formats."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import statekeeper
from statekeeper.v1 import events_pb2, events_pb2_grpc
from statekeeper_server.observability.access_log import LogFormat, log_formatter
from tests.auth_support import (
    AUDIENCE,
    ISSUER,
    SigningKey,
    call_metadata,
    claims,
    write_jwks,
    write_tokens,
)
from tests.harness import ServerProcess, running_app
from tests.otel_support import named, spans
from tests.test_events_store import started

__all__ = ["spans"]  # the fixture, used by name

APPEND = "statekeeper.v1.EventLogService/AppendEvent"
LIST = "statekeeper.v1.EventLogService/ListEvents"
FIELDS = {
    "time",
    "level",
    "logger",
    "message",
    "method",
    "code",
    "reason",
    "namespace",
    "principal",
    "peer",
    "duration_ms",
    "request_bytes",
    "response_bytes",
    "trace_id",
}
FORGED = "acme\n2026-01-01T00:00:00 ERROR statekeeper: forged \x1b[31m"
"""Caller text that would forge a line and colour a terminal, were it written raw."""
SPOOFED = 'acme\\" code=OK principal=admin'
"""A namespace header that would forge fields of a text line, were it written unquoted."""


def logfmt(text: str) -> list[tuple[str, str]]:
    """The key=value pairs of a text access line, quoted values unquoted."""
    pairs = []
    for key, value in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', text):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        pairs.append((key, value))
    return pairs


class Lines:
    """What the access logger wrote, formatted as the server formats it."""

    def __init__(self, buffer: io.StringIO) -> None:
        self._buffer = buffer

    @property
    def text(self) -> str:
        """Everything written, line breaks included."""
        return self._buffer.getvalue()

    def all(self) -> list[str]:
        """The lines written, without their line breaks."""
        return self.text.splitlines()

    def json(self) -> list[dict[str, Any]]:
        """Each line parsed as JSON."""
        return [json.loads(line) for line in self.all()]


def capture(log_format: LogFormat) -> Iterator[Lines]:
    logger = logging.getLogger("statekeeper.access")
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(log_formatter(log_format))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield Lines(buffer)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def json_lines() -> Iterator[Lines]:
    """Access lines in the JSON format."""
    yield from capture("json")


@pytest.fixture
def text_lines() -> Iterator[Lines]:
    """Access lines in the text format."""
    yield from capture("text")


async def list_missing(target: str, *, metadata: tuple[Any, ...] = ()) -> grpc.aio.AioRpcError:
    """A ListEvents call of a run that does not exist: NOT_FOUND."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = events_pb2_grpc.EventLogServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.ListEvents(events_pb2.ListEventsRequest(run_id="nope"), metadata=metadata)
    return failed.value


async def test_a_json_line_parses_and_carries_every_field(
    json_lines: Lines, spans: InMemorySpanExporter
) -> None:
    request = events_pb2.AppendEventRequest(run_id="run-1", input=started())
    async with (
        running_app("memory:", access_log="all", otel=True) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = events_pb2_grpc.EventLogServiceStub(channel)
        response = await stub.AppendEvent(request)
    [line] = json_lines.json()
    assert set(line) >= FIELDS
    assert line["level"] == "INFO"
    assert line["logger"] == "statekeeper.access"
    assert line["method"] == APPEND
    assert line["code"] == "OK"
    assert line["reason"] == ""
    assert line["namespace"] == "default"
    assert line["peer"].startswith("ipv4:127.0.0.1:")
    assert line["duration_ms"] >= 0
    assert line["request_bytes"] == request.ByteSize()
    assert line["response_bytes"] == response.ByteSize()
    server_span = named(spans, APPEND)[0]
    assert server_span.context is not None
    assert line["trace_id"] == format(server_span.context.trace_id, "032x")


async def test_a_failed_call_logs_its_code_and_reason(json_lines: Lines) -> None:
    async with running_app("memory:") as app:
        await list_missing(f"127.0.0.1:{app.port}")
    [line] = json_lines.json()
    assert (line["method"], line["code"], line["reason"]) == (LIST, "NOT_FOUND", "RUN_NOT_FOUND")
    assert line["trace_id"] == ""


@pytest.mark.own_access_control
async def test_a_line_names_the_authenticated_principal(json_lines: Lines, tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens.toml", {"ci-runner": ["acme:write"]})
    async with running_app("memory:", auth_tokens_file=str(tmp_path / "tokens.toml")) as app:
        await list_missing(f"127.0.0.1:{app.port}", metadata=call_metadata(tokens["ci-runner"]))
    [line] = json_lines.json()
    assert (line["principal"], line["namespace"]) == ("token:ci-runner", "acme")


@contextlib.asynccontextmanager
async def jwt_server(tmp_path: Path) -> AsyncIterator[tuple[str, SigningKey]]:
    """A server accepting JWTs of the key it yields (with its target)."""
    key = SigningKey.rsa("k1")
    write_jwks(tmp_path / "jwks.json", [key])
    async with running_app(
        "memory:",
        auth_jwt_keys=str(tmp_path / "jwks.json"),
        auth_jwt_issuer=ISSUER,
        auth_jwt_audience=AUDIENCE,
    ) as app:
        yield f"127.0.0.1:{app.port}", key


@pytest.mark.own_access_control
async def test_a_text_line_escapes_control_characters_in_caller_text(
    text_lines: Lines, tmp_path: Path
) -> None:
    # A JWT's subject is the caller's text (an identity provider signs whatever it is
    # given); gRPC refuses control characters in header values themselves.
    async with jwt_server(tmp_path) as (target, key):
        token = key.sign(claims(["acme:read"], subject=FORGED))
        await list_missing(target, metadata=call_metadata(token, "acme"))
    [line] = text_lines.all()
    assert text_lines.text == line + "\n"
    assert "\x1b" not in line
    assert 'principal="jwt:acme\\n2026-01-01T00:00:00 ERROR statekeeper: forged \\x1b[31m"' in line


@pytest.mark.own_access_control
async def test_a_json_line_holds_control_characters_of_caller_text_escaped(
    json_lines: Lines, tmp_path: Path
) -> None:
    async with jwt_server(tmp_path) as (target, key):
        token = key.sign(claims(["acme:read"], subject=FORGED))
        await list_missing(target, metadata=call_metadata(token, "acme"))
    [raw] = json_lines.all()
    assert json_lines.text == raw + "\n"
    assert "\x1b" not in raw
    assert json.loads(raw)["principal"] == "jwt:" + FORGED


async def test_a_text_line_quotes_caller_text_so_it_cannot_forge_fields(
    text_lines: Lines,
) -> None:
    async with running_app("memory:") as app:
        error = await list_missing(
            f"127.0.0.1:{app.port}", metadata=(("x-statekeeper-namespace", SPOOFED),)
        )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    [line] = text_lines.all()
    fields = logfmt(line.split(": ", 1)[1])
    keys = [key for key, _ in fields]
    assert keys.count("code") == keys.count("principal") == 1
    assert dict(fields)["code"] == "INVALID_ARGUMENT"
    assert dict(fields)["namespace"] == SPOOFED
    assert dict(fields)["principal"] != "admin"


async def test_a_json_line_holds_caller_text_as_a_field(json_lines: Lines) -> None:
    async with running_app("memory:") as app:
        await list_missing(
            f"127.0.0.1:{app.port}", metadata=(("x-statekeeper-namespace", SPOOFED),)
        )
    [line] = json_lines.json()
    assert (line["namespace"], line["code"]) == (SPOOFED, "INVALID_ARGUMENT")


async def test_errors_mode_logs_only_failed_calls(json_lines: Lines) -> None:
    async with running_app("memory:") as app:
        async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client:
            await client.events.append("run-1", started().event)
        await list_missing(f"127.0.0.1:{app.port}")
    assert [(line["method"], line["code"]) for line in json_lines.json()] == [(LIST, "NOT_FOUND")]


async def test_all_mode_logs_every_call(json_lines: Lines) -> None:
    async with running_app("memory:", access_log="all") as app:
        async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client:
            await client.events.append("run-1", started().event)
        await list_missing(f"127.0.0.1:{app.port}")
    assert [(line["method"], line["code"]) for line in json_lines.json()] == [
        (APPEND, "OK"),
        (LIST, "NOT_FOUND"),
    ]


async def test_off_logs_no_call(json_lines: Lines, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running_app("memory:", access_log="off") as app:
        await list_missing(f"127.0.0.1:{app.port}")
    assert json_lines.all() == []
    assert not [record for record in caplog.records if "ListEvents" in record.getMessage()]


async def test_a_failed_call_is_logged_exactly_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running_app("memory:") as app:
        await list_missing(f"127.0.0.1:{app.port}")
    lines = [record for record in caplog.records if "ListEvents" in record.getMessage()]
    assert [record.name for record in lines] == ["statekeeper.access"]


async def test_a_stream_line_counts_the_bytes_it_sent(json_lines: Lines) -> None:
    async with (
        running_app("memory:", access_log="all") as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        await client.events.append("run-1", started().event)
        stub = events_pb2_grpc.EventLogServiceStub(client.channel)
        call = stub.ReplayEvents(events_pb2.ReplayEventsRequest(run_id="run-1", follow=False))
        sent = sum([message.ByteSize() async for message in call])
    [line] = [line for line in json_lines.json() if line["method"].endswith("/ReplayEvents")]
    assert line["code"] == "OK"
    assert line["response_bytes"] == sent > 0


def test_json_format_applies_to_every_line_of_the_server() -> None:
    server = ServerProcess(
        "memory:", "--log-format", "json", "--access-log", "all", capture_log=True
    )
    try:
        server.start()
        with grpc.insecure_channel(server.target) as channel:
            stub = events_pb2_grpc.EventLogServiceStub(channel)
            with pytest.raises(grpc.RpcError):
                stub.ListEvents(events_pb2.ListEventsRequest(run_id="nope"))
        assert server.terminate() == 0
    finally:
        server.stop()
    lines = [json.loads(line) for line in "".join(server.log).splitlines()]
    messages = [line["message"] for line in lines]
    assert any(message.startswith("statekeeper listening on") for message in messages)
    assert "stopped" in messages
    assert any(line.get("method") == LIST for line in lines)
