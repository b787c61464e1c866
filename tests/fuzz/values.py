"""Values the generator and the mutations draw from: plausible ones and hostile ones.

Everything takes a `random.Random`, so a value is a function of its seed.
Plausible text goes through `hygiene.scrub`, so an error message quoting it
never looks like a leak.
"""

from __future__ import annotations

import base64
import json
import math
import string
from random import Random
from typing import Any

from tests.fuzz.hygiene import leaks, scrub

JSON = Any
"""A JSON-like Python value: dict, list, str, float, bool or None."""

ID_FIRST = string.ascii_letters + string.digits
ID_REST = ID_FIRST + "._:@-"
_WORD_TEXT = (
    "alpha beta gamma delta tool call model turn step plan search fetch write read "
    "summary user agent node edge retry answer draft final memory context budget"
)
WORDS = tuple(_WORD_TEXT.split())

INJECTED_LOG_LINE = "FZ-INJECTED-LOG-LINE"
"""Marker that caller text puts after a newline; seen at the start of a log line,
it proves the server let caller text forge a line of its log."""

INT32 = (0, 1, -1, 2**31 - 1, -(2**31), 2**15)
INT64 = (0, 1, -1, 2**63 - 1, -(2**63), 2**53 + 1, 2**31, -(2**31) - 1, 10**18)
UINT32 = (0, 1, 2**32 - 1, 2**31, 2**31 - 1)
UINT64 = (0, 1, 2**63 - 1, 2**63, 2**64 - 1, 2**53 + 1, 2**32, 10**19)
DOUBLES = (0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 2.0**63)
NON_FINITE = (math.nan, math.inf, -math.inf)

MIN_TIMESTAMP = -62_135_596_800
"""0001-01-01T00:00:00Z, the earliest Timestamp protobuf allows."""
MAX_TIMESTAMP = 253_402_300_799
"""9999-12-31T23:59:59Z, the latest Timestamp protobuf allows."""
MAX_DURATION = 315_576_000_000
"""About 10,000 years, the longest Duration protobuf allows."""
TIMESTAMP_SECONDS = (
    MIN_TIMESTAMP,
    MAX_TIMESTAMP,
    MIN_TIMESTAMP - 1,
    MAX_TIMESTAMP + 1,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**53,
)
DURATION_SECONDS = (
    0,
    -1,
    MAX_DURATION,
    MAX_DURATION + 1,
    -MAX_DURATION,
    -MAX_DURATION - 1,
    2**63 - 1,
    -(2**63),
    86_400 * 366,
)
NANOS = (0, -1, 999_999_999, 1_000_000_000, 2**31 - 1, -(2**31), -999_999_999)

LOG_BREAKERS: tuple[str, ...] = (
    "run\x00id",
    "line one\n" + INJECTED_LOG_LINE + " ERROR forged",
    "\r\n" + INJECTED_LOG_LINE,
    "\x1b[31mred\x1b[0m\x1b[2J",
    "\x1b]0;title\x07",
    "".join(chr(c) for c in range(1, 32)),
    "\x7f\x80\x9f",
)
"""Text that would corrupt a log it reached raw: newlines forging lines, terminal escapes."""
HOSTILE_STRINGS: tuple[str, ...] = (
    *LOG_BREAKERS,
    "",
    " ",
    "\x00",
    "tab\there",
    "\u202eevil\u202c",
    "\ufeffbom",
    "\u2028sep\u2029",
    "e\u0301\u0301\u0301",
    "\U0001f600" * 40,
    "../../secret/passwd",
    "a/../../b",
    "%s%s%n%x",
    "{0}{1}",
    "' OR '1'='1",
    '"; DROP --',
    "NaN",
    "Infinity",
    "-0",
    "ß" * 129,
    "a" * 128,
    "a" * 129,
    "-starts-with-dash",
    ".dot",
    "x" * 4097,
    "ﬀ",
)


assert not any(leaks(text) for text in HOSTILE_STRINGS), "a hostile string looks like a leak"


def fresh_id(rng: Random) -> str:
    """A valid id: `[A-Za-z0-9][A-Za-z0-9._:@-]*`, mostly short, sometimes 128 long."""
    roll = rng.random()
    length = rng.randint(1, 12) if roll < 0.95 else rng.choice((1, 64, 127, 128))
    first = rng.choice(ID_FIRST)
    rest = "".join(rng.choice(ID_REST) for _ in range(length - 1))
    return scrub(first + rest)


