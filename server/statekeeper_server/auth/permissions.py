"""Principals and their permissions: a namespace (or `*`) and a role each.

A permission is written `namespace:role`, such as `acme:write` or
`*:read`. A principal holds a set of them; it may make a call when one of
them names the call's namespace (or `*`) with the required role or a
higher one. A capability (`*:metrics`) is a permission over the server
itself: it grants no call, only what asks for that capability (scraping
`/metrics`); `*:admin` includes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from statekeeper_server.auth.roles import Capability, Role, parse_grant
from statekeeper_server.validation import is_id

ANY_NAMESPACE = "*"


@dataclass(frozen=True, slots=True)
class Permission:
    """A role in one namespace, or in every namespace (`*`); or a capability (`*` only)."""

    namespace: str
    role: Role | Capability

    @classmethod
    def parse(cls, text: str) -> Permission:
        """`acme:write` (or `*:metrics`) as a Permission; ValueError saying what is wrong
        otherwise."""
        namespace, sep, role = text.strip().rpartition(":")
        if not sep or not (namespace == ANY_NAMESPACE or is_id(namespace)):
            raise ValueError(f"permission {text!r} must be NAMESPACE:ROLE, such as acme:write")
        grant = parse_grant(role)
        if isinstance(grant, Capability) and namespace != ANY_NAMESPACE:
            raise ValueError(
                f"permission {text!r}: {grant.label} is about the whole server, not a"
                f" namespace; write {ANY_NAMESPACE}:{grant.label}"
            )
        return cls(namespace, grant)

    def grants(self, namespace: str, role: Role) -> bool:
        """Whether this permission allows `role` in `namespace` (a capability never does)."""
        return (
            isinstance(self.role, Role)
            and self.namespace in (namespace, ANY_NAMESPACE)
            and self.role >= role
        )

    def grants_capability(self, capability: Capability) -> bool:
        """Whether this permission is `capability` itself or `*:admin`."""
        return self.role is capability or (
            self.namespace == ANY_NAMESPACE and self.role is Role.ADMIN
        )

    def __str__(self) -> str:
        return f"{self.namespace}:{self.role.label}"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who makes a call: a name (for logs) and what it may do.

    `expires_at` is a Unix time after which its credential is no longer
    valid (None: it does not expire).
    """

    name: str
    permissions: frozenset[Permission]
    expires_at: float | None = None
    sole_namespace: str | None = field(init=False, repr=False, compare=False)
    """The namespace of a principal whose roles all name the same one (not `*`):
    calls may then leave the namespace header out. None otherwise. Capabilities
    do not count: they name no namespace."""

    def __post_init__(self) -> None:
        # Worked out once: it is read on every call a principal makes.
        namespaces = {
            permission.namespace
            for permission in self.permissions
            if isinstance(permission.role, Role)
        }
        sole = None
        if len(namespaces) == 1 and ANY_NAMESPACE not in namespaces:
            sole = next(iter(namespaces))
        object.__setattr__(self, "sole_namespace", sole)

    @classmethod
    def of(
        cls, name: str, permissions: Iterable[str], expires_at: float | None = None
    ) -> Principal:
        """A principal from permissions written as text."""
        return cls(name, frozenset(Permission.parse(p) for p in permissions), expires_at)

    def allows(self, namespace: str, role: Role) -> bool:
        """Whether any permission allows `role` in `namespace`."""
        return any(permission.grants(namespace, role) for permission in self.permissions)

    @property
    def has_roles(self) -> bool:
        """Whether any permission is a role (so some gRPC call may be allowed), not only
        capabilities."""
        return any(isinstance(permission.role, Role) for permission in self.permissions)

    def holds(self, capability: Capability) -> bool:
        """Whether any permission grants `capability` (itself or `*:admin`)."""
        return any(permission.grants_capability(capability) for permission in self.permissions)
