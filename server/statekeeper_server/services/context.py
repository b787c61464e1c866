"""What every servicer reads from the call itself."""

from __future__ import annotations

from typing import Any

import grpc

from statekeeper_server.validation import require_id

NAMESPACE_HEADER = "x-statekeeper-namespace"
DEFAULT_NAMESPACE = "default"


def request_namespace(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The call's namespace from its metadata; `default` when absent."""
    for key, value in context.invocation_metadata() or ():
        if key == NAMESPACE_HEADER:
            return require_id(str(value), NAMESPACE_HEADER)
    return DEFAULT_NAMESPACE
