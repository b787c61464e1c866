"""A sink publishing to NATS JetStream, acknowledged by the stream.

The connection is made on the first publish and re-made by nats-py after a
disconnection (it keeps trying for ever); a publish made while the server
is away waits for the acknowledgement at most the sink's timeout and then
counts as unavailable. `Nats-Msg-Id` is the event id, so a message
published twice within the stream's duplicate window is stored once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from statekeeper_server.publish.messages import Format, Outgoing
from statekeeper_server.publish.sinks import SinkRejected, SinkSpec, SinkUnavailable
from statekeeper_server.stores import FailureLog

log = logging.getLogger(__name__)
_failures = FailureLog(log)
RECONNECT_WAIT = 0.5
"""Seconds between two attempts to reach a NATS server that went away."""
UNAVAILABLE_STATUS = 503


class NatsSink:
    """Sink on NATS JetStream (see the module)."""

    def __init__(self, spec: SinkSpec) -> None:
        self.name = spec.name
        self.format: Format = spec.format
        self._spec = spec
        self._client: Client | None = None
        self._stream: JetStreamContext | None = None
        self._connecting = asyncio.Lock()

    async def publish(self, message: Outgoing) -> None:
        """Publish to the message's subject and wait for the stream's acknowledgement."""
        stream = await self._jetstream()
        headers = {"Nats-Msg-Id": message.event_id, **message.fields()}
        headers["Content-Type"] = message.content_type
        try:
            await stream.publish(
                self._spec.template.render(message),
                message.body,
                timeout=self._spec.timeout,
                headers=headers,
            )
        except nats.errors.MaxPayloadError:
            raise SinkRejected(self.name, "the message is larger than the server accepts") from None
        except nats.js.errors.APIError as exc:
            if exc.code == UNAVAILABLE_STATUS:
                raise SinkUnavailable(
                    self.name, f"JetStream is unavailable: {exc.description}"
                ) from None
            raise SinkRejected(
                self.name, f"JetStream refused the message: {exc.description}"
            ) from None
        except (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError):
            raise SinkUnavailable(self.name, "no JetStream stream takes this subject") from None
        except (asyncio.TimeoutError, nats.errors.Error, OSError) as exc:
            raise SinkUnavailable(self.name, _describe(exc)) from None

    async def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Publish one message at a time, each once the one before is acknowledged (so a
        stream never holds a later one without an earlier one)."""
        for acked, message in enumerate(messages):
            try:
                await self.publish(message)
            except (SinkUnavailable, SinkRejected) as exc:
                exc.acked = acked
                raise

    async def _jetstream(self) -> JetStreamContext:
        async with self._connecting:
            if self._client is not None and self._client.is_closed:
                self._client = self._stream = None
            if self._stream is None:
                try:
                    self._client = await nats.connect(
                        self._spec.url,
                        connect_timeout=self._spec.timeout,
                        allow_reconnect=True,
                        max_reconnect_attempts=-1,
                        reconnect_time_wait=RECONNECT_WAIT,
                        error_cb=self._on_error,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                    )
                except (asyncio.TimeoutError, nats.errors.Error, OSError) as exc:
                    raise SinkUnavailable(
                        self.name, f"cannot connect to {self._spec.safe_url}: {_describe(exc)}"
                    ) from None
                self._stream = self._client.jetstream()
            return self._stream

    async def _on_error(self, exc: Exception) -> None:
        _failures.report(f"sink {self.name}", _describe(exc))

    async def _on_disconnected(self) -> None:
        log.warning("sink %s: disconnected from %s", self.name, self._spec.safe_url)

    async def _on_reconnected(self) -> None:
        log.info("sink %s: connected again to %s", self.name, self._spec.safe_url)

    async def close(self) -> None:
        """Close the connection, if one was made."""
        client, self._client, self._stream = self._client, None, None
        if client is not None and not client.is_closed:
            await client.close()


def _describe(exc: BaseException) -> str:
    """A short description of a client error (its text, else what kind of failure)."""
    if isinstance(exc, (asyncio.TimeoutError, nats.errors.TimeoutError)):
        return "no acknowledgement in time"
    return str(exc) or "the connection failed"
