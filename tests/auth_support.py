"""Credentials for access-control tests, made on the spot: tokens files, signing keys, JWTs.

    tokens = write_tokens(tmp_path / "tokens.toml", {"ci": ["acme:write"]})
    async with running_app(store_url, auth_tokens_file=str(tmp_path / "tokens.toml")) as app:
        await stub.LoadSnapshot(request, metadata=call_metadata(tokens["ci"], "acme"))

    key = SigningKey.rsa("k1")
    write_jwks(tmp_path / "jwks.json", [key])
    token = key.sign(claims(["acme:read"]))

Every call of the suite's services is listed in CALLS with whether it streams,
so a test can make each of them with an empty request.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from statekeeper_server.auth.roles import Role, method_path, role_table, services
from statekeeper_server.auth.tokens import new_token, render_entry, token_entry

ISSUER = "https://issuer.example"
AUDIENCE = "statekeeper"

TokenSpec = Sequence[str] | tuple[Sequence[str], datetime.datetime]
"""A token's permissions, optionally with its expiry."""


@dataclass(frozen=True)
class Call:
    """One RPC of the API: its path, the role it needs, whether it streams responses."""

    path: str
    role: Role
    streaming: bool

    @property
    def service(self) -> str:
        """The service's short name (SnapshotService, ...)."""
        return self.path.split("/")[1].rsplit(".", 1)[1]


CALLS = [
    Call(method_path(method), role_table()[method_path(method)], method.server_streaming)
    for service in services()
    for method in service.methods
]


def write_tokens(path: Path, specs: Mapping[str, TokenSpec]) -> dict[str, str]:
    """Write a tokens file (TOML, or JSON for a `.json` name) holding a new token for each
    name, as `statekeeper token create` prints entries; the tokens by name."""
    tokens: dict[str, str] = {}
    entries: list[dict[str, Any]] = []
    for name, spec in specs.items():
        if isinstance(spec, tuple):
            permissions, expires = spec
        else:
            permissions, expires = spec, None
        tokens[name] = new_token()
        entries.append(token_entry(name, tokens[name], list(permissions), expires))
    if path.suffix == ".json":
        text = json.dumps({"tokens": [json.loads(render_entry(e, "json")) for e in entries]})
    else:
        text = "\n\n".join(render_entry(entry, "toml") for entry in entries) + "\n"
    path.write_text(text)
    return tokens


def call_metadata(token: str | None = None, namespace: str | None = None) -> tuple[Any, ...]:
    """Metadata carrying `authorization: Bearer <token>` and the namespace header."""
    metadata: list[tuple[str, str]] = []
    if token is not None:
        metadata.append(("authorization", f"Bearer {token}"))
    if namespace is not None:
        metadata.append(("x-statekeeper-namespace", namespace))
    return tuple(metadata)


async def make_call(
    channel: grpc.aio.Channel, call: Call, metadata: tuple[Any, ...], request: bytes = b""
) -> None:
    """Make `call` with `request` (raw bytes); for a stream, read its first message."""
    if call.streaming:
        stream: Any = channel.unary_stream(call.path)(request, metadata=metadata, timeout=10)  # type: ignore[arg-type]
        async for _ in stream:
            break
        stream.cancel()
    else:
        await channel.unary_unary(call.path)(request, metadata=metadata, timeout=10)  # type: ignore[arg-type]


@dataclass
class SigningKey:
    """A private key that signs JWTs, with its algorithm and key id."""

    private: Any
    algorithm: str
    kid: str | None = None
    _jwk_algorithm: Any = field(default=None, repr=False)

    @classmethod
    def rsa(cls, kid: str | None = None) -> SigningKey:
        """An RSA 2048 key signing RS256."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(key, "RS256", kid, RSAAlgorithm)

    @classmethod
    def ec(cls, kid: str | None = None) -> SigningKey:
        """A P-256 key signing ES256."""
        return cls(ec.generate_private_key(ec.SECP256R1()), "ES256", kid, ECAlgorithm)

    @classmethod
    def ed25519(cls, kid: str | None = None) -> SigningKey:
        """An Ed25519 key signing EdDSA."""
        return cls(ed25519.Ed25519PrivateKey.generate(), "EdDSA", kid, OKPAlgorithm)

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK (with `kid` and `alg` when it has a kid)."""
        public: dict[str, Any] = json.loads(self._jwk_algorithm.to_jwk(self.private.public_key()))
        if self.kid is not None:
            public.update(kid=self.kid, alg=self.algorithm, use="sig")
        return public

    def public_pem(self) -> bytes:
        """The public key, PEM."""
        pem: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem

    def sign(self, payload: Mapping[str, Any], **header: Any) -> str:
        """A JWT of `payload`, signed by this key (its kid in the header)."""
        headers = {"kid": self.kid} if self.kid is not None else {}
        headers.update(header)
        return jwt.encode(dict(payload), self.private, algorithm=self.algorithm, headers=headers)


def write_jwks(path: Path, keys: Sequence[SigningKey]) -> Path:
    """Write the public keys as a JWKS file; its path."""
    path.write_text(json.dumps({"keys": [key.jwk() for key in keys]}))
    return path


def claims(
    permissions: Any = ("acme:write",),
    *,
    lifetime: float = 300,
    issuer: str | None = ISSUER,
    audience: str | None = AUDIENCE,
    subject: str = "agent-1",
    **extra: Any,
) -> dict[str, Any]:
    """JWT claims valid now for `lifetime` seconds, granting `permissions` (a list is
    sent as a list; anything else as it is, to make malformed claims)."""
    now = int(time.time())
    payload: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + int(lifetime)}
    if isinstance(permissions, tuple):
        permissions = list(permissions)
    if permissions is not None:
        payload["permissions"] = permissions
    if issuer is not None:
        payload["iss"] = issuer
    if audience is not None:
        payload["aud"] = audience
    payload.update(extra)
    return payload
