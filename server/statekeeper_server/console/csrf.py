"""CSRF tokens of the console's forms: one random secret per console, and a
token per form bound to it; checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets


class Csrf:
    """Issues and checks the token every POST form of the console carries."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def token(self, session: str) -> str:
        """The token of forms shown to `session` (a cookie value, or "" without one)."""
        return hmac.new(self._key, session.encode(), hashlib.sha256).hexdigest()

    def valid(self, session: str, token: str) -> bool:
        """True when `token` is the one issued to `session` (constant time)."""
        return hmac.compare_digest(self.token(session), token)
