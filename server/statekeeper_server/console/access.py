"""What a console visitor's token lets them see and do, decided by the server's own
access control: the same credential sources, the same role table read from the
protos and the same `Principal.allows` the auth layer checks every call with.

The console only uses these answers to choose what to show (the namespace
switcher, the action buttons); every call is still made with the visitor's
token and checked by the API, so a page that shows too much can never let a
token do more than it may.
"""

from __future__ import annotations

from dataclasses import dataclass

from statekeeper_server.auth.control import AccessControl
from statekeeper_server.auth.credentials import Credentials, PeerIdentity
from statekeeper_server.auth.errors import PermissionDenied
from statekeeper_server.auth.permissions import ANY_NAMESPACE, Principal
from statekeeper_server.auth.roles import Role, role_table
from statekeeper_server.errors import Unauthenticated

RETRY_JOB = "/statekeeper.v1.JobService/RetryJob"
CANCEL_JOB = "/statekeeper.v1.JobService/CancelJob"


@dataclass(frozen=True)
class Namespaces:
    """The namespaces a visitor may read: `listed` by name, and whether any other one
    may be typed (`any`: no access control, or a `*` permission)."""

    listed: tuple[str, ...]
    any: bool


def _no_client_certificate() -> PeerIdentity:
    return {}


class ConsoleAccess:
    """Answers, for a visitor's token, what the API would allow (None: no access control)."""

    def __init__(self, control: AccessControl | None) -> None:
        self._control = control

    def _principal(self, token: str | None) -> Principal | None:
        """The principal the token proves; None when it proves none (unknown, expired)."""
        assert self._control is not None
        try:
            return self._control.credentials.authenticate(
                Credentials(token, _no_client_certificate)
            )
        except (Unauthenticated, PermissionDenied):
            return None

    def may(self, token: str | None, namespace: str, method: str) -> bool:
        """Whether a call of `method` (a gRPC path) with `token` in `namespace` would
        pass the auth layer; always True without access control."""
        if self._control is None:
            return True
        principal = self._principal(token)
        return principal is not None and principal.allows(namespace, role_table()[method])

    def namespaces(self, token: str | None) -> Namespaces:
        """The namespaces `token` may read, for the namespace switcher."""
        if self._control is None:
            return Namespaces((), any=True)
        principal = self._principal(token)
        if principal is None:
            return Namespaces((), any=False)
        named = {permission.namespace for permission in principal.permissions}
        readable = {namespace for namespace in named if principal.allows(namespace, Role.READ)}
        return Namespaces(tuple(sorted(readable - {ANY_NAMESPACE})), any=ANY_NAMESPACE in readable)
