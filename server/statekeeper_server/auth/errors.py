"""The errors access control reports, with their ErrorInfo reasons.

UNAUTHENTICATED says the call's credentials are missing or unusable, never
whether a token of that value exists; PERMISSION_DENIED says which
namespace and role the call needed.
"""

from __future__ import annotations

import grpc

from statekeeper_server.auth.roles import Role
from statekeeper_server.errors import ServiceError, Unauthenticated
from statekeeper_server.services.context import NAMESPACE_HEADER

UNAUTHENTICATED = "UNAUTHENTICATED"
"""Reason: no credentials, or credentials the server does not accept."""
TOKEN_EXPIRED = "TOKEN_EXPIRED"
"""Reason: the credential's expiry passed (also ends a stream it opened)."""
TOKEN_NOT_YET_VALID = "TOKEN_NOT_YET_VALID"
"""Reason: a JWT whose not-before (or issued-at) lies in the future."""
INVALID_TOKEN = "INVALID_TOKEN"
"""Reason: a JWT that fails verification (signature, issuer, audience, claims)."""
PERMISSION_DENIED = "PERMISSION_DENIED"
"""Reason: the principal lacks the role the call needs in its namespace."""


class PermissionDenied(ServiceError):
    """The caller is known but may not make this call in this namespace."""

    code = grpc.StatusCode.PERMISSION_DENIED


def unauthenticated(message: str) -> Unauthenticated:
    """UNAUTHENTICATED (reason UNAUTHENTICATED) with `message`."""
    return Unauthenticated(UNAUTHENTICATED, message)


def token_expired(what: str) -> Unauthenticated:
    """UNAUTHENTICATED (reason TOKEN_EXPIRED): `what` (such as "the token") expired."""
    return Unauthenticated(
        TOKEN_EXPIRED, f"{what} expired; call again with a valid one (streams can resume)"
    )


def invalid_token(why: str) -> Unauthenticated:
    """UNAUTHENTICATED (reason INVALID_TOKEN): the JWT is refused because `why`."""
    return Unauthenticated(INVALID_TOKEN, f"the JWT is not accepted: {why}")


def permission_denied(namespace: str, role: Role) -> PermissionDenied:
    """PERMISSION_DENIED naming the namespace and the role the call needs."""
    return PermissionDenied(
        PERMISSION_DENIED,
        f"this call needs the {role.label} role in namespace '{namespace}', which the"
        f" caller's credentials do not grant (the {NAMESPACE_HEADER} header names the namespace)",
        namespace=namespace,
        required_role=role.label,
    )


def no_call_allowed() -> PermissionDenied:
    """PERMISSION_DENIED for credentials that grant only capabilities (`*:metrics`)."""
    return PermissionDenied(
        PERMISSION_DENIED,
        "the caller's credentials grant no role, only capabilities such as *:metrics"
        " (scraping /metrics on the HTTP side port); gRPC calls need a role such as acme:read",
    )


def capability_denied(label: str) -> PermissionDenied:
    """PERMISSION_DENIED for credentials without the capability `label` (or *:admin)."""
    return PermissionDenied(
        PERMISSION_DENIED,
        f"this needs the permission *:{label} (or *:admin), which the credentials do not grant",
        required_role=label,
    )
