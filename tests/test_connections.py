"""Connections that misbehave are closed, so none holds the server's memory for ever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from statekeeper_server.app import Application
from statekeeper_server.config import Settings
from tests.harness import running_app
from tests.raw_http2 import PREFACE, RawConnection

WATCH_PATH = "/statekeeper.v1.JobService/WatchJobs"


@pytest.fixture
async def strict_server() -> AsyncIterator[Application]:
    """A server with every connection timeout short enough to watch in a test."""
    async with running_app(
        "memory:",
        handshake_timeout=0.5,
        connection_idle_timeout=0.5,
        keepalive_time=0.3,
        keepalive_timeout=0.3,
        max_connections=3,
    ) as app:
        yield app


async def outcome(app: Application, act: Callable[[RawConnection], None], **watch: bool) -> str:
    """What the server does to a raw connection after `act`: goaway, closed or open."""

    def run() -> str:
        connection = RawConnection(app.port)
        try:
            act(connection)
            return connection.wait_for_end(5, **watch)
        finally:
            connection.close()

    return await asyncio.to_thread(run)


async def test_a_connection_that_never_finishes_its_handshake_is_closed(
    strict_server: Application,
) -> None:
    result = await outcome(strict_server, lambda c: c.send(PREFACE[:10]))
    assert result in ("goaway", "closed")


async def test_a_connection_without_calls_is_closed_once_idle(
    strict_server: Application,
) -> None:
    assert await outcome(strict_server, RawConnection.handshake) == "goaway"


async def test_a_client_that_never_answers_pings_is_disconnected(
    strict_server: Application,
) -> None:
    def half_open_call(connection: RawConnection) -> None:
        connection.handshake()
        connection.open_stream(1, WATCH_PATH)

    assert await outcome(strict_server, half_open_call) in ("goaway", "closed")


async def test_a_client_that_answers_pings_keeps_its_call_open(
    strict_server: Application,
) -> None:
    def half_open_call(connection: RawConnection) -> None:
        connection.handshake()
        connection.open_stream(1, WATCH_PATH)

    assert await outcome(strict_server, half_open_call, answer_pings=True) == "open"


async def test_connections_past_the_limit_are_closed_at_once(
    strict_server: Application,
) -> None:
    held = [RawConnection(strict_server.port) for _ in range(3)]
    try:
        for connection in held:
            connection.handshake()
        await asyncio.sleep(0.1)
        assert await outcome(strict_server, RawConnection.handshake) == "closed"
    finally:
        for connection in held:
            connection.close()


def test_zero_turns_the_idle_and_age_limits_off() -> None:
    from statekeeper_server.app import transport_options

    options = dict(
        transport_options(Settings(connection_idle_timeout=0, max_connection_age=0))  # type: ignore[call-arg]
    )
    assert "grpc.max_connection_idle_ms" not in options
    assert "grpc.max_connection_age_ms" not in options
    assert options["grpc.server_handshake_timeout_ms"] == 10_000
