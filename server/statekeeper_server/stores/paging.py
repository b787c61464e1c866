"""Opaque page tokens shared by every list call and every backend.

A token records where the previous page ended (an integer position or a
string key) and a short digest of the filters it was made for. Decoding
checks everything a caller could have altered before anything else reads
it: the token's length, its encoding, its shape, the type and range of the
position and the digest. A token that fails any check, or one made for
other filters or by another call, is INVALID_ARGUMENT on `page_token`;
decoding never raises anything else.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import overload

from statekeeper_server.errors import InvalidArgument
from statekeeper_server.limits import MAX_PAGE_TOKEN_LENGTH

MAX_POSITION = 2**63 - 1
"""Largest integer position (the widest integer of every database)."""
MAX_POSITION_LENGTH = 128
"""Longest string position: the longest id a listing can be ordered by."""
DIGEST_BYTES = 8

Position = int | str


def filters_digest(filters: Mapping[str, object]) -> str:
    """A short digest of `filters` (equal filters, equal digests), whatever their size."""
    canonical = json.dumps(dict(filters), separators=(",", ":"), sort_keys=True)
    digest = hashlib.blake2b(canonical.encode(), digest_size=DIGEST_BYTES).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def encode_page_token(position: Position, filters: Mapping[str, object]) -> str:
    """A token that resumes after `position` under `filters`."""
    raw = json.dumps(
        {"p": position, "f": filters_digest(filters)}, separators=(",", ":"), sort_keys=True
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@overload
def decode_page_token(
    token: str, filters: Mapping[str, object], position_type: type[int]
) -> int | None: ...


@overload
def decode_page_token(
    token: str, filters: Mapping[str, object], position_type: type[str]
) -> str | None: ...


def decode_page_token(
    token: str, filters: Mapping[str, object], position_type: type[int] | type[str]
) -> Position | None:
    """The position stored in `token` (None for an empty token).

    The position must be of `position_type`: an int in 0..MAX_POSITION, or
    a str of at most MAX_POSITION_LENGTH characters. Raises InvalidArgument
    on `page_token` for a token longer than MAX_PAGE_TOKEN_LENGTH, one that
    does not parse, holds anything else, or was made for other filters.
    """
    if not token:
        return None
    if len(token) > MAX_PAGE_TOKEN_LENGTH:
        raise InvalidArgument("page_token", f"must be at most {MAX_PAGE_TOKEN_LENGTH} characters")
    data = _parse(token)
    if not isinstance(data, dict) or data.keys() != {"p", "f"}:
        raise _not_ours()
    position = data["p"]
    if type(position) is not position_type or not _in_range(position):
        raise _not_ours()
    if data["f"] != filters_digest(filters):
        raise InvalidArgument("page_token", "was issued for other filters")
    return position


def _parse(token: str) -> object:
    """The JSON value inside `token`; InvalidArgument if it is not one."""
    try:
        padded = token + "=" * (-len(token) % 4)
        raw = base64.urlsafe_b64decode(padded.encode("ascii"))
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError, TypeError, OverflowError):
        # binascii.Error, UnicodeError and JSONDecodeError are all ValueErrors.
        raise _not_ours() from None


def _in_range(position: object) -> bool:
    if isinstance(position, int):
        return 0 <= position <= MAX_POSITION
    return isinstance(position, str) and len(position) <= MAX_POSITION_LENGTH


def _not_ours() -> InvalidArgument:
    return InvalidArgument("page_token", "is not a token returned by this call")
