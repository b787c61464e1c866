"""What both clients share: the settings of a client, the options of every call, the
retry policy, and the plans of calls that the families build.

A family method is written once, as an *operation*: a plain function that checks
its arguments and returns a plan (`Unary`, `Pages`, `Collected` or `Stream`)
saying which RPC to call with which request and how to read the answer. The
asyncio client (`_aio_calls`) and the blocking one (`_sync_calls`) each carry
plans out in their own way; nothing else differs between them.

A family module (see `snapshots.py`) holds:
- `class SnapshotCalls` with one static operation per method;
- `class SnapshotsClient(_aio_calls.Family)` and
  `class BlockingSnapshotsClient(_sync_calls.Family)`, each naming the
  generated stub (`stub = SnapshotServiceStub`) and listing its methods, one
  line each: `load = aio.unary(SnapshotCalls.load)` and
  `load = sync.unary(SnapshotCalls.load)` (`pages`, `collected` and `stream`
  for the other plans). A method no plan fits (a replay that resumes, a worker
  loop) is written in both classes around a shared helper that holds every
  decision (`events.ReplayCursor`, `jobs.Held`), leaving only the waiting to
  each.
`AsyncClient._attach` and `Client._attach` then add the family; the test of
the twins (tests/test_client_twins.py) fails until both clients have it
with the same methods, arguments and answers.

Retries are the client's own, in `Attempts`, for both clients alike: a plan marked
idempotent is tried again on UNAVAILABLE, with a growing, jittered pause, within
the call's deadline. (gRPC core's retry service config would do the same on a
real channel, but neither a channel given to `from_channel` nor a test channel
carries it; one policy in Python serves every channel.)

When OpenTelemetry is installed (it is not a dependency), every call carries
the caller's current trace context (`traceparent`, `tracestate`, through the
globally configured propagator), so the server's span joins the caller's trace.
"""

from __future__ import annotations

import abc
import functools
import inspect
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, ParamSpec, TypeVar, overload

import grpc
from google.protobuf import message

from statekeeper._credentials import (
    Pem,
    Token,
    authorization,
    channel_credentials,
    resolve_target,
    resolve_token,
)

NAMESPACE_HEADER = "x-statekeeper-namespace"
T = TypeVar("T")
F = TypeVar("F")
P = ParamSpec("P")
R = TypeVar("R")


def _trace_injector() -> Callable[[dict[str, str]], None] | None:
    """OpenTelemetry's `inject` when OpenTelemetry is installed, else None."""
    try:
        from opentelemetry.propagate import inject
    except ImportError:
        return None
    return inject


_inject = _trace_injector()


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """The propagation entries of the current trace context (none without
    OpenTelemetry or outside a span)."""
    if _inject is None:
        return ()
    carrier: dict[str, str] = {}
    _inject(carrier)
    return tuple(carrier.items())


@dataclass(frozen=True)
class RetryPolicy:
    """When and how often a call that is safe to repeat is tried again."""

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})


RETRY = RetryPolicy()


