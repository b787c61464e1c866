"""JWT bearer tokens: signed by a configured key, their permissions in a claim.

`--auth-jwt-keys` names a JWKS file (`{"keys": [...]}`) or a file of PEM
public keys or certificates; RS256 (RSA, 2048 bits or more), ES256 (P-256)
and EdDSA (Ed25519, Ed448) are accepted, and each key verifies only tokens
of its own algorithm. A token must carry `exp`, and `iss` / `aud` when the
server is told them; expiry and not-before are checked with a small
leeway. Its permissions are the claim `--auth-jwt-claim` (default
`permissions`): a list of strings such as `acme:write` or `*:read`, as
Temporal's default claim mapper reads them.

Verification is PyJWT's. A verified token is remembered (by its SHA-256)
until it expires, so a caller sending the same token on every call pays
for its signature once.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from statekeeper_server.auth.credentials import Credentials
from statekeeper_server.auth.errors import (
    TOKEN_NOT_YET_VALID,
    invalid_token,
    token_expired,
)
from statekeeper_server.auth.permissions import Permission, Principal
from statekeeper_server.errors import Unauthenticated, clip_text

ALGORITHMS = ("RS256", "ES256", "EdDSA")
"""The signature algorithms accepted."""
MIN_RSA_BITS = 2048
MAX_CACHED_TOKENS = 10_000
"""Most verified tokens remembered at once."""
PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.S)

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key that verifies JWTs of one algorithm, with its key id if it has one."""

    key: PublicKey
    algorithm: str
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class JwtRules:
    """What a JWT must satisfy besides its signature."""

    issuer: str | None
    audience: str | None
    claim: str
    leeway: float


