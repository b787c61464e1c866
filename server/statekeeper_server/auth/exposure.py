"""Safe by default: a server reachable from the network needs authentication.

Like Redis's protected mode: listening on an address other than loopback
(or a Unix socket) with no authentication configured refuses to start,
unless `--insecure-no-auth` says the network itself is trusted. The local
quickstart on 127.0.0.1 needs nothing.
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
    non-local address without authentication and without `--insecure-no-auth`."""
    if settings.auth_enabled or settings.insecure_no_auth or is_local_address(settings.listen):
        return
    raise ExposedWithoutAuth(
        f"refusing to listen on {settings.listen} without authentication: anyone who can"
        " reach it could read, rewrite and delete every namespace's state. Configure"
        " --auth-tokens-file (see `statekeeper token create`), --auth-jwt-keys or"
        " --auth-mtls-permissions; or listen on 127.0.0.1; or, if the network itself is"
        " trusted, pass --insecure-no-auth"
    )
