"""Validation of request fields shared by every servicer.

Every function raises `InvalidArgument` naming the field, so a caller always
learns which part of its request is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from statekeeper_server.errors import InvalidArgument

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
ID_RULE = "must be 1-128 characters of [A-Za-z0-9._:@-], starting with a letter or digit"


def is_id(value: str) -> bool:
    """Whether `value` is a valid id (see ID_RULE); a path like `../x` never is."""
    return ID_PATTERN.fullmatch(value) is not None


def require_id(value: str, field: str) -> str:
    """Return `value` if it is a valid id."""
    if not value:
        raise InvalidArgument(field, "is required")
    if not is_id(value):
        raise InvalidArgument(field, ID_RULE)
    return value


def optional_id(value: str, field: str) -> str:
    """Return `value` if it is empty or a valid id."""
    return require_id(value, field) if value else value


def page_size(value: int, field: str = "page_size", *, default: int, maximum: int) -> int:
    """Normalise a page size: 0 means `default`, above `maximum` is lowered."""
    if value < 0:
        raise InvalidArgument(field, "must not be negative")
    if value == 0:
        return default
    return min(value, maximum)


def enum_value(value: int, field: str, defined: Collection[int], *, required: bool) -> int:
    """Return `value` if it is one of the enum's `defined` values.

    UNSPECIFIED (0) passes only when the field is not `required`.
    """
    if value == 0 and required:
        raise InvalidArgument(field, "is required")
    if value not in defined:
        raise InvalidArgument(field, f"unknown value {value}")
    return value


def require_non_negative(value: int, field: str) -> int:
    """Return `value` if it is >= 0."""
    if value < 0:
        raise InvalidArgument(field, "must not be negative")
    return value


def require_text(value: str, field: str, *, max_length: int) -> str:
    """Return `value` if it is non-empty and at most `max_length` characters."""
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > max_length:
        raise InvalidArgument(field, f"must be at most {max_length} characters")
    return value


def clip_utf8(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` bytes of UTF-8, never inside a character."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode(errors="ignore")