class JwtAuthenticator:
    """Authenticates bearer tokens that are JWTs signed by one of the configured keys."""

    def __init__(self, keys: Sequence[VerificationKey], rules: JwtRules) -> None:
        self._keys = tuple(keys)
        self._rules = rules
        self._verified: dict[bytes, Principal] = {}

    def replace_keys(self, keys: Sequence[VerificationKey]) -> None:
        """Put a new set of keys in force; tokens verified by the old ones are forgotten."""
        self._keys = tuple(keys)
        self._verified.clear()

    def authenticate(self, credentials: Credentials) -> Principal | None:
        """The principal of a valid JWT; None for a bearer token that is not a JWT."""
        token = credentials.bearer_token
        if token is None or token.count(".") != 2:
            return None
        digest = credentials.token_digest
        now = time.time()
        principal = self._verified.get(digest)
        if principal is not None:
            assert principal.expires_at is not None
            if now < principal.expires_at:
                return principal
            del self._verified[digest]
        principal = self._verify(token)
        self._remember(digest, principal, now)
        return principal

    def _remember(self, digest: bytes, principal: Principal, now: float) -> None:
        if len(self._verified) >= MAX_CACHED_TOKENS:
            for key, known in list(self._verified.items()):
                if known.expires_at is not None and known.expires_at <= now:
                    del self._verified[key]
            while len(self._verified) >= MAX_CACHED_TOKENS:
                del self._verified[next(iter(self._verified))]
        self._verified[digest] = principal

    def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise invalid_token("it is not a well-formed JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise invalid_token(f"it must be signed with {', '.join(ALGORITHMS)}")
        candidates = self._candidates(algorithm, header.get("kid"))
        if not candidates:
            raise invalid_token("none of the server's keys signs tokens like it")
        for candidate in candidates:
            try:
                claims = self._decode(token, candidate)
            except jwt.InvalidSignatureError:
                continue
            return self._principal(claims)
        raise invalid_token("its signature does not match the server's keys")

    def _candidates(self, algorithm: str, key_id: object) -> list[VerificationKey]:
        """The keys that may have signed a token: its algorithm's, and of its key id
        when the token names one that a key carries."""
        keys = [key for key in self._keys if key.algorithm == algorithm]
        if isinstance(key_id, str):
            named = [key for key in keys if key.key_id == key_id]
            return named or [key for key in keys if key.key_id is None]
        return keys

    def _decode(self, token: str, key: VerificationKey) -> dict[str, Any]:
        rules = self._rules
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                issuer=rules.issuer,
                audience=rules.audience,
                leeway=rules.leeway,
                options={"require": ["exp"]},
            )
        except jwt.InvalidSignatureError:
            raise
        except jwt.ExpiredSignatureError:
            raise token_expired("the JWT") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated(
                TOKEN_NOT_YET_VALID,
                "the JWT is not valid yet: its not-before (nbf) or issued-at (iat) time is"
                " in the future",
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise invalid_token(f"it has no {exc.claim!r} claim") from None
        except jwt.InvalidIssuerError:
            raise invalid_token("its issuer (iss) is not the one the server accepts") from None
        except jwt.InvalidAudienceError:
            raise invalid_token("its audience (aud) does not name this server") from None
        except jwt.InvalidTokenError:
            raise invalid_token("it is not a well-formed JWT") from None
        return claims

    def _principal(self, claims: dict[str, Any]) -> Principal:
        claim = self._rules.claim
        granted = claims.get(claim)
        if granted is None:
            raise invalid_token(f"it has no {claim!r} claim")
        malformed = invalid_token(
            f"its {claim!r} claim must be a list of NAMESPACE:ROLE strings such as acme:write"
        )
        if not isinstance(granted, list) or not all(isinstance(p, str) for p in granted):
            raise malformed
        try:
            permissions = frozenset(Permission.parse(permission) for permission in granted)
        except ValueError:
            raise malformed from None
        subject = claims.get("sub")
        name = f"jwt:{clip_text(subject)}" if isinstance(subject, str) and subject else "jwt"
        return Principal(name, permissions, float(claims["exp"]) + self._rules.leeway)


# -- keys -------------------------------------------------------------------------------


def read_verification_keys(path: Path) -> tuple[VerificationKey, ...]:
    """The keys of a JWKS file (JSON) or of a file of PEM public keys or certificates.

    ValueError saying what is wrong (blocking I/O: call off the event loop).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or exc})") from None
    if data.lstrip().startswith(b"{"):
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"is not valid JSON ({exc})") from None
        return jwks_keys(document)
    return pem_keys(data)


def jwks_keys(document: Any) -> tuple[VerificationKey, ...]:
    """The usable keys of a JWKS document (a single JWK is accepted too).

    Keys for encryption (`use: enc`) and keys of other algorithms are left
    out; a malformed key, a symmetric key or a set without any usable key is
    a ValueError.
    """
    if isinstance(document, dict) and "keys" in document:
        members = document["keys"]
    elif isinstance(document, dict) and "kty" in document:
        members = [document]
    else:
        raise ValueError('must be a JWKS ({"keys": [...]}) or PEM public keys')
    if not isinstance(members, list):
        raise ValueError("`keys` must be a list of JWKs")
    keys: list[VerificationKey] = []
    for index, member in enumerate(members):
        where = f"keys[{index}]"
        if not isinstance(member, dict):
            raise ValueError(f"{where} must be a JWK object")
        if member.get("kty") == "oct":
            raise ValueError(f"{where} is a symmetric (oct) key; only public keys are accepted")
        if "d" in member:
            raise ValueError(f"{where} is a private key; give only the public key")
        if member.get("use", "sig") != "sig":
            continue
        algorithm = member.get("alg")
        if algorithm is not None and algorithm not in ALGORITHMS:
            continue
        try:
            jwk = jwt.PyJWK(member)
        except jwt.PyJWTError as exc:
            raise ValueError(f"{where} is not a usable key ({_first_line(exc)})") from None
        try:
            verification = _verification_key(jwk.key, jwk.key_id)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if algorithm is not None and verification.algorithm != algorithm:
            raise ValueError(f"{where} is marked {algorithm} but is not a key of that algorithm")
        keys.append(verification)
    if not keys:
        raise ValueError(f"holds no key for {', '.join(ALGORITHMS)} signatures")
    return tuple(keys)


def pem_keys(data: bytes) -> tuple[VerificationKey, ...]:
    """The keys of PEM `PUBLIC KEY`, `RSA PUBLIC KEY` and `CERTIFICATE` blocks."""
    keys: list[VerificationKey] = []
    for index, match in enumerate(PEM_BLOCK.finditer(data)):
        kind = match.group(1).decode()
        where = f"PEM block {index + 1} ({kind})"
        if "PRIVATE" in kind:
            raise ValueError(f"{where} is a private key; give only the public key")
        try:
            if kind == "CERTIFICATE":
                key: Any = x509.load_pem_x509_certificate(match.group(0)).public_key()
            elif kind in ("PUBLIC KEY", "RSA PUBLIC KEY"):
                key = serialization.load_pem_public_key(match.group(0))
            else:
                raise ValueError(f"{where} is neither a public key nor a certificate")
            keys.append(_verification_key(key, None))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if not keys:
        raise ValueError("holds no PEM public key or certificate (nor a JWKS)")
    return tuple(keys)


def _verification_key(key: Any, key_id: str | None) -> VerificationKey:
    """The key with the one algorithm it verifies; ValueError for other kinds of key."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"an RSA key must have at least {MIN_RSA_BITS} bits")
        return VerificationKey(key, "RS256", key_id)
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("an EC key must be on curve P-256 (ES256)")
        return VerificationKey(key, "ES256", key_id)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return VerificationKey(key, "EdDSA", key_id)
    raise ValueError("the key is not RSA, EC P-256, Ed25519 or Ed448")


def _first_line(exc: Exception) -> str:
    return str(exc).split("\n", 1)[0][:200]
