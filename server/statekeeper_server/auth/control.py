"""Access control as the settings configure it: its sources, its files, its call layer.

`AccessControl.load(settings)` reads every configured file (tokens, JWT
keys, certificate permissions) and returns None when none is configured:
the server then runs without an auth layer at all, exactly as fast as
before. `reload()` re-reads the files (SIGHUP); `watch_files()` re-reads
each when it changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from statekeeper_server.auth.audit import AuditLog
from statekeeper_server.auth.credentials import (
    AUTHORIZATION_HEADER,
    Authenticator,
    CredentialChain,
    Credentials,
    PeerIdentity,
    bearer_token,
)
from statekeeper_server.auth.errors import PermissionDenied, capability_denied
from statekeeper_server.auth.files import WatchedFile
from statekeeper_server.auth.interceptor import AuthLayer, Gate
from statekeeper_server.auth.jwt_tokens import JwtAuthenticator, JwtRules, read_verification_keys
from statekeeper_server.auth.mtls import CertificateAuthenticator, read_certificate_permissions
from statekeeper_server.auth.permissions import Principal
from statekeeper_server.auth.roles import Capability
from statekeeper_server.auth.tokens import StaticTokens, read_tokens_file
from statekeeper_server.config import Settings
from statekeeper_server.errors import Unauthenticated

log = logging.getLogger("statekeeper.auth")


class AccessControl:
    """The authenticators the settings configure, and the files they are read from."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.audit = AuditLog()
        self.files: list[WatchedFile[Any]] = []
        sources: list[Authenticator] = []
        accepted: list[str] = []
        if settings.auth_tokens_file:
            tokens = StaticTokens()
            sources.append(tokens)
            self.files.append(
                WatchedFile(
                    "--auth-tokens-file",
                    Path(settings.auth_tokens_file),
                    read_tokens_file,
                    tokens.replace,
                    lambda entries: _count(len(entries), "token"),
                )
            )
        if settings.auth_jwt_keys:
            rules = JwtRules(
                issuer=settings.auth_jwt_issuer or None,
                audience=settings.auth_jwt_audience or None,
                claim=settings.auth_jwt_claim,
                leeway=settings.auth_jwt_leeway,
            )
            jwts = JwtAuthenticator((), rules)
            sources.append(jwts)
            self.files.append(
                WatchedFile(
                    "--auth-jwt-keys",
                    Path(settings.auth_jwt_keys),
                    read_verification_keys,
                    jwts.replace_keys,
                    lambda keys: _count(len(keys), "key"),
                )
            )
        if sources:
            accepted.append("send `authorization: Bearer <token>`")
        if settings.auth_mtls_permissions:
            certificates = CertificateAuthenticator()
            sources.append(certificates)
            accepted.append("present a client certificate the server maps to permissions")
            self.files.append(
                WatchedFile(
                    "--auth-mtls-permissions",
                    Path(settings.auth_mtls_permissions),
                    read_certificate_permissions,
                    certificates.replace,
                    lambda mapping: _count(len(mapping), "certificate name"),
                )
            )
        self.credentials = CredentialChain(sources, " or ".join(accepted))

    @classmethod
    async def load(cls, settings: Settings) -> AccessControl | None:
        """The access control the settings configure, its files read; None without any.

        Raises AuthFileError naming the flag, the file and what is wrong.
        """
        if not settings.auth_enabled:
            return None
        control = cls(settings)
        for file in control.files:
            await file.load()
        return control

    def layer(self) -> AuthLayer:
        """The call layer enforcing this access control."""
        return AuthLayer(
            Gate(self.credentials, self.audit),
            self.audit,
            reflection_open=self.settings.reflection == "open",
        )

    def authorize(
        self, authorization: Sequence[str], capability: Capability, what: str, peer: str
    ) -> Principal:
        """The principal whose bearer token (the values of the request's Authorization
        headers) grants `capability`, for a request outside gRPC (`what`, such as
        `GET /metrics`, from `peer`).

        Raises Unauthenticated (no token, or one no source accepts) or
        PermissionDenied (a valid token without the capability); both are
        audited. There is no TLS client certificate here: only bearer tokens
        (static or JWT) can prove a principal.
        """
        principal: Principal | None = None
        try:
            metadata = [(AUTHORIZATION_HEADER, value) for value in authorization]
            principal = self.credentials.authenticate(
                Credentials(bearer_token(metadata), _no_client_certificate)
            )
            if not principal.holds(capability):
                raise capability_denied(capability.label)
        except (Unauthenticated, PermissionDenied) as error:
            name = None if principal is None else principal.name
            self.audit.denied(what, error, name, None, peer)
            raise
        return principal

    async def reload(self) -> None:
        """Re-read every file; one that cannot be used is logged and the version in
        force stays."""
        for file in self.files:
            await file.reload()

    async def watch_files(self) -> None:
        """Re-read each file when it changes (checked every `auth_reload_interval`).

        Nothing a check raises ends the watch.
        """
        while True:
            await asyncio.sleep(self.settings.auth_reload_interval)
            for file in self.files:
                try:
                    await file.reload_if_changed()
                except Exception:
                    log.exception("checking %s %s for changes failed", file.flag, file.path)


def _no_client_certificate() -> PeerIdentity:
    return {}


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}{'' if number == 1 else 's'}"