def plain_text(rng: Random, max_words: int = 4) -> str:
    """A few plain words."""
    return scrub(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words))))


def json_key(rng: Random) -> str:
    """A plausible object key."""
    return scrub(rng.choice(WORDS) + ("" if rng.random() < 0.6 else str(rng.randint(0, 99))))


def json_scalar(rng: Random) -> JSON:
    """A plausible JSON leaf."""
    roll = rng.random()
    if roll < 0.35:
        return plain_text(rng)
    if roll < 0.65:
        return float(rng.randint(-1000, 1000))
    if roll < 0.8:
        return rng.random() * 100
    if roll < 0.92:
        return rng.random() < 0.5
    return None


def plausible_json(rng: Random, depth: int = 3) -> dict[str, JSON]:
    """A small JSON object, at most `depth` levels deep."""
    return {json_key(rng): _plausible_value(rng, depth - 1) for _ in range(rng.randint(0, 4))}


def _plausible_value(rng: Random, depth: int) -> JSON:
    roll = rng.random()
    if depth <= 0 or roll < 0.6:
        return json_scalar(rng)
    if roll < 0.8:
        return plausible_json(rng, depth)
    return [_plausible_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]


def plausible_value(rng: Random) -> JSON:
    """Any plausible JSON value (for a `google.protobuf.Value` field)."""
    return _plausible_value(rng, 3)


def deep_json(rng: Random, depth: int) -> JSON:
    """A value nested `depth` levels (`{"a": 1}` is 1 deep): objects only, or mixed with lists.

    Objects only is the deepest in protobuf terms (three message levels per
    level of JSON, against two for a list).
    """
    value: JSON = json_scalar(rng)
    lists = 0.0 if rng.random() < 0.7 else 0.4
    for _ in range(depth):
        value = [value] if rng.random() < lists else {json_key(rng): value}
    return value


