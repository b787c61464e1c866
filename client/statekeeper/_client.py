"""The asynchronous client: one channel, one attribute per family of state."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from statekeeper import checkpoints, events, jobs, snapshots
from statekeeper._calls import NAMESPACE_HEADER, CallOptions, retry_service_config

IDEMPOTENT_METHODS = [
    *snapshots.IDEMPOTENT,
    *checkpoints.IDEMPOTENT,
    *events.IDEMPOTENT,
    *jobs.IDEMPOTENT,
]
FAMILIES = ("snapshots", "checkpoints", "events", "jobs")
"""The attributes of a client that hold one family's methods."""


class AsyncClient:
    """A statekeeper client for asyncio code.

    Every call carries the client's namespace and, unless told otherwise, a
    deadline of `timeout` seconds. Calls that are safe to repeat are retried
    on UNAVAILABLE by the channel itself. Use as `async with AsyncClient(...)`.
    """

    def __init__(
        self,
        target: str,
        *,
        namespace: str = "default",
        timeout: float | None = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        options = [
            ("grpc.service_config", retry_service_config(IDEMPOTENT_METHODS)),
            ("grpc.enable_retries", 1),
            *channel_options,
        ]
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        self.namespace = namespace
        call_options = CallOptions(metadata=((NAMESPACE_HEADER, namespace),), timeout=timeout)
        self.snapshots = snapshots.SnapshotsClient(self._channel, call_options)
        self.checkpoints = checkpoints.CheckpointsClient(self._channel, call_options)
        self.events = events.EventsClient(self._channel, call_options)
        self.jobs = jobs.JobsClient(self._channel, call_options)

    @property
    def channel(self) -> grpc.aio.Channel:
        """The underlying channel (for raw stubs)."""
        return self._channel

    async def close(self) -> None:
        """Close the channel; in-flight calls are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
