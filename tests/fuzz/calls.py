"""Sending bytes to any RPC and reading back what came, as bytes.

Requests go through a generic channel call with identity serializers, so
the fuzzer can send bytes no stub would, and every response is kept
exactly as received (the checks decode it with the standard stubs).
Server streams are read until they end or fall idle; an idle stream (a
live follower) is then cancelled by us, which is not a failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from tests.fuzz.catalog import Rpc

CALL_TIMEOUT = 8.0
"""Deadline of every call; the server must answer well within it."""
FIRST_MESSAGE_WAIT = 3.0
"""How long a stream may take to send its first message before we stop listening."""
IDLE_WAIT = 0.25
"""How long a stream may stay silent after a message before we stop listening."""
MAX_STREAM_MESSAGES = 200


@dataclass
class Outcome:
    """What one call returned."""

    code: grpc.StatusCode
    details: str = ""
    responses: list[bytes] = field(default_factory=list)
    trailing: tuple[tuple[str, str | bytes], ...] = ()
    left_open: bool = False
    """A stream was still open (a live follower) when we stopped listening."""
    refused_locally: str = ""
    """The client library refused to send the call at all (such as an illegal header)."""
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the call succeeded (an idle stream we left counts as a success)."""
        return self.code == grpc.StatusCode.OK and not self.refused_locally


async def invoke(
    channel: grpc.aio.Channel,
    rpc: Rpc,
    payload: bytes,
    metadata: tuple[tuple[str, str], ...],
    *,
    deadline: float = CALL_TIMEOUT,
    first_wait: float = FIRST_MESSAGE_WAIT,
    idle_wait: float = IDLE_WAIT,
    enough: Callable[[bytes], bool] | None = None,
) -> Outcome:
    """Send `payload` to `rpc` and collect the raw responses and the status.

    A stream is read until it ends, sends nothing for `first_wait` (then for
    `idle_wait` after a message), or sends a message for which `enough` is
    true; then we stop listening.
    """
    started = time.perf_counter()
    try:
        if rpc.server_streaming:
            outcome = await _stream(
                channel, rpc, payload, metadata, deadline, (first_wait, idle_wait), enough
            )
        else:
            outcome = await _unary(channel, rpc, payload, metadata, deadline)
    except grpc.aio.AioRpcError as error:
        outcome = Outcome(
            code=error.code(),
            details=error.details() or "",
            trailing=tuple(error.trailing_metadata() or ()),
        )
    except (grpc.aio.UsageError, grpc.RpcError, ValueError, TypeError) as error:
        outcome = Outcome(code=grpc.StatusCode.UNKNOWN, refused_locally=repr(error))
    except Exception as error:  # the cygrpc layer raises its own types for illegal headers
        if type(error).__module__.startswith("grpc"):
            outcome = Outcome(code=grpc.StatusCode.UNKNOWN, refused_locally=repr(error))
        else:
            raise
    outcome.elapsed = time.perf_counter() - started
    return outcome


async def _unary(
    channel: grpc.aio.Channel,
    rpc: Rpc,
    payload: bytes,
    metadata: tuple[tuple[str, str], ...],
    deadline: float,
) -> Outcome:
    if rpc.client_streaming:
        sender: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(rpc.path)
        response = await sender(iter([payload]), metadata=metadata, timeout=deadline)
    else:
        method: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(rpc.path)
        response = await method(payload, metadata=metadata, timeout=deadline)
    return Outcome(code=grpc.StatusCode.OK, responses=[response])


async def _stream(
    channel: grpc.aio.Channel,
    rpc: Rpc,
    payload: bytes,
    metadata: tuple[tuple[str, str], ...],
    deadline: float,
    waits: tuple[float, float],
    enough: Callable[[bytes], bool] | None,
) -> Outcome:
    call: grpc.aio.StreamStreamCall[bytes, bytes] | grpc.aio.UnaryStreamCall[bytes, bytes]
    if rpc.client_streaming:
        both: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(rpc.path)
        call = both(iter([payload]), metadata=metadata, timeout=deadline)
    else:
        method: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(rpc.path)
        call = method(payload, metadata=metadata, timeout=deadline)
    responses: list[bytes] = []
    left_open = False
    try:
        while True:
            wait = waits[0] if not responses else waits[1]
            try:
                message = await asyncio.wait_for(call.read(), wait)
            except asyncio.TimeoutError:
                left_open = True
                break
            if not isinstance(message, bytes):  # grpc.aio.EOF
                break
            responses.append(message)
            if len(responses) >= MAX_STREAM_MESSAGES or (enough is not None and enough(message)):
                left_open = True
                break
    finally:
        if left_open:
            call.cancel()
    return Outcome(code=grpc.StatusCode.OK, responses=responses, left_open=left_open)
