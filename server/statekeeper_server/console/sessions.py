"""Signed-in visitors of the console when access control is configured.

A session is a random id (the cookie's value) mapped, in this process only, to
the token the visitor gave; the token never leaves the server. Ids are kept
by their SHA-256, so looking one up reveals nothing usable through timing.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict

SESSION_SECONDS = 8 * 3600.0
"""How long a sign-in lasts."""

MAX_SESSIONS = 10_000
"""Most sessions kept; the oldest is dropped beyond it."""


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    """The console's sign-ins: `open` one for a token, `token` of a session id, `close`."""

    def __init__(self) -> None:
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def open(self, token: str) -> str:
        """A new session id for `token`, valid for SESSION_SECONDS."""
        session_id = secrets.token_urlsafe(32)
        self._sessions[_key(session_id)] = (token, time.monotonic() + SESSION_SECONDS)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session_id

    def token(self, session_id: str) -> str | None:
        """The token of a live session, else None (an expired one is forgotten)."""
        if not session_id:
            return None
        key = _key(session_id)
        entry = self._sessions.get(key)
        if entry is None:
            return None
        token, expires = entry
        if time.monotonic() >= expires:
            del self._sessions[key]
            return None
        return token

    def close(self, session_id: str) -> None:
        """Forget a session (sign out); unknown ids are ignored."""
        self._sessions.pop(_key(session_id), None)
