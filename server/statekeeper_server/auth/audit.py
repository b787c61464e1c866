"""The audit log: every denied call and every destructive admin call, one line each.

Lines go to the `statekeeper.audit` logger and name the method, the
principal, the namespace and the peer, never a credential. Text a caller
chose (a namespace it asked for, a JWT subject) is quoted as JSON, so it
cannot pose as another field; the log formatter escapes control
characters. Audit lines are written whatever `--log-level` says.
Denials are rate-limited, since anyone can provoke them; a
line says how many were held back before it.
"""

from __future__ import annotations

import json
import logging

from statekeeper_server.errors import ServiceError, clip_text
from statekeeper_server.logs import RateLimit

log = logging.getLogger("statekeeper.audit")
# Audit lines are written whatever --log-level says (they reach the root handlers all the same).
log.setLevel(logging.INFO)

UNKNOWN = "-"


class AuditLog:
    """Writes the audit lines of one server."""

    def __init__(self) -> None:
        self._denials = RateLimit(per_second=20.0, burst=200)

    def denied(
        self,
        method: str,
        error: ServiceError,
        principal: str | None,
        namespace: str | None,
        peer: str,
    ) -> None:
        """A call refused as UNAUTHENTICATED or PERMISSION_DENIED."""
        if not self._denials.allow():
            return
        suppressed = self._denials.take_suppressed()
        log.warning(
            "denied %s %s %s: principal=%s namespace=%s peer=%s%s",
            method,
            error.code.name,
            error.reason,
            _quoted(principal),
            _quoted(namespace),
            peer,
            f" ({suppressed} more denials not logged)" if suppressed else "",
        )

    def admin_call(
        self, method: str, outcome: str, principal: str, namespace: str, peer: str
    ) -> None:
        """A call that needed the admin role (destructive housekeeping), with its outcome:
        OK or the status code it ended with."""
        log.info(
            "admin call %s %s: principal=%s namespace=%s peer=%s",
            method,
            outcome,
            _quoted(principal),
            _quoted(namespace),
            peer,
        )


def _quoted(text: str | None) -> str:
    return UNKNOWN if text is None else json.dumps(clip_text(text))
