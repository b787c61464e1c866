"""Static bearer tokens: a file of named entries, each holding a token's SHA-256.

The file (`--auth-tokens-file`, TOML or, for a `.json` name, JSON) never
holds a token itself:

    [[tokens]]
    name = "ci"
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    permissions = ["acme:write", "globex:read"]
    expires = 2026-12-31T00:00:00Z        # optional

(JSON: `{"tokens": [{"name": ..., "sha256": ..., "permissions": [...],
"expires": "2026-12-31T00:00:00Z"}]}`.) A call's token is hashed and
compared with every entry's digest in constant time, so neither the time a
lookup takes nor its answer tells a caller how close a guess came.
`statekeeper token create` makes a token and the entry to paste.
"""

from __future__ import annotations

import datetime
import hmac
import json
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statekeeper_server import compat
from statekeeper_server.auth.credentials import Credentials, token_digest
from statekeeper_server.auth.errors import token_expired
from statekeeper_server.auth.files import read_document
from statekeeper_server.auth.permissions import Permission, Principal
from statekeeper_server.validation import ID_RULE, is_id

TOKEN_PREFIX = "sk_"
"""Every token `token create` makes starts with this, so a leaked one is recognisable."""
TOKEN_BYTES = 32
"""Random bytes in a token (256 bits)."""
ENTRY_KEYS = ("name", "sha256", "permissions", "expires")
DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
DURATION_PATTERN = re.compile(r"(?:(\d+)([smhdw]))+")
DURATION_PART = re.compile(r"(\d+)([smhdw])")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One token of the file: its digest and the principal it authenticates."""

    digest: bytes
    principal: Principal


class StaticTokens:
    """Authenticates bearer tokens listed (by digest) in the tokens file."""

    def __init__(self, entries: Sequence[TokenEntry] = ()) -> None:
        self._entries = tuple(entries)

    @property
    def entries(self) -> tuple[TokenEntry, ...]:
        """The entries in force."""
        return self._entries

    def replace(self, entries: Sequence[TokenEntry]) -> None:
        """Put a new set of entries in force (calls from now on use it)."""
        self._entries = tuple(entries)

    def authenticate(self, credentials: Credentials) -> Principal | None:
        """The principal of the entry matching the bearer token; None for no match.

        Every entry's digest is compared, in constant time, whatever matched:
        the time taken depends only on how many entries there are. An entry
        past its expiry is TOKEN_EXPIRED.
        """
        if credentials.bearer_token is None:
            return None
        digest = credentials.token_digest
        found: TokenEntry | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        if found is None:
            return None
        expires_at = found.principal.expires_at
        if expires_at is not None and time.time() >= expires_at:
            raise token_expired("the token")
        return found.principal


def read_tokens_file(path: Path) -> tuple[TokenEntry, ...]:
    """The entries of a tokens file; ValueError saying which entry is wrong and how."""
    return parse_tokens(read_document(path))


def parse_tokens(document: Any) -> tuple[TokenEntry, ...]:
    """The entries of a parsed tokens file; ValueError naming the entry at fault."""
    if not isinstance(document, dict) or set(document) - {"tokens"}:
        raise ValueError("must hold only a `tokens` list (`[[tokens]]` tables in TOML)")
    raw = document.get("tokens", [])
    if not isinstance(raw, list):
        raise ValueError("`tokens` must be a list of entries")
    entries: list[TokenEntry] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for index, item in enumerate(raw):
        where = f"tokens[{index}]"
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            where += f" ({item['name'][:128]})"
        try:
            entry = _parse_entry(item)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if entry.principal.name in names:
            raise ValueError(f"{where}: another entry has the same name")
        if entry.digest in digests:
            raise ValueError(f"{where}: another entry has the same sha256")
        names.add(entry.principal.name)
        digests.add(entry.digest)
        entries.append(entry)
    return tuple(entries)


def principal_name(name: str) -> str:
    """How a token's principal is named in logs: `token:<name>`."""
    return f"token:{name}"