def json_depth(value: JSON) -> int:
    """Nesting of objects and lists in `value`: `{"a": 1}` is 1, `{"a": [1]}` 2."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            stack.extend((inner, depth + 1) for inner in item.values())
            deepest = max(deepest, depth + 1)
        elif isinstance(item, list):
            stack.extend((inner, depth + 1) for inner in item)
            deepest = max(deepest, depth + 1)
    return deepest


def wide_json(rng: Random) -> dict[str, JSON]:
    """An object with very many keys, or very long ones."""
    roll = rng.random()
    if roll < 0.5:
        count = rng.choice((33, 100, 999, 1000, 1001, 2500, 5000))
        return {f"k{index}": json_scalar(rng) for index in range(count)}
    if roll < 0.8:
        length = rng.choice((257, 4096, 65_536, 1_000_000))
        return {"k" * length: 1.0, json_key(rng): json_scalar(rng)}
    return {rng.choice(HOSTILE_STRINGS): json_scalar(rng) for _ in range(rng.randint(1, 8))}


def with_non_finite(rng: Random, value: JSON) -> JSON:
    """`value` with one number (or a new key) replaced by NaN or an infinity."""
    bad = rng.choice(NON_FINITE)
    if isinstance(value, dict):
        if value and rng.random() < 0.7:
            key = rng.choice(sorted(value))
            return {**value, key: with_non_finite(rng, value[key])}
        return {**value, json_key(rng): bad}
    if isinstance(value, list):
        if value and rng.random() < 0.7:
            index = rng.randrange(len(value))
            return [*value[:index], with_non_finite(rng, value[index]), *value[index + 1 :]]
        return [*value, bad]
    return bad


def with_nested(rng: Random, value: JSON, inner: JSON) -> JSON:
    """`value` with `inner` placed somewhere inside it (a random existing branch)."""
    if isinstance(value, dict) and value and rng.random() < 0.6:
        key = rng.choice(sorted(value))
        return {**value, key: with_nested(rng, value[key], inner)}
    if isinstance(value, dict):
        return {**value, json_key(rng): inner}
    if isinstance(value, list) and value and rng.random() < 0.6:
        index = rng.randrange(len(value))
        return [*value[:index], with_nested(rng, value[index], inner), *value[index + 1 :]]
    return inner


def with_key(rng: Random, value: JSON, key: str, item: JSON) -> JSON:
    """`value` with `key: item` added to one of its objects (the outermost, half the time)."""
    if isinstance(value, dict):
        nested = [name for name in sorted(value) if isinstance(value[name], dict | list)]
        if nested and rng.random() < 0.5:
            name = rng.choice(nested)
            return {**value, name: with_key(rng, value[name], key, item)}
        return {**value, key: item}
    if isinstance(value, list):
        nested_items = [i for i, inner in enumerate(value) if isinstance(inner, dict | list)]
        if nested_items:
            index = rng.choice(nested_items)
            updated = with_key(rng, value[index], key, item)
            return [*value[:index], updated, *value[index + 1 :]]
        return [*value, {key: item}]
    return {key: item}


def hostile_string(rng: Random) -> str:
    """A string meant to break parsers, logs or limits."""
    roll = rng.random()
    if roll < 0.7:
        return rng.choice(HOSTILE_STRINGS)
    if roll < 0.85:
        return "a" * rng.choice((256, 257, 4096, 65_537, 1_048_577))
    if roll < 0.87:
        # Around the largest request accepted (4 MiB by default): just under, just over.
        return "a" * rng.choice((4 * 1024 * 1024 - 2048, 4 * 1024 * 1024 + 65_536))
    return scrub("".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(1, 40))))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def nested_json_text(depth: int) -> str:
    """JSON text nested `depth` lists deep."""
    return "[" * depth + "]" * depth


def forged_token(rng: Random, real: str | None, foreign: str | None) -> tuple[str, str, bool]:
    """A page token no server issued, how it was made, and whether it was made from `real`.

    `real` is a token this call returned earlier (its filters are kept, so
    sent with the request that earned it the forged position is reached),
    `foreign` one another call returned.
    """
    decoded = decode_token(real) if real else None
    roll = rng.random()
    if decoded is not None and roll < 0.6:
        bad_position = rng.choice(
            (
                '"a string"',
                "[1, 2, 3]",
                "[]",
                "{}",
                "1e999",
                "-1e999",
                "NaN",
                str(10**30),
                str(2**63),
                str(-(2**63) - 1),
                "-1",
                "null",
                "true",
                "1.5",
                '"' + "x" * 400 + '"',
                nested_json_text(rng.choice((50, 150, 1000, 5000))),
            )
        )
        position = decoded.get("p")
        if isinstance(position, list) and position and rng.random() < 0.5:
            parts = [json.dumps(part) for part in position]
            parts[rng.randrange(len(parts))] = bad_position
            bad_position = "[" + ",".join(parts) + "]"
        filters = json.dumps(decoded.get("f"), separators=(",", ":"))
        forged = _b64(f'{{"f":{filters},"p":{bad_position}}}'.encode())
        return forged, "position " + bad_position[:40], True
    if foreign and roll < 0.7:
        return foreign, "another call's token", False
    choice = rng.randrange(7)
    if choice == 0:
        return _b64(rng.randbytes(rng.randint(1, 300))), "random base64", False
    if choice == 1:
        depth = rng.choice((150, 1000, 5000, 20_000))
        return (
            _b64(('{"p":' + nested_json_text(depth) + ',"f":{}}').encode()),
            f"{depth} deep",
            False,
        )
    if choice == 2:
        depth = rng.choice((1000, 5000))
        return (
            _b64(("{" + '"a":{' * depth + "}" * depth + "}").encode()),
            f"{depth} deep object",
            False,
        )
    if choice == 3:
        return "x" * rng.choice((511, 512, 513, 10_000)), "overlong", False
    if choice == 4:
        malformed = rng.choice(("=", "====", "!!", "%00", "a", "ab==", " ", "\u00e9"))
        return malformed, "malformed", False
    if choice == 5:
        return _b64(b'{"p":1e999,"f":{}}'), "1e999 without filters", False
    return _b64(b"\xff\xfe\xfd"), "undecodable JSON", False


def decode_token(token: str) -> dict[str, Any] | None:
    """The JSON inside a page token of this server, if it has that shape."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
