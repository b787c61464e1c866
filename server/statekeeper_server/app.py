"""The statekeeper application: a grpc.aio server over one store.

It serves every family's servicer, the standard health service (overall and
per service) and server reflection, and watches the store so that health
says NOT_SERVING while the store is down. Beside the gRPC port it serves the
HTTP side port (`--http-listen`: metrics, liveness, readiness), whose
readiness follows the same health. `stop` is the graceful shutdown:
followers and long polls are told to end, health turns NOT_SERVING (and
`/readyz` 503), new calls are refused with UNAVAILABLE while the calls
already received finish (within the grace period), then the transport
stops, the side port closes, background loops stop and the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from statekeeper_server import compat
from statekeeper_server.admission import Admission
from statekeeper_server.auth.control import AccessControl
from statekeeper_server.auth.exposure import check_exposure
from statekeeper_server.config import Settings
from statekeeper_server.console.socket import ConsoleSocket
from statekeeper_server.console.views import Console
from statekeeper_server.interceptors import (
    AdmissionLayer,
    ErrorLayer,
    LayeredInterceptor,
    RequestLayer,
)
from statekeeper_server.limits import CLIENT_RECEIVE_LIMIT_BYTES, TRANSPORT_SLACK_BYTES
from statekeeper_server.memory_trim import MemoryTrimmer, glibc_malloc_trim
from statekeeper_server.observability import server_metrics
from statekeeper_server.observability.access_log import AccessLogLayer
from statekeeper_server.observability.grpc_metrics import MetricsLayer
from statekeeper_server.observability.http import HttpPort
from statekeeper_server.observability.loop_lag import watch_loop_lag
from statekeeper_server.observability.tracing import Tracing, start_tracing
from statekeeper_server.publish.relay_config import declare_relays
from statekeeper_server.publish.sinks import Sinks
from statekeeper_server.request_decoding import CheckWorkers
from statekeeper_server.request_turns import RequestTurns
from statekeeper_server.services import Service
from statekeeper_server.services.checkpoints import CheckpointServicer
from statekeeper_server.services.events import EventLogServicer
from statekeeper_server.services.jobs import JobServicer
from statekeeper_server.services.relays import RelayServicer
from statekeeper_server.services.snapshots import SnapshotServicer
from statekeeper_server.services.thread_checkpoints import ThreadCheckpointServicer
from statekeeper_server.stores import Store, open_store
from statekeeper_server.stream_buffers import StreamBuffers
from statekeeper_server.stream_turns import StreamTurns
from statekeeper_server.tls import ServerTls, TlsError, bind

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNARY_HEADROOM = 100
"""HTTP/2 streams a connection may open beyond its limit of live streams, for unary calls."""
CONNECTION_AGE_GRACE_SECONDS = 330.0
"""Seconds the calls of a connection past its age get to finish: more than the longest
LeaseJobs long poll (300 s), so no lease is cut off from its answer."""
QUIET_PERIOD_SECONDS = 0.2
"""Most seconds a draining server waits for callers to stop sending (see quiet_period)."""
PING_DEADLINE_FLOOR = 1.0
"""Fewest seconds the health watch waits for the store's answer to one ping."""


def build_services(
    store: Store,
    settings: Settings,
    stopping: asyncio.Event,
    buffers: StreamBuffers,
    turns: StreamTurns,
    sinks: Sinks,
) -> list[Service]:
    """Every servicer of the API, over `store`; the streams share `buffers` and `turns`;
    jobs and relays publish through `sinks`."""
    return [
        SnapshotServicer(store.snapshots),
        CheckpointServicer(store.checkpoints, settings),
        EventLogServicer(
            store.events, store.notifier, stopping, settings.heartbeat_interval, buffers, turns
        ),
        JobServicer(
            store.jobs, store.events, store.notifier, settings, stopping, buffers, turns, sinks
        ),
        RelayServicer(store.relays, store.events, sinks, store.notifier, settings, stopping),
        ThreadCheckpointServicer(store.threads, settings),
    ]


