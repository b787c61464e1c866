"""What every family's client shares: per-call options and the retry policy.

When OpenTelemetry is installed (it is not a dependency), every call carries
the caller's current trace context (`traceparent`, `tracestate`, through the
globally configured propagator), so the server's span joins the caller's trace.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from statekeeper._credentials import Token, authorization

NAMESPACE_HEADER = "x-statekeeper-namespace"


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
class CallOptions:
    """The namespace, deadline and token of every call of one client."""

    namespace: str
    timeout: float | None
    token: Token | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata of a call made now: the namespace, with a token the
        `authorization` entry (a callable token is called each time), and the
        current trace context (see the module)."""
        namespace = (NAMESPACE_HEADER, self.namespace)
        if self.token is None:
            return (namespace, *trace_metadata())
        return (namespace, authorization(self.token), *trace_metadata())


def retry_service_config(idempotent_methods: Iterable[tuple[str, str]]) -> str:
    """A gRPC service config retrying UNAVAILABLE for the given (service, method)s.

    Only calls that are safe to repeat are listed: a retried read or delete
    changes nothing, a retried append with a client event id is deduplicated.
    """
    names = [{"service": service, "method": method} for service, method in idempotent_methods]
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": 5,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )
