"""A sink appending to Redis Streams with XADD; the command's reply is the
acknowledgement.

redis-py's asyncio client opens connections on demand and replaces a broken
one on the next command, so the sink needs no reconnect logic of its own.
A reply error (a key holding another type, an out-of-memory server) is a
rejection; a connection failure or a timeout is unavailability.
"""

from __future__ import annotations

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from statekeeper_server.publish.messages import Format, Outgoing
from statekeeper_server.publish.sinks import SinkRejected, SinkSpec, SinkUnavailable

RETRYABLE_REPLIES = ("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY", "OOM")
"""Error replies of a Redis that will take the same command later."""


class RedisSink:
    """Sink on Redis Streams (see the module)."""

    def __init__(self, spec: SinkSpec) -> None:
        self.name = spec.name
        self.format: Format = spec.format
        self._spec = spec
        self._client: Redis = Redis.from_url(
            spec.url,
            socket_timeout=spec.timeout,
            socket_connect_timeout=spec.timeout,
            retry_on_timeout=False,
        )

    async def publish(self, message: Outgoing) -> None:
        """XADD the message's fields and body (field `data`) to its stream."""
        fields: dict[str | bytes, str | bytes] = {
            key: value for key, value in message.fields().items()
        }
        fields["data"] = message.body
        try:
            await self._client.xadd(
                self._spec.template.render(message),
                fields,  # type: ignore[arg-type]  # redis-py accepts str and bytes values
                maxlen=self._spec.maxlen,
                approximate=True,
            )
        except redis_errors.ResponseError as exc:
            text = str(exc)
            if text.startswith(RETRYABLE_REPLIES):
                raise SinkUnavailable(self.name, text) from None
            raise SinkRejected(self.name, f"Redis refused the message: {text}") from None
        except (redis_errors.RedisError, OSError) as exc:
            raise SinkUnavailable(
                self.name, f"cannot reach {self._spec.safe_url}: {exc or 'the connection failed'}"
            ) from None

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
