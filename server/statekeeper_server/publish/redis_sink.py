"""A sink appending to Redis Streams with XADD; the command's reply is the
acknowledgement.

redis-py's asyncio client opens connections on demand and replaces a broken
one on the next command, so the sink needs no reconnect logic of its own.
A reply error (a key holding another type, a server out of memory it keeps)
is a rejection; a connection failure, a timeout or a server that says to
try again is unavailability.

`publish_many` sends a page of messages as one script (`XADD_ALL`): Redis
runs it atomically and stops at the first refused XADD, so one round trip
appends the messages in order and the stream never holds a later message
without the earlier ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from statekeeper_server.publish.messages import Format, Outgoing
from statekeeper_server.publish.sinks import SinkRejected, SinkSpec, SinkUnavailable

RETRYABLE_REPLIES = ("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY", "OOM", "NOSCRIPT")
"""Error replies of a Redis that will take the same command later."""
FIELDS_PER_MESSAGE = 7
"""namespace, run_id, seq, event_id, kind, content_type and data."""
XADD_ALL = """
local maxlen = ARGV[1]
for i = 1, #KEYS do
  local command = {'XADD', KEYS[i]}
  if maxlen ~= '' then
    command[#command + 1] = 'MAXLEN'
    command[#command + 1] = '~'
    command[#command + 1] = maxlen
  end
  command[#command + 1] = '*'
  local base = 1 + (i - 1) * 14
  for j = 1, 14 do
    command[#command + 1] = ARGV[base + j]
  end
  local reply = redis.pcall(unpack(command))
  if type(reply) == 'table' and reply.err then
    return {i - 1, reply.err}
  end
end
return {#KEYS, ''}
"""
"""XADD every message (KEYS: their streams; ARGV: the MAXLEN or '', then 14 field names
and values per message) until one is refused; {appended, the refusal or ''}."""


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
        self._xadd_all = self._client.register_script(XADD_ALL)

    async def publish(self, message: Outgoing) -> None:
        """XADD the message's fields and body (field `data`) to its stream."""
        await self.publish_many([message])

    async def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """XADD the messages in order, in one script run (see the module)."""
        if not messages:
            return
        maxlen = "" if self._spec.maxlen is None else str(self._spec.maxlen)
        arguments: list[str | bytes] = [maxlen]
        for message in messages:
            for key, value in message.fields().items():
                arguments += [key, value]
            arguments += ["data", message.body]
        keys = [self._spec.template.render(message) for message in messages]
        try:
            appended, refusal = await self._xadd_all(keys=keys, args=arguments)
        except redis_errors.ResponseError as exc:
            raise self._refused(str(exc), 0) from None
        except (redis_errors.RedisError, OSError) as exc:
            raise SinkUnavailable(
                self.name, f"cannot reach {self._spec.safe_url}: {exc or 'the connection failed'}"
            ) from None
        if int(appended) < len(messages):
            text = refusal.decode() if isinstance(refusal, bytes) else str(refusal)
            raise self._refused(text, int(appended))

    def _refused(self, text: str, acked: int) -> SinkUnavailable | SinkRejected:
        if text.startswith(RETRYABLE_REPLIES):
            return SinkUnavailable(self.name, text, acked)
        return SinkRejected(self.name, f"Redis refused the message: {text}", acked)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
