"""The differences between two JSON values, as the paths that were added,
removed or changed (RFC 6901 JSON Pointers) with their old and new values.

Pure: no I/O, no protobuf. Objects are compared key by key (in key order),
arrays index by index (a longer array adds its extra indices, a shorter one
removes them), and any other pair of values is one change when they differ.
`true` and `1` differ (JSON types are compared, not Python equality), while
`1` and `1.0` are the same number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["added", "removed", "changed"]


@dataclass(frozen=True)
class Change:
    """One difference: at `path`, `old` (unless added) became `new` (unless removed)."""

    kind: Kind
    path: str
    old: Any = None
    new: Any = None


def pointer(tokens: Sequence[str | int]) -> str:
    """The JSON Pointer of `tokens` ("" for the whole value), `~` and `/` escaped."""
    return "".join("/" + str(token).replace("~", "~0").replace("/", "~1") for token in tokens)


def diff(old: Any, new: Any) -> list[Change]:
    """Every change that turns `old` into `new`, in document order; empty when equal.

    Applying the changes to `old` (removals of an array from its end) yields `new`.
    """
    changes: list[Change] = []
    _diff(old, new, [], changes)
    return changes


def _diff(old: Any, new: Any, path: list[str | int], out: list[Change]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            path.append(key)
            if key not in new:
                out.append(Change("removed", pointer(path), old=old[key]))
            elif key not in old:
                out.append(Change("added", pointer(path), new=new[key]))
            else:
                _diff(old[key], new[key], path, out)
            path.pop()
    elif isinstance(old, list) and isinstance(new, list):
        for index in range(max(len(old), len(new))):
            path.append(index)
            if index >= len(new):
                out.append(Change("removed", pointer(path), old=old[index]))
            elif index >= len(old):
                out.append(Change("added", pointer(path), new=new[index]))
            else:
                _diff(old[index], new[index], path, out)
            path.pop()
    elif not _same(old, new):
        out.append(Change("changed", pointer(path), old=old, new=new))


def _same(old: Any, new: Any) -> bool:
    """Whether two values that are not both objects nor both arrays are equal JSON."""
    return _json_type(old) == _json_type(new) and old == new


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__
