"""What a call presents to prove who it is, and the one interface every source of
principals implements.

A call proves its identity with a bearer token (`authorization: Bearer
<token>`) or, on a mutual-TLS connection, with its client certificate. The
sources are tried in order (static tokens, then JWT, then the TLS peer);
the first that knows the credentials decides. A source that knows them to
be unusable (expired, a bad signature) raises UNAUTHENTICATED at once; one
that does not know them at all returns None and the next one is asked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from statekeeper_server.auth.errors import unauthenticated
from statekeeper_server.auth.permissions import Principal
from statekeeper_server.services.context import Metadata

AUTHORIZATION_HEADER = "authorization"
BEARER_SCHEME = "bearer"

PeerIdentity = Mapping[str, Iterable[bytes]]
"""A call's TLS peer as gRPC's `context.auth_context()` gives it (`x509_common_name`,
`x509_subject_alternative_name`, `x509_pem_cert`, ...)."""


class Credentials:
    """A call's bearer token (if any), and a way to read its TLS peer's identity."""

    __slots__ = ("_digest", "bearer_token", "peer")

    def __init__(self, bearer_token: str | None, peer: Callable[[], PeerIdentity]) -> None:
        self.bearer_token = bearer_token
        self.peer = peer
        """Reads the TLS peer's identity (only the certificate source calls it)."""
        self._digest: bytes | None = None

    @property
    def token_digest(self) -> bytes:
        """The SHA-256 of the bearer token, computed once per call."""
        if self._digest is None:
            assert self.bearer_token is not None, "no bearer token"
            self._digest = token_digest(self.bearer_token)
        return self._digest


def token_digest(token: str) -> bytes:
    """The SHA-256 digest a tokens file records for `token`."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def bearer_token(metadata: Metadata) -> str | None:
    """The token of the call's `authorization: Bearer <token>` header; None without one.

    UNAUTHENTICATED for a header sent several times or not of the Bearer scheme.
    """
    found: str | bytes | None = None
    for key, value in metadata:
        if key == AUTHORIZATION_HEADER:
            if found is not None:
                raise unauthenticated("send one authorization header, not several")
            found = value
    if found is None:
        return None
    scheme, _, token = str(found).strip().partition(" ")
    token = token.strip()
    if scheme.lower() != BEARER_SCHEME or not token:
        raise unauthenticated("the authorization header must be `Bearer <token>`")
    return token


class Authenticator(Protocol):
    """A source of principals: static tokens, JWTs or client certificates."""

    def authenticate(self, credentials: Credentials) -> Principal | None:
        """The principal the credentials prove, or None if this source does not know
        them; raises Unauthenticated for credentials it knows but refuses."""


class CredentialChain:
    """Asks each source in turn; UNAUTHENTICATED when none knows the credentials."""

    def __init__(self, sources: Sequence[Authenticator], accepted: str) -> None:
        self._sources = tuple(sources)
        self._missing = f"this call needs credentials: {accepted}"

    def authenticate(self, credentials: Credentials) -> Principal:
        """The principal the credentials prove; Unauthenticated otherwise, never saying
        whether a token of that value exists."""
        for source in self._sources:
            principal = source.authenticate(credentials)
            if principal is not None:
                return principal
        if credentials.bearer_token is not None:
            raise unauthenticated("the bearer token is not valid")
        raise unauthenticated(self._missing)
