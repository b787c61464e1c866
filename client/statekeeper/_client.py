"""The asynchronous client: one channel, one attribute per family of state."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from statekeeper import checkpoints, events, jobs, snapshots, threads
from statekeeper._calls import CallOptions, retry_service_config
from statekeeper._credentials import (
    Pem,
    Token,
    authorization,
    channel_credentials,
    resolve_target,
    resolve_token,
)

IDEMPOTENT_METHODS = [
    *snapshots.IDEMPOTENT,
    *checkpoints.IDEMPOTENT,
    *events.IDEMPOTENT,
    *jobs.IDEMPOTENT,
    *threads.IDEMPOTENT,
]
FAMILIES = ("snapshots", "checkpoints", "events", "jobs")
"""The attributes of a client that hold one family's methods."""


class AsyncClient:
    """A statekeeper client for asyncio code.

    Every call carries the client's namespace, its token if it has one and,
    unless told otherwise, a deadline of `timeout` seconds. Calls that are
    safe to repeat are retried on UNAVAILABLE by the channel itself. Use as
    `async with AsyncClient(...)`.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        namespace: str = "default",
        timeout: float | None = 10.0,
        token: Token | None = None,
        tls: bool = False,
        root_certificates: Pem | None = None,
        client_cert: Pem | None = None,
        client_key: Pem | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Connect to `target` (host:port; else $STATEKEEPER_TARGET, else 127.0.0.1:50051).

        `token` is sent as `authorization: Bearer <token>` on every call: a
        string, or a function called before each call for a fresh one (keep
        it quick: it runs on the event loop); else $STATEKEEPER_TOKEN; `""`
        sends none. It travels in the clear without TLS.

        TLS is on with `tls=True` or any certificate: the server must prove
        itself against `root_certificates` (else the system's CAs), and
        `client_cert` with `client_key` are the client's own for mutual TLS.
        Each is PEM bytes or the path of a PEM file. `credentials` (ready
        gRPC channel credentials) replaces all four.
        """
        if credentials is not None and (
            tls
            or root_certificates is not None
            or client_cert is not None
            or client_key is not None
        ):
            raise ValueError("give credentials or the TLS arguments, not both")
        if credentials is None:
            credentials = channel_credentials(
                tls=tls,
                root_certificates=root_certificates,
                client_cert=client_cert,
                client_key=client_key,
            )
        token = resolve_token(token)
        if isinstance(token, str):
            authorization(token)  # a token metadata cannot carry fails here, not at each call
        target = resolve_target(target)
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
        call_options = CallOptions(namespace=namespace, timeout=timeout, token=token)
        self.snapshots = snapshots.SnapshotsClient(self._channel, call_options)
        self.checkpoints = checkpoints.CheckpointsClient(self._channel, call_options)
        self.events = events.EventsClient(self._channel, call_options)
        self.jobs = jobs.JobsClient(self._channel, call_options)
        self.threads = threads.ThreadsClient(self._channel, call_options)

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
