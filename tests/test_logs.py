"""Log lines that callers can neither forge nor flood."""

from __future__ import annotations

import logging
import sys

import grpc
import pytest

from statekeeper_server.logs import EscapingFormatter, RateLimit
from tests.harness import running_app


def formatted(message: str, *args: object, exc_info: object = None) -> str:
    record = logging.LogRecord("test", logging.INFO, __file__, 1, message, args, exc_info)  # type: ignore[arg-type]
    return EscapingFormatter("%(levelname)s %(message)s").format(record)


def test_a_line_break_in_caller_text_cannot_start_a_forged_line() -> None:
    line = formatted("refused key %s", "x\n2026-01-01 ERROR forged")
    assert "\n" not in line
    assert "x\\n2026-01-01 ERROR forged" in line


@pytest.mark.parametrize("control", ["\x1b[31m", "\x00", "\r", "\x7f", "\x85", "\u2028"])
def test_control_characters_in_caller_text_are_escaped(control: str) -> None:
    line = formatted("value %s", f"a{control}b")
    assert control not in line
    assert line.startswith("INFO value a\\")


def test_a_traceback_of_a_server_fault_keeps_its_line_breaks() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        line = formatted("unexpected error", exc_info=sys.exc_info())
    assert line.startswith("INFO unexpected error\nTraceback (most recent call last):\n")


def test_a_rate_limit_allows_a_burst_then_counts_what_it_holds_back() -> None:
    limit = RateLimit(per_second=0.001, burst=3)
    allowed = [limit.allow() for _ in range(10)]
    assert allowed == [True] * 3 + [False] * 7
    assert limit.take_suppressed() == 7
    assert limit.take_suppressed() == 0


async def test_a_flood_of_undecodable_bodies_writes_a_few_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="statekeeper.access")
    async with (
        running_app("memory:") as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        call = channel.unary_unary("/statekeeper.v1.SnapshotService/LoadSnapshot")
        for _ in range(300):
            with pytest.raises(grpc.aio.AioRpcError):
                await call(b"\xff\xff\xff\xff")
    lines = [r for r in caplog.records if r.name == "statekeeper.access"]
    assert 0 < len(lines) <= 60
    assert not any(r.exc_info for r in lines)
