"""What every family's client shares: per-call options and the retry policy."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from statekeeper._credentials import Token, authorization

NAMESPACE_HEADER = "x-statekeeper-namespace"


@dataclass(frozen=True)
class CallOptions:
    """The namespace, deadline and token of every call of one client."""

    namespace: str
    timeout: float | None
    token: Token | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata of a call made now: the namespace and, with a token, the
        `authorization` entry (a callable token is called each time)."""
        namespace = (NAMESPACE_HEADER, self.namespace)
        if self.token is None:
            return (namespace,)
        return (namespace, authorization(self.token))


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
