"""Safe by default: a server reachable from the network needs authentication.

Like Redis's protected mode: listening on an address other than loopback
(or a Unix socket) with no authentication configured refuses to start,
unless `--insecure-no-auth` says the network itself is trusted. The local
quickstart on 127.0.0.1 needs nothing. The same holds for the HTTP side
port (`--http-listen`) whenever `/metrics` on it would be open to anyone
(no authentication configured, or `--metrics-public`).
"""

from __future__ import annotations

import ipaddress

from statekeeper_server.config import Settings

LOCAL_SCHEMES = ("unix:", "unix-abstract:")
LOOPBACK_NAMES = ("localhost",)


class ExposedWithoutAuth(Exception):
    """The server would listen beyond this host with no authentication."""


def is_local_address(listen: str) -> bool:
    """Whether `listen` (host:port, [v6]:port or a Unix socket) is reachable only
    from this host: a loopback address, `localhost` or a Unix socket."""
    if listen.startswith(LOCAL_SCHEMES):
        return True
    host = listen.rsplit(":", 1)[0] if ":" in listen else listen
    host = host.removeprefix("ipv4:").removeprefix("ipv6:").strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Raise ExposedWithoutAuth, saying what to do, when the settings would serve a
    non-local address without authentication and without `--insecure-no-auth`: the
    gRPC port, or the HTTP side port with `/metrics` open to anyone."""
    if settings.insecure_no_auth:
        return
    check_http_exposure(settings)
    if settings.auth_enabled or is_local_address(settings.listen):
        return
    raise ExposedWithoutAuth(
        f"refusing to listen on {settings.listen} without authentication: anyone who can"
        " reach it could read, rewrite and delete every namespace's state. Configure"
        " --auth-tokens-file (see `statekeeper token create`), --auth-jwt-keys or"
        " --auth-mtls-permissions; or listen on 127.0.0.1; or, if the network itself is"
        " trusted, pass --insecure-no-auth"
    )


def check_http_exposure(settings: Settings) -> None:
    """Raise ExposedWithoutAuth when `--http-listen` is a non-local address and `/metrics`
    would answer anyone (no authentication configured, or `--metrics-public`)."""
    listen = settings.http_listen
    metrics_public = settings.metrics_public or not settings.auth_enabled
    if not listen or not metrics_public or is_local_address(listen):
        return
    why = "--metrics-public is set" if settings.auth_enabled else "no authentication is configured"
    raise ExposedWithoutAuth(
        f"refusing to serve /metrics on --http-listen {listen} to anyone ({why}): metrics"
        " describe the server's traffic and state. Configure --auth-tokens-file or"
        " --auth-jwt-keys (and scrape with a token granting *:metrics) without"
        ' --metrics-public; or set --http-listen to 127.0.0.1:PORT (or "" to turn the'
        " port off); or, if the network itself is trusted, pass --insecure-no-auth"
    )
