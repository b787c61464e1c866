"""The blocking client: one channel of gRPC's synchronous API, one attribute per family.

It has the families, methods, arguments and answers of `AsyncClient`; both
are made of the same operations (`statekeeper._calls`), so they never
disagree. It runs no event loop and no thread of its own (`jobs.work`
heartbeats on a thread while it runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from statekeeper import checkpoints, events, jobs, relays, snapshots, threads
from statekeeper._calls import CallOptions, call_options, connection
from statekeeper._credentials import Pem, Token


class Client:
    """A blocking statekeeper client with the methods of `AsyncClient`.

    Every call carries the client's namespace, its token if it has one and,
    unless told otherwise, a deadline of `timeout` seconds. Calls that are
    safe to repeat are retried on UNAVAILABLE within that deadline. Failed
    calls raise `statekeeper.errors.StatekeeperError`. Use as
    `with Client(target) as client: client.snapshots.load("run-1")`.
    """

    snapshots: snapshots.BlockingSnapshotsClient
    checkpoints: checkpoints.BlockingCheckpointsClient
    events: events.BlockingEventsClient
    jobs: jobs.BlockingJobsClient
    relays: relays.BlockingRelaysClient
    threads: threads.BlockingThreadsClient

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
        string, or a function called before each call for a fresh one (on the
        thread making the call: `jobs.work`'s heartbeats call it on theirs);
        else $STATEKEEPER_TOKEN; `""` sends none. It travels in the clear
        without TLS.

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
            channel = grpc.insecure_channel(settings.target, options=settings.channel_options)
        else:
            channel = grpc.secure_channel(
                settings.target, settings.credentials, options=settings.channel_options
            )
        self._attach(channel, settings.call_options)

    @classmethod
    def from_channel(
        cls,
        channel: grpc.Channel,
        *,
        namespace: str = "default",
        timeout: float | None = 10.0,
        token: Token | None = None,
    ) -> Client:
        """A client calling over `channel`, a channel you built (interceptors, options
        of your own); closing the client closes it."""
        client = cls.__new__(cls)
        client._attach(channel, call_options(namespace=namespace, timeout=timeout, token=token))
        return client

    def _attach(self, channel: grpc.Channel, options: CallOptions) -> None:
        self._channel = channel
        self.namespace = options.namespace
        self.snapshots = snapshots.BlockingSnapshotsClient(channel, options)
        self.checkpoints = checkpoints.BlockingCheckpointsClient(channel, options)
        self.events = events.BlockingEventsClient(channel, options)
        self.jobs = jobs.BlockingJobsClient(channel, options)
        self.relays = relays.BlockingRelaysClient(channel, options)
        self.threads = threads.BlockingThreadsClient(channel, options)

    @property
    def channel(self) -> grpc.Channel:
        """The underlying channel (for raw stubs)."""
        return self._channel

    def close(self) -> None:
        """Close the channel; in-flight calls are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
