"""Client certificates as principals: a file maps certificate names to permissions.

On a mutual-TLS port (`--tls-client-ca`) every client presents a
certificate the CA signed; `--auth-mtls-permissions` names a TOML (or, for
a `.json` name, JSON) file mapping names to permission lists:

    "worker.acme.internal" = ["acme:write"]
    "spiffe://acme/dashboard" = ["acme:read", "globex:read"]

A name matches the certificate's subject common name or any of its subject
alternative names (DNS, URI, e-mail, IP). A certificate whose names map to
nothing is UNAUTHENTICATED; one whose names map several entries holds all
their permissions. Its principal expires with the certificate, so a
stream opened with it ends then.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509

from statekeeper_server.auth.credentials import Credentials, PeerIdentity
from statekeeper_server.auth.errors import unauthenticated
from statekeeper_server.auth.files import read_document
from statekeeper_server.auth.permissions import Permission, Principal

COMMON_NAME = "x509_common_name"
ALTERNATIVE_NAMES = "x509_subject_alternative_name"
PEM_CERTIFICATE = "x509_pem_cert"
NAME_KEYS = (COMMON_NAME, ALTERNATIVE_NAMES)
"""Where gRPC's auth context holds the names a certificate is matched by, CN first."""
MAX_REMEMBERED_CERTIFICATES = 10_000
"""Most client certificates whose principal is remembered at once."""

CertificatePermissions = Mapping[str, frozenset[Permission]]
"""Certificate name -> the permissions it grants."""


class CertificateAuthenticator:
    """Authenticates calls without a bearer token by their TLS client certificate."""

    def __init__(self, permissions: CertificatePermissions | None = None) -> None:
        self._permissions: CertificatePermissions = dict(permissions or {})
        self._principals: dict[bytes, Principal] = {}

    def replace(self, permissions: CertificatePermissions) -> None:
        """Put a new mapping in force for every call from now on."""
        self._permissions = dict(permissions)
        self._principals.clear()

    def authenticate(self, credentials: Credentials) -> Principal | None:
        """The principal of the client certificate; None without one (or when the call
        also sends a bearer token, which decides alone); UNAUTHENTICATED when no name of
        the certificate is mapped."""
        if credentials.bearer_token is not None:
            return None
        peer = credentials.peer()
        pem = _first(peer, PEM_CERTIFICATE)
        if pem is not None:
            known = self._principals.get(pem)
            if known is not None:
                return known
        names = [_text(value) for key in NAME_KEYS for value in peer.get(key, ())]
        if pem is None and not names:
            return None
        principal = self._principal(names, pem)
        if pem is not None:
            if len(self._principals) >= MAX_REMEMBERED_CERTIFICATES:
                self._principals.clear()
            self._principals[pem] = principal
        return principal

    def _principal(self, names: list[str], pem: bytes | None) -> Principal:
        matched = [name for name in dict.fromkeys(names) if name in self._permissions]
        if not matched:
            raise unauthenticated("the client certificate is not granted any permissions")
        permissions = frozenset().union(*(self._permissions[name] for name in matched))
        return Principal(f"cert:{matched[0]}", permissions, _not_after(pem))


def read_certificate_permissions(path: Path) -> dict[str, frozenset[Permission]]:
    """The mapping of a certificate permissions file; ValueError naming the entry at fault."""
    return parse_certificate_permissions(read_document(path))


def parse_certificate_permissions(document: Any) -> dict[str, frozenset[Permission]]:
    """Certificate name -> permissions, from a parsed file."""
    if not isinstance(document, dict):
        raise ValueError('must map certificate names to permission lists: "name" = ["acme:read"]')
    mapping: dict[str, frozenset[Permission]] = {}
    for name, granted in document.items():
        if not name:
            raise ValueError("a certificate name must not be empty")
        if not isinstance(granted, list) or not all(isinstance(p, str) for p in granted):
            raise ValueError(f'{name!r}: must be a list of permissions such as ["acme:read"]')
        try:
            mapping[name] = frozenset(Permission.parse(permission) for permission in granted)
        except ValueError as exc:
            raise ValueError(f"{name!r}: {exc}") from None
    return mapping


def _first(peer: PeerIdentity, key: str) -> bytes | None:
    first = next(iter(peer.get(key, ())), None)
    return None if first is None else bytes(first)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _not_after(pem: bytes | None) -> float | None:
    """When the certificate stops being valid (Unix time); None if it cannot be read."""
    if pem is None:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    return certificate.not_valid_after_utc.astimezone(datetime.timezone.utc).timestamp()
