"""The HTTP side port (`--http-listen`): metrics for Prometheus, probes for orchestrators.

Served by aiohttp in the server's own event loop:

- `GET /metrics`: every metric of the process-wide registry, in Prometheus
  text format, or OpenMetrics when the Accept header asks for it. With
  access control configured (and no `--metrics-public`) it needs
  `Authorization: Bearer <token>` granting `*:metrics` or `*:admin`:
  401 without a usable token, 403 without the permission.
- `GET /livez`: 200 whenever the process answers.
- `GET /readyz`: 200 while the server takes calls (serving, not draining
  for shutdown, its store answering the health checks); 503 with the
  reason otherwise.

- `/` and below: the web console (`--console`, see statekeeper_server.console).

Both probes are always open. Every path also answers HEAD; any other
method is 405, any other path 404.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from statekeeper_server.auth.control import AccessControl
from statekeeper_server.auth.errors import PermissionDenied
from statekeeper_server.auth.roles import Capability
from statekeeper_server.config import split_host_port
from statekeeper_server.console.views import Console
from statekeeper_server.errors import Unauthenticated

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 1.0
"""Most seconds a stopping side port waits for requests in progress (a scrape is quick)."""

Readiness = Callable[[], "str | None"]
"""None when the server is ready for calls, else why it is not."""


class HttpPort:
    """The side port of one server: `start` binds and serves, `stop` closes it."""

    def __init__(
        self,
        listen: str,
        readiness: Readiness,
        access: AccessControl | None,
        public: bool,
        console: Console | None = None,
    ) -> None:
        self._host, self._port = split_host_port(listen)
        self._readiness = readiness
        self._access = None if public else access
        self._console = console
        self._runner: web.AppRunner | None = None
        self.port = 0
        """The bound port (after `start`)."""

    @property
    def address(self) -> str:
        """host:port bound (after `start`), with brackets around an IPv6 host."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Bind the address and serve; OSError when it cannot be bound."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        if self._console is not None:
            self._console.install(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop serving and close the port."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._access is not None:
            try:
                self._access.authorize(
                    request.headers.getall("Authorization", []),
                    Capability.METRICS,
                    "GET /metrics",
                    f"http:{request.remote}",
                )
            except Unauthenticated as error:
                return web.Response(
                    status=401,
                    text=error.message + "\n",
                    headers={"WWW-Authenticate": 'Bearer realm="statekeeper"'},
                )
            except PermissionDenied as error:
                return web.Response(status=403, text=error.message + "\n")
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(REGISTRY), headers={"Content-Type": content_type})

    async def _livez(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n", content_type="text/plain")

    async def _readyz(self, request: web.Request) -> web.Response:
        reason = self._readiness()
        if reason is None:
            return web.Response(text="ready\n", content_type="text/plain")
        return web.Response(status=503, text=f"not ready: {reason}\n", content_type="text/plain")
