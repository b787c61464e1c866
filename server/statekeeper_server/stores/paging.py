"""Opaque page tokens shared by every list call and every backend.

A token records where the previous page ended and the filters it was made
for; a token used with other filters, or one that was altered, is
INVALID_ARGUMENT on `page_token`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from statekeeper_server.errors import InvalidArgument


def encode_page_token(position: Any, filters: Mapping[str, Any]) -> str:
    """A token that resumes after `position` under `filters`."""
    raw = json.dumps({"p": position, "f": dict(filters)}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, filters: Mapping[str, Any]) -> Any:
    """The position stored in `token`, or None for an empty token."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        position, made_for = data["p"], data["f"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidArgument("page_token", "is not a token returned by this call") from None
    if made_for != dict(filters):
        raise InvalidArgument("page_token", "was issued for other filters")
    return position
