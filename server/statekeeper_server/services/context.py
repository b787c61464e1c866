"""What every servicer reads from the call itself: the namespace it acts in, and
who is calling (for the access log).

Without access control the namespace is the `x-statekeeper-namespace`
header, `default` when absent. With access control the auth layer
resolves it once, before the call is admitted (a principal with a single
namespace may leave the header out), and records it for the call;
`request_namespace` then returns exactly what was checked. The auth layer
also records the principal it authenticated (`admit_principal`).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

import grpc

from statekeeper_server.errors import InvalidArgument
from statekeeper_server.validation import require_id

NAMESPACE_HEADER = "x-statekeeper-namespace"
DEFAULT_NAMESPACE = "default"

Metadata = Iterable[tuple[str, str | bytes]]
"""A call's invocation metadata: (key, value) pairs, keys in lower case."""

_checked_namespace: ContextVar[str | None] = ContextVar("statekeeper_namespace", default=None)
"""The namespace the auth layer admitted the current call to (gRPC runs each
call in its own task, so the value never leaks from one call into another)."""

_principal: ContextVar[str] = ContextVar("statekeeper_principal", default="")
"""The name of the principal the auth layer authenticated for the current call."""


def namespace_from_metadata(metadata: Metadata, sole_namespace: str | None = None) -> str:
    """The namespace a call names: its header, else `sole_namespace`, else `default`.

    The header may appear once: with several values, a proxy checking one of
    them and the server using another would disagree about the tenant, so
    that is INVALID_ARGUMENT, as is a value that is not a valid id.
    """
    found: str | bytes | None = None
    for key, value in metadata:
        if key == NAMESPACE_HEADER:
            if found is not None:
                raise InvalidArgument(NAMESPACE_HEADER, "must be sent once, not several times")
            found = value
    if found is None:
        return sole_namespace or DEFAULT_NAMESPACE
    return require_id(str(found), NAMESPACE_HEADER)


def admit_namespace(namespace: str) -> None:
    """Record the namespace the current call was admitted to (by the auth layer)."""
    _checked_namespace.set(namespace)


def admit_principal(name: str) -> None:
    """Record who the current call was authenticated as (by the auth layer)."""
    _principal.set(name)


def call_principal() -> str:
    """The principal the current call was authenticated as; "" when none was."""
    return _principal.get()


def admitted_namespace() -> str | None:
    """The namespace the auth layer admitted the current call to, if it did."""
    return _checked_namespace.get()


def request_namespace(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The call's namespace: the one access control admitted it to, or else its header
    (`default` when absent)."""
    namespace = _checked_namespace.get()
    if namespace is not None:
        return namespace
    return namespace_from_metadata(context.invocation_metadata() or ())
