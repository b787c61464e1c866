"""Access-control files: read at start, re-read on reload and when they change.

A file that cannot be used stops the start with a message naming its flag,
its path and what is wrong. Once serving, a file that changes is read
again; a version that cannot be used is refused, logged, and the previous
one stays in force, so a half-written or mistyped file never locks every
caller out. Reading and parsing happen on a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from statekeeper_server.compat import tomllib

log = logging.getLogger("statekeeper.auth")

T = TypeVar("T")

Signature = tuple[int, int, int] | None
"""What identifies a version of a file cheaply: (inode, size, mtime in ns); None if absent."""


class AuthFileError(Exception):
    """An access-control file that cannot be used; the message names the flag and the file."""


def read_document(path: Path) -> Any:
    """The parsed content of a `.json` file, or of a TOML file (any other name).

    Raises ValueError saying what is wrong (blocking I/O: call off the event loop).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or exc})") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"is not valid JSON ({exc})") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"is not valid TOML ({exc})") from None


def signature(path: Path) -> Signature:
    """The file's current signature; None when it cannot be examined."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_ino, status.st_size, status.st_mtime_ns)


class WatchedFile(Generic[T]):
    """One access-control file and what uses its content.

    `parse` turns the file into a value (blocking, raising ValueError with a
    reason); `apply` puts a value in force; `describe` says what a value
    holds, for the log ("3 tokens").
    """

    def __init__(
        self,
        flag: str,
        path: Path,
        parse: Callable[[Path], T],
        apply: Callable[[T], None],
        describe: Callable[[T], str],
    ) -> None:
        self.flag = flag
        self.path = path
        self._parse = parse
        self._apply = apply
        self._describe = describe
        self._signature: Signature = None

    async def load(self) -> None:
        """Read the file and put it in force; AuthFileError if it cannot be used."""
        seen = await asyncio.to_thread(signature, self.path)
        try:
            value = await asyncio.to_thread(self._parse, self.path)
        except ValueError as exc:
            raise AuthFileError(f"{self.flag} {self.path}: {exc}") from None
        self._signature = seen
        self._apply(value)
        log.info("%s %s: %s", self.flag, self.path, self._describe(value))

    async def reload(self) -> bool:
        """Read the file again; on failure log why and keep what is in force.

        Returns whether the new content is now in force.
        """
        try:
            await self.load()
        except AuthFileError as exc:
            log.error("%s; keeping the version in force", exc)
            return False
        return True

    async def reload_if_changed(self) -> None:
        """Reload when the file's signature differs from the one last read (once per
        change: a version that failed is not retried until the file changes again)."""
        seen = await asyncio.to_thread(signature, self.path)
        if seen == self._signature:
            return
        if not await self.reload():
            self._signature = seen
