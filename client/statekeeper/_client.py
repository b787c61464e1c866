"""The asynchronous client: one channel, one attribute per family of state."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from statekeeper import checkpoints, events, jobs, relays, snapshots, threads
from statekeeper._calls import CallOptions, call_options, connection
from statekeeper._credentials import Pem, Token


class AsyncClient:
    """A statekeeper client for asyncio code.

    Every call carries the client's namespace, its token if it has one and,
    unless told otherwise, a deadline of `timeout` seconds. Calls that are
    safe to repeat are retried on UNAVAILABLE within that deadline. Failed
    calls raise `statekeeper.errors.StatekeeperError`. Use as
    `async with AsyncClient(...)`; `Client` is the blocking twin.
    """

    snapshots: snapshots.SnapshotsClient
    checkpoints: checkpoints.CheckpointsClient
    events: events.EventsClient
    jobs: jobs.JobsClient
    relays: relays.RelaysClient
    threads: threads.ThreadsClient

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
        settings = connection(
            target,
            namespace=namespace,
            timeout=timeout,
            token=token,
            tls=tls,
            root_certificates=root_certificates,
            client_cert=client_cert,
            client_key=client_key,
            credentials=credentials,
            channel_options=channel_options,
        )
        if settings.credentials is None:
            channel = grpc.aio.insecure_channel(settings.target, options=settings.channel_options)
        else:
            channel = grpc.aio.secure_channel(
                settings.target, settings.credentials, options=settings.channel_options
            )
        self._attach(channel, settings.call_options)

    @classmethod
    def from_channel(
        cls,
        channel: grpc.aio.Channel,
        *,
        namespace: str = "default",
        timeout: float | None = 10.0,
        token: Token | None = None,
    ) -> AsyncClient:
        """A client calling over `channel`, a channel you built (interceptors, options
        of your own); closing the client closes it."""
        client = cls.__new__(cls)
        client._attach(channel, call_options(namespace=namespace, timeout=timeout, token=token))
        return client

    def _attach(self, channel: grpc.aio.Channel, options: CallOptions) -> None:
        self._channel = channel
        self.namespace = options.namespace
        self.snapshots = snapshots.SnapshotsClient(channel, options)
        self.checkpoints = checkpoints.CheckpointsClient(channel, options)
        self.events = events.EventsClient(channel, options)
        self.jobs = jobs.JobsClient(channel, options)
        self.relays = relays.RelaysClient(channel, options)
        self.threads = threads.ThreadsClient(channel, options)

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