def _parse_entry(item: Any) -> TokenEntry:
    if not isinstance(item, dict):
        raise ValueError("must be a table with name, sha256 and permissions")
    unknown = sorted(set(item) - set(ENTRY_KEYS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (keys: {', '.join(ENTRY_KEYS)})")
    name = item.get("name")
    if not isinstance(name, str) or not is_id(name):
        raise ValueError(f"name {ID_RULE}")
    digest = item.get("sha256")
    if not isinstance(digest, str) or not DIGEST_PATTERN.fullmatch(digest.lower()):
        raise ValueError("sha256 must be the token's SHA-256 as 64 hexadecimal digits")
    permissions = item.get("permissions")
    if (
        not isinstance(permissions, list)
        or not permissions
        or not all(isinstance(p, str) for p in permissions)
    ):
        raise ValueError('permissions must be a non-empty list such as ["acme:write"]')
    expires = item.get("expires")
    expires_at = None if expires is None else _file_expiry(expires).timestamp()
    return TokenEntry(
        digest=bytes.fromhex(digest),
        principal=Principal.of(principal_name(name), permissions, expires_at),
    )


def _file_expiry(value: Any) -> datetime.datetime:
    """An entry's `expires`: a date and time with a time zone (TOML datetime or text)."""
    moment: datetime.datetime | None = None
    if isinstance(value, datetime.datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = compat.fromisoformat(value)
        except ValueError:
            moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError(
            "expires must be a date and time with a time zone, such as 2026-12-31T00:00:00Z"
        )
    return moment


# -- making tokens ----------------------------------------------------------------------


def new_token() -> str:
    """A new random token: TOKEN_PREFIX and 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def parse_expiry(text: str, now: datetime.datetime) -> datetime.datetime:
    """When a token made `now` expires: a duration (`90d`, `12h`, `1w2d`, units s m h d w),
    a date (`2026-12-31`, midnight UTC) or a date and time (UTC unless it says
    otherwise). ValueError for anything else or a moment not in the future."""
    text = text.strip()
    if DURATION_PATTERN.fullmatch(text):
        seconds = sum(
            int(count) * DURATION_UNITS[unit] for count, unit in DURATION_PART.findall(text)
        )
        moment = now + datetime.timedelta(seconds=seconds)
    else:
        try:
            moment = compat.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"--expires {text!r} must be a duration such as 90d or 12h, or a date such"
                " as 2026-12-31"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
    if moment <= now:
        raise ValueError(f"--expires {text!r} is not in the future")
    return moment.astimezone(datetime.timezone.utc).replace(microsecond=0)


def token_entry(
    name: str, token: str, permissions: Sequence[str], expires: datetime.datetime | None
) -> dict[str, Any]:
    """The tokens-file entry for `token` (its digest only). ValueError for a name or a
    permission the file would refuse."""
    if not is_id(name):
        raise ValueError(f"--name {ID_RULE}")
    if not permissions:
        raise ValueError("give at least one --permission, such as acme:write")
    canonical = [str(Permission.parse(permission)) for permission in permissions]
    entry: dict[str, Any] = {
        "name": name,
        "sha256": token_digest_hex(token),
        "permissions": list(dict.fromkeys(canonical)),
    }
    if expires is not None:
        entry["expires"] = expires
    return entry


def token_digest_hex(token: str) -> str:
    """The SHA-256 of `token` in hexadecimal, as the file records it."""
    return token_digest(token).hex()


def add_entry(path: Path, entry: dict[str, Any]) -> None:
    """Add `entry` to the tokens file at `path` (created if missing), keeping its format:
    a `.json` file is rewritten with the entry appended, a TOML file gets it at the end.

    Raises ValueError saying what is wrong with an existing file (blocking I/O).
    """
    if path.suffix.lower() == ".json":
        document: Any = read_document(path) if path.exists() else {"tokens": []}
        if not isinstance(document, dict) or not isinstance(document.get("tokens", []), list):
            raise ValueError(f"{path} does not hold a list of tokens")
        document.setdefault("tokens", []).append(json.loads(render_entry(entry, "json")))
        path.write_text(json.dumps(document, indent=2) + "\n")
        return
    if path.exists():
        read_document(path)  # refuse to append to a file that is not valid TOML
    with path.open("a") as file:
        if path.stat().st_size:
            file.write("\n")
        file.write(render_entry(entry, "toml") + "\n")


def render_entry(entry: dict[str, Any], file_format: str) -> str:
    """The entry as text to paste into a tokens file of `file_format` (toml or json)."""
    if file_format == "json":
        printable = dict(entry)
        if "expires" in printable:
            printable["expires"] = _utc_text(printable["expires"])
        return json.dumps(printable, indent=2)
    lines = ["[[tokens]]"]
    for key, value in entry.items():
        if isinstance(value, datetime.datetime):
            lines.append(f"{key} = {_utc_text(value)}")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines)


def _utc_text(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
