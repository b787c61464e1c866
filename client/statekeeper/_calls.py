"""What every family's client shares: per-call options and the retry policy."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

NAMESPACE_HEADER = "x-statekeeper-namespace"


@dataclass(frozen=True)
class CallOptions:
    """Metadata and deadline sent with every call of one client."""

    metadata: tuple[tuple[str, str], ...]
    timeout: float | None


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
