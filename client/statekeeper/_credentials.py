"""Who the client is and whom it trusts: the server's address, TLS and the bearer token.

The token travels as `authorization: Bearer <token>` metadata on every
call, built when the call is made: a callable token is asked again for
each call (and for each resumption of a replay or a worker loop), so a
short-lived JWT can be refreshed without a new client. Metadata, unlike
gRPC call credentials, is sent on plaintext channels as well, which a
server on loopback or behind a TLS-terminating proxy needs; so the token
is exposed on a plaintext channel: use TLS anywhere else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

import grpc

TARGET_ENV = "STATEKEEPER_TARGET"
TOKEN_ENV = "STATEKEEPER_TOKEN"
DEFAULT_TARGET = "127.0.0.1:50051"
AUTHORIZATION_HEADER = "authorization"

Token: TypeAlias = "str | Callable[[], str]"
"""A bearer token, or a function returning the one to send now."""
Pem: TypeAlias = "bytes | str | os.PathLike[str]"
"""PEM data (bytes), or the path of a file holding it (str or path)."""


def resolve_target(target: str | None) -> str:
    """`target`, else $STATEKEEPER_TARGET, else 127.0.0.1:50051."""
    return target or os.environ.get(TARGET_ENV) or DEFAULT_TARGET


def resolve_token(token: Token | None) -> Token | None:
    """`token`, else $STATEKEEPER_TOKEN; None when neither gives one (an empty string
    given explicitly sends no token even when the variable is set)."""
    if token is None:
        token = os.environ.get(TOKEN_ENV, "")
    return token or None


def authorization(token: Token) -> tuple[str, str]:
    """The metadata entry carrying `token` (a callable token is called now).

    Raises ValueError for a token that metadata cannot carry: empty, or with
    characters other than printable ASCII without spaces at either end.
    """
    value = token() if callable(token) else token
    if not isinstance(value, str):
        raise TypeError(f"a token must be a str, not {type(value).__name__}")
    if not value or value != value.strip() or not all(" " <= c <= "~" for c in value):
        raise ValueError("a token must be non-empty printable ASCII without surrounding spaces")
    return (AUTHORIZATION_HEADER, f"Bearer {value}")


def channel_credentials(
    *,
    tls: bool = False,
    root_certificates: Pem | None = None,
    client_cert: Pem | None = None,
    client_key: Pem | None = None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials, or None for a plaintext channel.

    TLS is used when `tls` is true or any certificate is given. The server
    is checked against `root_certificates` (else the system's trusted CAs);
    `client_cert` with `client_key` is the client's certificate for mutual
    TLS. Files are read now. Raises ValueError when only one of the client
    pair is given, OSError when a file cannot be read.
    """
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together")
    if not (tls or root_certificates is not None or client_cert is not None):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(root_certificates),
        private_key=read_pem(client_key),
        certificate_chain=read_pem(client_cert),
    )


def read_pem(source: Pem | None) -> bytes | None:
    """PEM bytes as given, or read from the file `source` names."""
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()