class Application:
    """A statekeeper server: `start`, then `stop` (or `serve_until` a signal)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = asyncio.Event()
        self.admission = Admission(settings.max_streams, settings.max_streams_per_connection)
        self.trimmer = MemoryTrimmer(glibc_malloc_trim())
        """Gives the memory of ended streams back to the operating system."""
        self.stream_buffers = StreamBuffers(
            settings.stream_buffer_bytes, on_stream_end=self.trimmer.request
        )
        """The budget of bytes that ReplayEvents and WatchJobs streams hold together."""
        self.check_workers = CheckWorkers(settings.check_workers)
        self.request_turns = RequestTurns(settings.large_request_bytes)
        """The worker processes that decode and check large request bodies."""
        self.stream_turns = StreamTurns()
        """The turns ReplayEvents and WatchJobs streams take to read and send a page."""
        self.port = 0
        self.http_port = 0
        """The bound port of the HTTP side port (0 while it is off or not started)."""
        self._http: HttpPort | None = None
        self._store_answers = True
        """Whether the store passed its last health check."""
        self._store: Store | None = None
        self._tls: ServerTls | None = None
        self._access: AccessControl | None = None
        self._tracing: Tracing | None = None
        self._server: grpc.aio.Server | None = None
        self._console_socket: ConsoleSocket | None = None
        self._health = health.aio.HealthServicer()
        self._service_names: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.sinks = Sinks({})
        """The sinks events are published to (read from the settings at `start`)."""

    @property
    def store(self) -> Store:
        """The open store (after `start`)."""
        assert self._store is not None, "start() first"
        return self._store

    async def start(self) -> None:
        """Read the TLS files (if any), open the store, bind the address and start serving.

        Refuses (ExposedWithoutAuth) to serve a non-loopback address without
        authentication unless `insecure_no_auth`; reads the access-control files;
        refuses (TracingUnavailable) `--otel` without the otel extra.
        """
        check_exposure(self.settings)
        self.sinks = Sinks.from_settings(
            self.settings.sink, self.settings.sinks_file, self.settings.sink_format
        )
        self._tracing = start_tracing(self.settings.otel)
        self._tls = await ServerTls.load(self.settings)
        self._access = await AccessControl.load(self.settings)
        self._store = await open_store(self.settings.store, self.settings)
        try:
            await declare_relays(self._store.relays, self.settings.relay, self.sinks)
            await self._start_server(self._store)
        except BaseException:
            await self._store.close()
            raise

    def readiness(self) -> str | None:
        """None while the server takes calls (serving, not draining, its store answering
        the health checks); otherwise why it does not, in a few words."""
        if self.stopping.is_set() or self.admission.draining:
            return "draining for shutdown"
        if self._server is None:
            return "not serving yet"
        if not self._store_answers:
            return "the store does not answer"
        return None

    @property
    def console_socket(self) -> ConsoleSocket | None:
        """The private socket the console calls the API through (None without a console)."""
        return self._console_socket

    @property
    def http_address(self) -> str:
        """host:port the HTTP side port is bound to ("" while it is off or not started)."""
        return "" if self._http is None else self._http.address

    async def _start_server(self, store: Store) -> None:
        # Without the side port nothing could read call metrics: no metrics layer at all.
        metrics = [MetricsLayer()] if self.settings.http_listen else []
        server = grpc.aio.server(
            interceptors=[
                LayeredInterceptor(
                    [
                        # Traces, call metrics and access lines: each only when it is on.
                        *([] if self._tracing is None else [self._tracing.layer()]),
                        *metrics,
                        *(
                            []
                            if self.settings.access_log == "off"
                            else [AccessLogLayer(self.settings.access_log)]
                        ),
                        ErrorLayer(),
                        # Without authentication configured there is no auth layer at all.
                        *([] if self._access is None else [self._access.layer()]),
                        AdmissionLayer(self.admission),
                        RequestLayer(
                            self.settings.max_message_bytes,
                            self.check_workers,
                            self.request_turns,
                            count_bytes=self.settings.access_log != "off",
                        ),
                    ]
                )
            ],
            options=transport_options(self.settings),
        )
        services = build_services(
            store,
            self.settings,
            self.stopping,
            self.stream_buffers,
            self.stream_turns,
            self.sinks,
        )
        for service in services:
            service.add_to(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self._service_names = [service.service_name for service in services]
        if self.settings.reflection != "off":
            # Reflection answers from the default descriptor pool: beside the services it
            # resolves every type the server imported, the google.rpc error details of
            # errors.py among them, so that grpcurl prints a status's details as JSON.
            reflection.enable_server_reflection(
                [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
            )
        self.port = bind(server, self.settings.listen, self._tls)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.listen}")
        if self.settings.http_listen and self.settings.console == "on":
            self._console_socket = ConsoleSocket.bind(server)
        await server.start()
        self._server = server
        try:
            await self._start_http()
        except BaseException:
            self._server = None
            await server.stop(0)
            raise
        await self._set_health(SERVING)
        background = [self._watch_store(store), self.trimmer.run()]
        if self.settings.http_listen:
            background.append(watch_loop_lag())
        for service in services:
            background.extend(service.background())
        if self._access is not None:
            background.append(self._access.watch_files())
        self._tasks = [asyncio.create_task(coro) for coro in background]
        log.info("serving on %s with store %s", self.settings.listen, _redact(self.settings.store))

    async def _start_http(self) -> None:
        """Serve the HTTP side port, if `http_listen` names one."""
        if not self.settings.http_listen:
            return
        console = None
        if self.settings.console == "on":
            assert self._console_socket is not None
            console = Console(
                self._console_socket.target,
                loopback_only=self._access is None and not self.settings.console_public,
                login=self._access is not None,
                access=self._access,
            )
        http = HttpPort(
            self.settings.http_listen,
            self.readiness,
            self._access,
            self.settings.metrics_public,
            console,
        )
        try:
            await http.start()
        except OSError as exc:
            raise OSError(
                f"cannot listen on --http-listen {self.settings.http_listen}: {exc.strerror}"
            ) from None
        self._http = http
        self.http_port = http.port
        server_metrics.SERVERS.track(self)
        log.info("HTTP side port (/metrics, /livez, /readyz) on %s", http.address)

    async def reload(self) -> None:
        """Re-read what may change while serving (on SIGHUP): the TLS files and the
        access-control files (tokens, JWT keys, certificate permissions).

        What cannot be re-read keeps its current state and is logged; a
        reload never stops the server.
        """
        if self._tls is not None:
            try:
                await self._tls.reload()
            except TlsError as exc:
                log.error("keeping the TLS files in use: %s", exc)
        if self._access is not None:
            await self._access.reload()

    async def stop(self) -> None:
        """Graceful shutdown: drain calls, stop the transport and loops, close the store."""
        self.stopping.set()
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            self.admission.start_draining()
            grace = self.settings.grace_period
            log.info(
                "shutting down: %.1f s for %d calls in flight", grace, self.admission.in_flight
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            try:
                async with compat.timeout_at(deadline):
                    await self.admission.drained(quiet_period(grace))
            except asyncio.TimeoutError:
                log.warning(
                    "%d calls were still in flight at the end of the grace period",
                    self.admission.in_flight,
                )
            await self._server.stop(max(deadline - loop.time(), 0.0))
            self._server = None
        if self._console_socket is not None:
            self._console_socket.remove()
            self._console_socket = None
        if self._http is not None:
            await self._http.stop()
            self._http = None
            server_metrics.SERVERS.forget(self)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self.check_workers.close()
        await self.sinks.close()
        if self._store is not None:
            await self._store.close()
            self._store = None
        if self._tracing is not None:
            await asyncio.to_thread(self._tracing.shutdown)
            self._tracing = None
        log.info("stopped")

    async def _set_health(self, status: int) -> None:
        for name in ["", *self._service_names]:
            await self._health.set(name, status)

    async def _watch_store(self, store: Store) -> None:
        """Keep health in step with whether the store serves reads and writes.

        Every check interval the store must answer a read (`ping`) and commit
        a tiny write (`check_writes`, which goes the way every write goes),
        both within the interval (at least PING_DEADLINE_FLOOR). A check that
        fails in any way or takes longer turns health NOT_SERVING until one
        passes again: a database that went silent without closing its
        connections, a full disk and a read-only database all take the
        server out of rotation. Nothing a check raises may end the watch.
        """
        interval = self.settings.health_check_interval
        deadline = max(interval, PING_DEADLINE_FLOOR)
        healthy = True
        while True:
            await asyncio.sleep(interval)
            try:
                async with compat.timeout(deadline):
                    await store.ping()
                    await store.check_writes()
                now_healthy = True
            except Exception as exc:
                now_healthy = False
                if healthy:
                    log.warning(
                        "store cannot serve: %s", str(exc) or f"no answer within {deadline:g} s"
                    )
            self._store_answers = now_healthy
            if now_healthy != healthy and not self.stopping.is_set():
                healthy = now_healthy
                await self._set_health(SERVING if healthy else NOT_SERVING)
                if healthy:
                    log.info("store answers again")


def quiet_period(grace_period: float) -> float:
    """Seconds without a new call a draining server waits for before stopping its
    transport: long enough for a caller that just got an answer to send its next
    call (and have it refused), a small share of the grace period."""
    return min(QUIET_PERIOD_SECONDS, grace_period / 10)


def transport_options(settings: Settings) -> list[tuple[str, int]]:
    """The gRPC channel arguments of the server: message sizes and connection hygiene.

    The receive limit sits TRANSPORT_SLACK_BYTES above `max_message_bytes`, so
    a request a little too large still reaches the server and is refused with
    an ErrorInfo (REQUEST_TOO_LARGE); gRPC alone refuses larger ones, without
    details. Nothing the server sends exceeds what a standard client accepts.
    Connections that never finish their handshake, stay idle, live too long
    or stop answering pings are closed, so none holds memory for ever.
    """
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", settings.max_message_bytes + TRANSPORT_SLACK_BYTES),
        ("grpc.max_send_message_length", CLIENT_RECEIVE_LIMIT_BYTES),
        # Streams past the admission limit are refused with RESOURCE_EXHAUSTED; this
        # bounds what one connection can open before that check runs, leaving room
        # for unary calls beside a full set of streams.
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection + UNARY_HEADROOM),
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
        ("grpc.server_handshake_timeout_ms", _ms(settings.handshake_timeout)),
        *_optional_ms("grpc.max_connection_idle_ms", settings.connection_idle_timeout),
        *_optional_ms("grpc.max_connection_age_ms", settings.max_connection_age),
        ("grpc.max_connection_age_grace_ms", _ms(CONNECTION_AGE_GRACE_SECONDS)),
        ("grpc.keepalive_time_ms", _ms(settings.keepalive_time)),
        # gRPC acts on an unanswered ping only after the ping timeout: set both.
        ("grpc.keepalive_timeout_ms", _ms(settings.keepalive_timeout)),
        ("grpc.http2.ping_timeout_ms", _ms(settings.keepalive_timeout)),
    ]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _optional_ms(name: str, seconds: float) -> list[tuple[str, int]]:
    """The option in milliseconds, or nothing for 0 (gRPC's "no limit")."""
    return [(name, _ms(seconds))] if seconds > 0 else []


def _redact(url: str) -> str:
    """The store URL without a password."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
    return url
