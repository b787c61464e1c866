"""Sink definitions are checked when the server starts, with a message naming the sink."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from statekeeper_server.publish.messages import Outgoing
from statekeeper_server.publish.sinks import SinkConfigError, Sinks, parse_sink


@pytest.mark.parametrize(
    ("definition", "complaint"),
    [
        ("nats://127.0.0.1:4222", "must be NAME=URL"),
        ("bad name=nats://127.0.0.1:4222", "must be NAME=URL"),
        ("out=kafka://127.0.0.1:9092", "must start with nats://"),
        ("out=nats://127.0.0.1:99999", "invalid port"),
        ("out=redis:///0", "names no host"),
        ("out=nats://127.0.0.1:4222?subject=events.{tenant}", "uses {tenant}"),
        ("out=nats://127.0.0.1:4222?subject=events.{run_id", "subject template"),
        ("out=nats://127.0.0.1:4222?subject=events.*.{run_id}", "is not a NATS subject"),
        ("out=nats://127.0.0.1:4222?subject=events..{run_id}", "is not a NATS subject"),
        ("out=redis://127.0.0.1:6379/0?stream={kind!r}", "uses {kind}"),
        ("out=redis://127.0.0.1:6379/0?maxlen=-5", "maxlen must be a positive"),
        ("out=redis://127.0.0.1:6379/0?maxlen=many", "maxlen must be a number"),
        ("out=redis://127.0.0.1:6379/0?format=xml", "format must be protobuf or json"),
        ("out=nats://127.0.0.1:4222?maxlen=5", "unknown option 'maxlen'"),
    ],
)
def test_a_bad_sink_definition_is_refused_saying_what_is_wrong(
    definition: str, complaint: str
) -> None:
    with pytest.raises(SinkConfigError, match=None) as raised:
        parse_sink(definition, "protobuf")
    assert complaint in str(raised.value)


def test_a_password_in_a_sink_url_never_appears_in_a_complaint() -> None:
    with pytest.raises(SinkConfigError) as raised:
        parse_sink("out=redis://user:s3cret@127.0.0.1:6379/0?format=xml&stream={x}", "json")
    assert "s3cret" not in str(raised.value)


def test_a_name_defined_twice_is_refused(tmp_path: Path) -> None:
    sinks_file = tmp_path / "sinks"
    sinks_file.write_text("# brokers\nout=redis://127.0.0.1:6379/0  # audit\n")
    with pytest.raises(SinkConfigError, match="sink out is defined twice"):
        Sinks.from_settings(["out=nats://127.0.0.1:4222"], str(sinks_file), "protobuf")


def test_a_sinks_file_adds_its_sinks_to_the_flags(tmp_path: Path) -> None:
    sinks_file = tmp_path / "sinks"
    sinks_file.write_text("audit=redis://127.0.0.1:6379/2?stream=audit:{namespace}\n")
    sinks = Sinks.from_settings(["events=nats://127.0.0.1:4222"], str(sinks_file), "json")
    assert sinks.names() == ["audit", "events"]
    assert sinks.specs["audit"].format == "json"


def test_a_subject_template_makes_each_value_one_token() -> None:
    spec = parse_sink("out=nats://127.0.0.1:4222?subject=ev.{namespace}.{type}", "protobuf")
    message = Outgoing("acme", "run.1", 3, "id", "custom", "billing.charged *", b"", "")
    assert spec.template.render(message) == "ev.acme.billing_charged__"


def test_the_server_refuses_to_start_with_a_bad_sink_and_says_which() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "statekeeper_server",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory:",
            "--http-listen",
            "",
            "--sink",
            "events=nats://127.0.0.1:4222",
            "--sink",
            "audit=redis://127.0.0.1:6379/0?stream=audit:{tenant}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode != 0
    assert "sink audit: stream template 'audit:{tenant}' uses {tenant}" in completed.stderr
