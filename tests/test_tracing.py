"""OpenTelemetry traces of real calls to an in-process server.

The spans are read from an in-memory exporter on the process's SDK provider
(tests/otel_support.py), which the server uses as it finds it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import statekeeper
from statekeeper.v1 import events_pb2, events_pb2_grpc
from statekeeper_server.observability.tracing import MESSAGES_SENT, wanted
from tests.harness import running_app
from tests.otel_support import named, spans
from tests.test_events_store import custom, started

__all__ = ["spans"]  # the fixture, used by name

APPEND = "statekeeper.v1.EventLogService/AppendEvent"
LIST = "statekeeper.v1.EventLogService/ListEvents"
REPLAY = "statekeeper.v1.EventLogService/ReplayEvents"
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_SPAN_ID:016x}-01"
REPO = Path(__file__).parent.parent


def only(found: list[ReadableSpan]) -> ReadableSpan:
    assert len(found) == 1, [span.name for span in found]
    return found[0]


async def append_one(target: str, run_id: str = "run-1") -> None:
    async with statekeeper.AsyncClient(target) as client:
        await client.events.append(run_id, started().event)


async def test_a_call_gets_a_server_span_named_after_its_method(
    spans: InMemorySpanExporter,
) -> None:
    async with running_app("memory:", otel=True) as app:
        await append_one(f"127.0.0.1:{app.port}")
    span = only(named(spans, APPEND))
    assert span.kind is SpanKind.SERVER
    assert span.status.status_code is StatusCode.UNSET


async def test_a_server_span_carries_the_rpc_attributes(spans: InMemorySpanExporter) -> None:
    async with running_app("memory:", otel=True) as app:
        await append_one(f"127.0.0.1:{app.port}")
    attributes = dict(only(named(spans, APPEND)).attributes or {})
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == "statekeeper.v1.EventLogService"
    assert attributes["rpc.method"] == "AppendEvent"
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["network.peer.address"] == "127.0.0.1"
    assert isinstance(attributes["network.peer.port"], int)


async def test_a_server_span_continues_the_trace_of_an_incoming_traceparent(
    spans: InMemorySpanExporter,
) -> None:
    async with (
        running_app("memory:", otel=True) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = events_pb2_grpc.EventLogServiceStub(channel)
        request = events_pb2.AppendEventRequest(run_id="run-1", input=started())
        await stub.AppendEvent(request, metadata=(("traceparent", TRACEPARENT),))
    span = only(named(spans, APPEND))
    assert span.context is not None
    assert span.context.trace_id == TRACE_ID
    assert span.parent is not None
    assert span.parent.span_id == PARENT_SPAN_ID
    assert span.parent.is_remote


async def test_a_failed_call_has_status_error_with_its_reason(
    spans: InMemorySpanExporter,
) -> None:
    async with (
        running_app("memory:", otel=True) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await client.events.list("no-such-run")
    span = only(named(spans, LIST))
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "RUN_NOT_FOUND"
    assert (span.attributes or {})["rpc.grpc.status_code"] == failed.value.code().value[0]


async def test_a_write_to_a_file_store_has_a_group_commit_child_span(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    async with running_app(f"file:{tmp_path / 'statekeeper.db'}", otel=True) as app:
        await append_one(f"127.0.0.1:{app.port}")
    server = only(named(spans, APPEND))
    commit = only(named(spans, "sqlite group commit"))
    assert commit.parent is not None
    assert server.context is not None
    assert commit.parent.span_id == server.context.span_id
    assert (commit.attributes or {})["db.system"] == "sqlite"


async def test_a_write_to_postgresql_has_child_spans_for_its_round_trips(
    spans: InMemorySpanExporter, postgres_url: str
) -> None:
    async with running_app(postgres_url, otel=True) as app:
        await append_one(f"127.0.0.1:{app.port}")
    server = only(named(spans, APPEND))
    assert server.context is not None
    children = [
        span
        for span in spans.get_finished_spans()
        if span.parent is not None and span.parent.span_id == server.context.span_id
    ]
    assert children
    assert {span.name for span in children} <= {
        "postgresql transaction",
        "postgresql statement",
    }
    assert all((span.attributes or {})["db.system"] == "postgresql" for span in children)


async def test_a_server_stream_is_one_span_counting_the_messages_sent(
    spans: InMemorySpanExporter,
) -> None:
    async with (
        running_app("memory:", otel=True) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        await client.events.append_many("run-1", [started(), custom("a"), custom("b")])
        stub = events_pb2_grpc.EventLogServiceStub(client.channel)
        call = stub.ReplayEvents(events_pb2.ReplayEventsRequest(run_id="run-1", follow=False))
        received = len([message async for message in call])
    span = only(named(spans, REPLAY))
    assert received > 0
    assert (span.attributes or {})[MESSAGES_SENT] == received


async def test_the_python_client_sends_its_trace_context(spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("tests")
    async with running_app("memory:", otel=True) as app:
        with tracer.start_as_current_span("caller") as caller:
            await append_one(f"127.0.0.1:{app.port}")
    server = only(named(spans, APPEND))
    assert server.context is not None
    assert server.parent is not None
    assert server.context.trace_id == caller.get_span_context().trace_id
    assert server.parent.span_id == caller.get_span_context().span_id


async def test_the_blocking_client_sends_its_trace_context(spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("tests")

    def call(target: str) -> int:
        with (
            tracer.start_as_current_span("caller") as caller,
            statekeeper.Client(target) as client,
        ):
            client.events.append("run-1", started().event)
            return caller.get_span_context().trace_id

    async with running_app("memory:", otel=True) as app:
        trace_id = await asyncio.to_thread(call, f"127.0.0.1:{app.port}")
    server = only(named(spans, APPEND))
    assert server.context is not None
    assert server.context.trace_id == trace_id


async def test_a_server_without_tracing_makes_no_spans(spans: InMemorySpanExporter) -> None:
    async with running_app("memory:") as app:
        await append_one(f"127.0.0.1:{app.port}")
    assert spans.get_finished_spans() == ()


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_SDK_DISABLED": "true"},
            False,
        ),
    ],
)
def test_the_otel_environment_turns_tracing_on_and_off(environ: dict[str, str], on: bool) -> None:
    assert wanted(False, environ) is on


def test_otel_sdk_disabled_wins_over_the_flag() -> None:
    assert wanted(True, {"OTEL_SDK_DISABLED": "true"}) is False


WITHOUT_OTEL = "import sys; sys.modules['opentelemetry'] = None; "
"""Python code that makes every import of OpenTelemetry fail, as if not installed."""


def run_without_otel(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter that cannot import OpenTelemetry."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "server"), str(REPO / "client"), str(REPO), environ.get("PYTHONPATH", "")]
    )
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_OTEL + code],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


def test_without_the_otel_extra_otel_fails_at_start_naming_the_extra(tmp_path: Path) -> None:
    done = run_without_otel(
        "from statekeeper_server.cli import main;"
        " sys.exit(main(['serve', '--otel', '--listen', '127.0.0.1:0', '--store', 'memory:']))"
    )
    assert done.returncode == 1
    assert "statekeeper[otel]" in done.stderr


def test_without_the_otel_extra_the_server_and_client_import_and_serve() -> None:
    done = run_without_otel(
        "import asyncio, grpc, statekeeper\n"
        "from statekeeper_server.app import Application\n"
        "from statekeeper_server.config import Settings\n"
        "async def main():\n"
        "    app = Application(Settings(listen='127.0.0.1:0', store='memory:'))\n"
        "    await app.start()\n"
        "    async with statekeeper.AsyncClient(f'127.0.0.1:{app.port}') as client:\n"
        "        try:\n"
        "            await client.snapshots.load('run-1')\n"
        "        except grpc.aio.AioRpcError as error:\n"
        "            assert error.code() == grpc.StatusCode.NOT_FOUND\n"
        "    await app.stop()\n"
        "asyncio.run(main())\n"
    )
    assert done.returncode == 0, done.stderr
