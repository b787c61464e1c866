"""Named sinks: where published events go, configured once at start.

A sink is `NAME=URL` (`--sink`, repeatable, or one per line of `--sinks-file`):

- `nats://host:4222?subject=TEMPLATE` publishes to JetStream (default subject
  `statekeeper.{namespace}.{run_id}.{kind}`); the publish waits for the
  stream's acknowledgement;
- `redis://host:6379/0?stream=TEMPLATE&maxlen=N` appends with XADD (default
  key `statekeeper:{namespace}:{run_id}`), trimming with `MAXLEN ~ N` when
  `maxlen` is given (`rediss://` for TLS).

Templates may use {namespace}, {run_id}, {kind} and {type} (the custom
event's type, else the kind). `format=protobuf|json` picks the body's
format (default `--sink-format`). Every problem with a sink's definition
is found when the server starts, as a `SinkConfigError` that says which
sink and what is wrong and never repeats a password.

Connections are made on first use and re-made after a failure by the
sink itself; a sink never takes part in an append, so one that is down
delays only what is published through it.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlsplit, urlunsplit

from statekeeper_server.errors import FailedPrecondition, Unavailable
from statekeeper_server.publish.messages import FORMATS, Format, Outgoing, outgoing
from statekeeper_server.validation import is_id

PLACEHOLDERS = ("namespace", "run_id", "kind", "type")
DEFAULT_NATS_SUBJECT = "statekeeper.{namespace}.{run_id}.{kind}"
DEFAULT_REDIS_STREAM = "statekeeper:{namespace}:{run_id}"
DEFAULT_TIMEOUT = 5.0
"""Seconds a publish waits for the broker's acknowledgement (URL option `timeout`)."""
_SUBJECT_TOKEN = re.compile(r"[^\s.*>]+")
_NOT_IN_TOKEN = re.compile(r"[\s.*>]")


class SinkConfigError(ValueError):
    """A sink definition that cannot be used; the message names the sink."""


class SinkUnavailable(Unavailable):
    """The broker did not acknowledge in time or cannot be reached: try again later.

    `acked` is how many messages of a `publish_many` the broker acknowledged
    before (the first ones, in order).
    """

    def __init__(self, sink: str, detail: str, acked: int = 0) -> None:
        super().__init__("SINK_UNAVAILABLE", f"sink {sink}: {detail}", sink=sink)
        self.acked = acked


class SinkRejected(FailedPrecondition):
    """The broker refused the message and would refuse it again (too large, wrong key
    type...): publishing it once more cannot succeed. `acked` as for SinkUnavailable."""

    def __init__(self, sink: str, detail: str, acked: int = 0) -> None:
        super().__init__("SINK_REJECTED", f"sink {sink}: {detail}", sink=sink)
        self.acked = acked


SinkError = SinkUnavailable | SinkRejected


class Sink(Protocol):
    """A broker connection that publishes messages one at a time."""

    name: str
    format: Format

    async def publish(self, message: Outgoing) -> None:
        """Publish `message` and return once the broker acknowledged it.

        Raises SinkUnavailable when it may succeed later, SinkRejected when
        it never will.
        """

    async def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Publish `messages` in order; return once the broker acknowledged them all.

        The broker never holds a message without every one before it: on a
        failure (raised as by `publish`) its `acked` says how many of the
        first ones it holds.
        """

    async def close(self) -> None:
        """Close the connection, if one was made."""


@dataclass(frozen=True)
class Template:
    """A subject or key template, checked once; `render` fills in a message's values."""

    text: str
    nats_subject: bool

    @classmethod
    def parse(cls, sink: str, text: str, *, nats_subject: bool) -> Template:
        """The template `text` of `sink`; SinkConfigError for an unknown placeholder, a
        broken brace or (for NATS) what cannot be a subject."""
        what = "subject" if nats_subject else "stream"
        try:
            parts = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise SinkConfigError(f"sink {sink}: {what} template {text!r}: {exc}") from None
        for _, name, spec, conversion in parts:
            if name is None:
                continue
            if name not in PLACEHOLDERS or spec or conversion:
                raise SinkConfigError(
                    f"sink {sink}: {what} template {text!r} uses {{{name}}}; placeholders are "
                    + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
                )
        if not text:
            raise SinkConfigError(f"sink {sink}: the {what} template is empty")
        if nats_subject:
            sample = text.format(**dict.fromkeys(PLACEHOLDERS, "x"))
            if not all(_SUBJECT_TOKEN.fullmatch(token) for token in sample.split(".")):
                raise SinkConfigError(
                    f"sink {sink}: subject template {text!r} is not a NATS subject (tokens"
                    " separated by dots, no spaces or wildcards)"
                )
        return cls(text, nats_subject)

    def render(self, message: Outgoing) -> str:
        """The subject or key of `message`. In a NATS subject each value's dots,
        wildcards and spaces become `_`, so a value is always one token."""
        values = {
            "namespace": message.namespace,
            "run_id": message.run_id,
            "kind": message.kind,
            "type": message.type,
        }
        if self.nats_subject:
            values = {key: _NOT_IN_TOKEN.sub("_", value) for key, value in values.items()}
        return self.text.format(**values)


@dataclass(frozen=True)
class SinkSpec:
    """A parsed sink definition: its name, broker URL (without statekeeper's options),
    template, format and options."""

    name: str
    scheme: str
    url: str
    template: Template
    format: Format
    maxlen: int | None
    timeout: float

    @property
    def safe_url(self) -> str:
        """The broker URL without credentials, for logs and messages."""
        return redact(self.url)


