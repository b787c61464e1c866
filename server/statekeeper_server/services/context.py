"""What every servicer reads from the call itself."""

from __future__ import annotations

from typing import Any

import grpc

from statekeeper_server.errors import InvalidArgument
from statekeeper_server.validation import require_id

NAMESPACE_HEADER = "x-statekeeper-namespace"
DEFAULT_NAMESPACE = "default"


def request_namespace(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The call's namespace from its metadata; `default` when absent.

    The header may appear once: with several values, a proxy checking one of
    them and the server using another would disagree about the tenant, so
    that is INVALID_ARGUMENT.
    """
    values = [
        value for key, value in context.invocation_metadata() or () if key == NAMESPACE_HEADER
    ]
    if not values:
        return DEFAULT_NAMESPACE
    if len(values) > 1:
        raise InvalidArgument(NAMESPACE_HEADER, "must be sent once, not several times")
    return require_id(str(values[0]), NAMESPACE_HEADER)
