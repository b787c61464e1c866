"""The suite's run with access control on: every end-to-end server demands a token, and
every client of a test sends one.

With `STATEKEEPER_TEST_AUTH=tokens`, the servers `running_app` and `ServerProcess`
start read a tokens file granting one token `*:admin`; the test's clients send that
token: `statekeeper` clients through `STATEKEEPER_TOKEN`, raw `grpc.aio` channels
through a client interceptor adding `authorization: Bearer <token>` to every call that
carries no authorization of its own. An authorized caller must see exactly what a
caller of an open server sees, so the end-to-end tests pass unchanged.

Tests about access control itself, or that need a server without it, are marked
`own_access_control` and run as they are (`-m "not own_access_control"` leaves them out
of the second run).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from statekeeper._credentials import AUTHORIZATION_HEADER, TOKEN_ENV
from tests.auth_support import write_tokens

MODE_ENV = "STATEKEEPER_TEST_AUTH"
"""Set to `tokens` for the run with access control on; unset (or empty) for the plain run."""
MODES = ("tokens",)
MARKER = "own_access_control"
"""Marks a test that configures access control itself or needs a server without it."""
AUTH_SETTINGS = ("auth_tokens_file", "auth_jwt_keys", "auth_mtls_permissions")
"""The settings that turn access control on; a server given any of them is left as it is."""
PERMISSIONS = ("*:admin",)
"""What the suite's token may do: everything, in every namespace."""


@dataclass(frozen=True)
class SuiteAccess:
    """The tokens file every server of the run reads, and the token it grants."""

    tokens_file: Path
    token: str

    def add_to_settings(self, settings: dict[str, object]) -> None:
        """Let a `running_app` server demand the token, unless the test configured
        access control itself."""
        if not any(settings.get(name) for name in AUTH_SETTINGS):
            settings["auth_tokens_file"] = str(self.tokens_file)

    def server_flags(self, given: Sequence[str]) -> list[str]:
        """The flags that let a `statekeeper serve` demand the token; none when the
        flags `given` configure access control already."""
        flags = ["--" + name.replace("_", "-") for name in AUTH_SETTINGS]
        if any(arg.split("=", 1)[0] in flags for arg in given):
            return []
        return ["--auth-tokens-file", str(self.tokens_file)]


_active: SuiteAccess | None = None


def active() -> SuiteAccess | None:
    """The access control of the running test; None outside the run with it on, and for
    tests marked `own_access_control`."""
    return _active


def requested() -> bool:
    """Whether this run has access control on; UsageError for a mode it does not know."""
    mode = os.environ.get(MODE_ENV, "")
    if mode and mode not in MODES:
        raise pytest.UsageError(f"{MODE_ENV}={mode!r}: use one of {', '.join(MODES)}")
    return bool(mode)


def create(directory: Path) -> SuiteAccess:
    """A tokens file in `directory` holding the digest of one new `*:admin` token."""
    path = directory / "tokens.toml"
    token = write_tokens(path, {"suite": list(PERMISSIONS)})["suite"]
    return SuiteAccess(path, token)


def enable(access: SuiteAccess, monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn the run's access control on for one test: its servers demand the token and
    its clients send it."""
    monkeypatch.setattr(f"{__name__}._active", access)
    monkeypatch.setenv(TOKEN_ENV, access.token)
    bearer = bearer_interceptors(access.token)
    for name in ("insecure_channel", "secure_channel"):
        monkeypatch.setattr(grpc.aio, name, _sending(bearer, getattr(grpc.aio, name)))


def _sending(
    bearer: Sequence[Any], open_channel: Callable[..., grpc.aio.Channel]
) -> Callable[..., grpc.aio.Channel]:
    """`open_channel` (grpc.aio.insecure_channel or secure_channel) with `bearer` added
    to the interceptors its caller gives."""

    def opened(*args: Any, interceptors: Any = None, **kwargs: Any) -> grpc.aio.Channel:
        return open_channel(*args, interceptors=[*(interceptors or ()), *bearer], **kwargs)

    return opened


# -- the client interceptors ---------------------------------------------------------


class _Bearer:
    """Adds `authorization: Bearer <token>` to calls that carry no authorization."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION_HEADER, f"Bearer {token}")

    def _authorized(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata: Sequence[tuple[str, Any]] = tuple(details.metadata or ())
        if any(key == AUTHORIZATION_HEADER for key, _ in metadata):
            return details
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*metadata, self._header),
            details.credentials,
            details.wait_for_ready,
        )


class _UnaryUnary(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._authorized(details), request)


class _UnaryStream(_Bearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._authorized(details), request)


class _StreamUnary(_Bearer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._authorized(details), requests)


class _StreamStream(_Bearer, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._authorized(details), requests)


def bearer_interceptors(token: str) -> list[Any]:
    """One interceptor per kind of call (a channel files each under one kind only)."""
    return [kind(token) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]