def redact(url: str) -> str:
    """`url` with any user and password replaced by `***`."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc="***@" + host))


def parse_sink(definition: str, default_format: Format) -> SinkSpec:
    """`NAME=URL` as a SinkSpec; SinkConfigError saying what is wrong otherwise."""
    name, sep, url = definition.strip().partition("=")
    name = name.strip()
    if not sep or not is_id(name):
        raise SinkConfigError(
            f"sink {redact(definition)!r} must be NAME=URL, such as"
            " events=nats://127.0.0.1:4222 (NAME: letters, digits, ._:@-)"
        )
    url = url.strip()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("nats", "tls", "redis", "rediss"):
        raise SinkConfigError(
            f"sink {name}: URL {redact(url)!r} must start with nats://, tls://, redis:// or"
            " rediss://"
        )
    try:
        port = parts.port
    except ValueError:
        raise SinkConfigError(f"sink {name}: URL {redact(url)!r} has an invalid port") from None
    if not parts.hostname:
        raise SinkConfigError(f"sink {name}: URL {redact(url)!r} names no host")
    del port
    options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    nats = scheme in ("nats", "tls")
    template_key = "subject" if nats else "stream"
    known = {template_key, "format", "timeout", *(() if nats else ("maxlen",))}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SinkConfigError(
            f"sink {name}: unknown option {unknown[0]!r}; options are " + ", ".join(sorted(known))
        )
    template = Template.parse(
        name,
        options.get(template_key, DEFAULT_NATS_SUBJECT if nats else DEFAULT_REDIS_STREAM),
        nats_subject=nats,
    )
    body_format = options.get("format", default_format)
    if body_format not in FORMATS:  # narrows body_format to Format
        raise SinkConfigError(f"sink {name}: format must be protobuf or json")
    maxlen = _number(name, options, "maxlen", int)
    if maxlen is not None and maxlen <= 0:
        raise SinkConfigError(f"sink {name}: maxlen must be a positive number")
    timeout = _number(name, options, "timeout", float)
    if timeout is not None and timeout <= 0:
        raise SinkConfigError(f"sink {name}: timeout must be a positive number of seconds")
    return SinkSpec(
        name=name,
        scheme=scheme,
        url=urlunsplit(parts._replace(query="")),
        template=template,
        format=body_format,
        maxlen=None if maxlen is None else int(maxlen),
        timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
    )


def _number(name: str, options: Mapping[str, str], key: str, kind: type[float]) -> float | None:
    if key not in options:
        return None
    try:
        return kind(options[key])
    except ValueError:
        raise SinkConfigError(f"sink {name}: {key} must be a number") from None


def read_sinks_file(path: str) -> list[str]:
    """The definitions of a sinks file: one `NAME=URL` per line, `#` starts a comment."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SinkConfigError(f"cannot read --sinks-file {path}: {exc.strerror}") from None
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def parse_sinks(definitions: Iterable[str], default_format: Format) -> dict[str, SinkSpec]:
    """Every definition parsed, by name; SinkConfigError for a bad one or a name used twice."""
    specs: dict[str, SinkSpec] = {}
    for definition in definitions:
        spec = parse_sink(definition, default_format)
        if spec.name in specs:
            raise SinkConfigError(f"sink {spec.name} is defined twice")
        specs[spec.name] = spec
    return specs


def open_sink(spec: SinkSpec) -> Sink:
    """The sink of `spec`, not connected yet (it connects on its first publish)."""
    if spec.scheme in ("nats", "tls"):
        from statekeeper_server.publish.nats_sink import NatsSink

        return NatsSink(spec)
    from statekeeper_server.publish.redis_sink import RedisSink

    return RedisSink(spec)


class Sinks:
    """The server's sinks by name, each connected on first use."""

    def __init__(self, specs: Mapping[str, SinkSpec]) -> None:
        self.specs = dict(specs)
        self._open: dict[str, Sink] = {}

    @classmethod
    def from_settings(
        cls, definitions: Iterable[str], sinks_file: str, default_format: Format
    ) -> Sinks:
        """The sinks of `--sink` flags and the `--sinks-file`; SinkConfigError if one is
        wrong or its broker's client library is not installed."""
        lines = [*definitions, *(read_sinks_file(sinks_file) if sinks_file else [])]
        specs = parse_sinks(lines, default_format)
        for spec in specs.values():
            _require_client(spec)
        return cls(specs)

    def names(self) -> list[str]:
        """The configured sink names, sorted."""
        return sorted(self.specs)

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def get(self, name: str) -> Sink:
        """The sink called `name` (KeyError if none is configured)."""
        sink = self._open.get(name)
        if sink is None:
            sink = self._open[name] = open_sink(self.specs[name])
        return sink

    async def publish(self, name: str, namespace: str, envelope: bytes) -> Outgoing:
        """Publish the serialized `EventEnvelope` of `namespace` through sink `name`, in
        its format; the message once the broker acknowledged it (see `Sink.publish`)."""
        sink = self.get(name)
        message = outgoing(namespace, envelope, sink.format)
        await sink.publish(message)
        return message

    async def close(self) -> None:
        """Close every connection made."""
        sinks, self._open = list(self._open.values()), {}
        for sink in sinks:
            await sink.close()


def _require_client(spec: SinkSpec) -> None:
    module = "nats" if spec.scheme in ("nats", "tls") else "redis"
    try:
        __import__(module)
    except ImportError:
        raise SinkConfigError(
            f"sink {spec.name} needs the {module} client: pip install 'statekeeper[publish]'"
        ) from None