@dataclass(frozen=True)
class CallOptions:
    """The namespace, deadline, token and retry policy of every call of one client."""

    namespace: str
    timeout: float | None
    token: Token | None = None
    retry: RetryPolicy = field(default=RETRY)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata of a call made now: the namespace, with a token the
        `authorization` entry (a callable token is called each time), and the
        current trace context (see the module)."""
        namespace = (NAMESPACE_HEADER, self.namespace)
        if self.token is None:
            return (namespace, *trace_metadata())
        return (namespace, authorization(self.token), *trace_metadata())


class Attempts:
    """The attempts of one call: the time each may take and whether a failure is
    tried again.

    The deadline (`timeout` seconds from now, None for none) covers every
    attempt; a call that is not idempotent is attempted once.
    """

    def __init__(self, options: CallOptions, *, idempotent: bool, extra_timeout: float = 0.0):
        self._policy = options.retry
        self._left = self._policy.max_attempts if idempotent else 1
        self._backoff = self._policy.initial_backoff
        timeout = options.timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout + extra_timeout

    def timeout(self) -> float | None:
        """The seconds the next attempt may take (None: no deadline)."""
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    def pause_after(self, code: grpc.StatusCode) -> float | None:
        """The pause before trying again after a failure with `code`, or None when the
        call fails (not retryable, no attempt left, or no time left for the pause)."""
        self._left -= 1
        if self._left <= 0 or code not in self._policy.codes:
            return None
        pause = random.uniform(0, self._backoff)
        self._backoff = min(self._backoff * self._policy.multiplier, self._policy.max_backoff)
        if self._deadline is not None and time.monotonic() + pause >= self._deadline:
            return None
        return pause


# -- plans: what an operation asks either client to do ------------------------------


@dataclass(frozen=True)
class Unary(Generic[T]):
    """One request, one response: call `method` with `request`, return `unpack(response)`.

    `idempotent` calls are retried on UNAVAILABLE; `extra_timeout` seconds are
    added to the client's deadline (a long poll).
    """

    method: str
    request: message.Message
    unpack: Callable[[Any], T]
    idempotent: bool = False
    extra_timeout: float = 0.0


@dataclass(frozen=True)
class Pages(Generic[T]):
    """A list read page by page: `request(page_token)` for each page, `items(response)`
    of each, until a response's `next_page_token` is empty. Every page is a
    read, retried on UNAVAILABLE; the client yields the items one by one."""

    method: str
    request: Callable[[str], message.Message]
    items: Callable[[Any], Iterable[T]]


@dataclass(frozen=True)
class Collected(Generic[T]):
    """Like `Pages`, but the client returns the items of every page as one list."""

    method: str
    request: Callable[[str], message.Message]
    items: Callable[[Any], Iterable[T]]


@dataclass(frozen=True)
class Stream(Generic[T]):
    """A server stream without deadline: call `method` with `request` and yield
    `items(message)` of every message until the server ends it or the caller stops."""

    method: str
    request: message.Message
    items: Callable[[Any], Iterable[T]]


def whole(response: Any) -> Any:
    """The unpacking of a plan whose answer is the response itself."""
    return response


class FamilyMethod(abc.ABC, Generic[F, P, R]):
    """A method of family class `F` made of an operation taking `P`, answering `R`.

    Each client's module subclasses it once per kind of plan (`unary`,
    `pages`, ...) with the `_bind` that carries the plan out. The method is
    bound once per family object; it shows the operation's name, signature
    and docstring to `help` and `inspect`.
    """

    answer: ClassVar[str] = "{}"
    """The type of the method's answer around the plan's (`{}`), as `help` shows it:
    `Coroutine[Any, Any, {}]`, `Generator[{}, None, None]`, ..."""

    def __init__(self, operation: Callable[P, Any]) -> None:
        self.operation = operation
        self.name = operation.__name__
        self.__doc__ = operation.__doc__
        signature = inspect.signature(operation)
        planned = re.fullmatch(r"\w+\[(.*)\]", str(signature.return_annotation))
        if planned is not None:
            signature = signature.replace(return_annotation=self.answer.format(planned[1]))
        self.signature = signature

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, family: None, owner: type) -> FamilyMethod[F, P, R]: ...

    @overload
    def __get__(self, family: F, owner: type) -> Callable[P, R]: ...

    def __get__(self, family: F | None, owner: type) -> FamilyMethod[F, P, R] | Callable[P, R]:
        if family is None:
            return self
        bound = functools.wraps(self.operation)(self._bind(family))
        bound.__signature__ = self.signature  # type: ignore[attr-defined]
        family.__dict__[self.name] = bound
        return bound

    @abc.abstractmethod
    def _bind(self, family: F) -> Callable[P, R]:
        """The method of `family`: each client's way of making the call."""


# -- the settings of a client ---------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """Where a client connects, how, and what every call carries."""

    target: str
    credentials: grpc.ChannelCredentials | None
    channel_options: tuple[tuple[str, Any], ...]
    call_options: CallOptions


def connection(
    target: str | None,
    *,
    namespace: str,
    timeout: float | None,
    token: Token | None,
    tls: bool,
    root_certificates: Pem | None,
    client_cert: Pem | None,
    client_key: Pem | None,
    credentials: grpc.ChannelCredentials | None,
    channel_options: Sequence[tuple[str, Any]],
) -> Connection:
    """The arguments of a client checked and resolved (see `AsyncClient`): ValueError
    for credentials given twice or a token metadata cannot carry, OSError for a
    certificate file that cannot be read."""
    if credentials is not None and (
        tls or root_certificates is not None or client_cert is not None or client_key is not None
    ):
        raise ValueError("give credentials or the TLS arguments, not both")
    if credentials is None:
        credentials = channel_credentials(
            tls=tls,
            root_certificates=root_certificates,
            client_cert=client_cert,
            client_key=client_key,
        )
    return Connection(
        target=resolve_target(target),
        credentials=credentials,
        channel_options=tuple(channel_options),
        call_options=call_options(namespace=namespace, timeout=timeout, token=token),
    )


def call_options(*, namespace: str, timeout: float | None, token: Token | None) -> CallOptions:
    """The options of every call of a client; a token given as a string that metadata
    cannot carry fails here (ValueError), not at each call."""
    token = resolve_token(token)
    if isinstance(token, str):
        authorization(token)
    return CallOptions(namespace=namespace, timeout=timeout, token=token)
