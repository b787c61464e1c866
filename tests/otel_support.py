"""An in-process OpenTelemetry SDK whose finished spans tests can read.

The SDK allows one global tracer provider per process: the first test that
needs spans installs one (or reuses an SDK provider already installed) and
adds an in-memory exporter to it; `finished_spans` clears it per test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_exporter: InMemorySpanExporter | None = None


def in_memory_exporter() -> InMemorySpanExporter:
    """The process's in-memory exporter, installed on the global SDK provider."""
    global _exporter
    if _exporter is None:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = TracerProvider()
            trace.set_tracer_provider(provider)
        _exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
    return _exporter


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The exporter of finished spans, empty at the start of the test."""
    exporter = in_memory_exporter()
    exporter.clear()
    yield exporter
    exporter.clear()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    """The finished spans called `name`."""
    return [span for span in exporter.get_finished_spans() if span.name == name]
