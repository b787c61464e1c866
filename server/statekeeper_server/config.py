"""Server settings: command-line flags > `STATEKEEPER_*` environment > defaults.

Every field of `Settings` is also a `statekeeper serve` flag (`log_level`
becomes `--log-level`), so the flag list, the environment and the README's
settings table never disagree.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from statekeeper_server.limits import (
    DEFAULT_LARGE_REQUEST_BYTES,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_STREAM_BUFFER_BYTES,
    KIB,
    MAX_REQUEST_BYTES_LIMIT,
)

DEFAULT_CHECK_WORKERS = max(1, min(4, (os.cpu_count() or 1) - 1))
"""One check worker per core but the one the event loop needs, at least one, at most four."""


class Settings(BaseSettings):
    """Everything `statekeeper serve` can be told."""

    model_config = SettingsConfigDict(env_prefix="STATEKEEPER_", extra="forbid")

    listen: str = Field("127.0.0.1:50051", description="address to listen on (host:port)")
    store: str = Field(
        "file:./data/statekeeper.db",
        description="store URL: memory:, file:PATH or postgresql://user@host:port/db",
    )
    postgres_schema: str = Field(
        "statekeeper",
        description="PostgreSQL schema holding the tables (the URL's ?schema= wins)",
    )
    postgres_pool_size: int = Field(
        10, gt=0, description="most PostgreSQL connections per replica (the URL's ?pool_size= wins)"
    )
    postgres_statement_timeout: float = Field(
        30.0,
        ge=0,
        description="seconds a PostgreSQL statement may run, 0 for no limit "
        "(the URL's ?statement_timeout= wins)",
    )
    postgres_connect_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds to wait for a PostgreSQL connection "
        "(the URL's ?connect_timeout= wins)",
    )
    tls_cert: str = Field(
        "",
        description="PEM certificate chain of the gRPC port; with --tls-key the port speaks"
        " TLS, without both it is plaintext (re-read on SIGHUP)",
    )
    tls_key: str = Field(
        "", description="PEM private key of --tls-cert, not encrypted (re-read on SIGHUP)"
    )
    tls_client_ca: str = Field(
        "",
        description="PEM CA certificates that must have signed every client's certificate"
        " (mutual TLS); needs --tls-cert (re-read on SIGHUP)",
    )
    auth_tokens_file: str = Field(
        "",
        description="TOML or JSON file of static bearer tokens (name, SHA-256 of the token,"
        " permissions, optional expiry; see `statekeeper token create`); re-read on SIGHUP"
        " and when it changes",
    )
    auth_jwt_keys: str = Field(
        "",
        description="JWKS file or PEM public keys whose JWTs are accepted as bearer tokens"
        " (RS256, ES256, EdDSA); re-read on SIGHUP and when it changes",
    )
    auth_jwt_issuer: str = Field(
        "", description="the issuer (iss) every JWT must name; empty: not checked"
    )
    auth_jwt_audience: str = Field(
        "",
        description="the audience (aud) every JWT must name; empty: JWTs naming any audience"
        " are refused",
    )
    auth_jwt_claim: str = Field(
        "permissions",
        min_length=1,
        description='the JWT claim listing the permissions, such as ["acme:write", "*:read"]',
    )
    auth_jwt_leeway: float = Field(
        30.0,
        ge=0,
        le=300,
        description="seconds of clock skew allowed when checking a JWT's expiry and not-before",
    )
    auth_mtls_permissions: str = Field(
        "",
        description="TOML or JSON file mapping client certificate names (subject CN or SAN)"
        " to permissions, so mutual TLS alone authenticates; re-read on SIGHUP and when it"
        " changes",
    )
    auth_reload_interval: float = Field(
        2.0, gt=0, description="seconds between checks of the auth files for changes"
    )
    reflection: Literal["open", "authenticated", "off"] = Field(
        "open",
        description="server reflection: open to anyone, only to authenticated callers, or off",
    )
    insecure_no_auth: bool = Field(
        False,
        description="allow listening on a non-loopback address without any authentication"
        " (only on a network that is itself trusted)",
    )
    http_listen: str = Field(
        "127.0.0.1:9464",
        description="address (host:port) of the HTTP side port serving /metrics, /livez and"
        " /readyz; empty disables it",
    )
    metrics_public: bool = Field(
        False,
        description="serve /metrics without credentials even when access control is"
        " configured (otherwise it needs a bearer token granting *:metrics or *:admin)",
    )
    console: Literal["on", "off"] = Field(
        "on", description="the web console at / of the HTTP side port: on or off"
    )
    console_public: bool = Field(
        False,
        description="serve the web console to any peer even without access control"
        " (otherwise, without access control, only to loopback peers)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="lowest level of log lines written to stderr"
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="format of every log line: text (key=value access lines) or json (one"
        " object per line)",
    )
    access_log: Literal["all", "errors", "off"] = Field(
        "errors",
        description="one log line per finished call: all, errors (calls not OK, rate-limited)"
        " or off (failed calls are then not logged one by one)",
    )
    otel: bool = Field(
        False,
        description="export OpenTelemetry traces over OTLP (configured by the OTEL_*"
        " environment; needs the otel extra); the OTEL_* environment alone also turns them on",
    )
    grace_period: float = Field(
        10.0, ge=0, description="seconds in-flight calls get to finish on SIGTERM/SIGINT"
    )
    max_message_bytes: int = Field(
        DEFAULT_MAX_REQUEST_BYTES,
        ge=64 * KIB,
        le=MAX_REQUEST_BYTES_LIMIT,
        description="largest request accepted, in bytes",
    )
    max_streams: int = Field(
        10_000,
        gt=0,
        description="most ReplayEvents and WatchJobs streams open at once on the server",
    )
    max_streams_per_connection: int = Field(
        1_000,
        gt=0,
        description="most ReplayEvents and WatchJobs streams open at once on one connection",
    )
    stream_buffer_bytes: int = Field(
        DEFAULT_STREAM_BUFFER_BYTES,
        ge=0,
        description="bytes of pages read but not yet sent that all ReplayEvents and WatchJobs"
        " streams may hold together beyond the 16 KiB each may always hold: more lets more"
        " readers read large pages at once; readers that stopped reading may hold all of it",
    )
    check_workers: int = Field(
        DEFAULT_CHECK_WORKERS,
        gt=0,
        le=64,
        description="worker processes that decode and check request bodies over 16 KiB holding"
        " JSON values, so the event loop never does; started with the first such request"
        " (default: one per core but one, at least 1, at most 4)",
    )
    large_request_bytes: int = Field(
        DEFAULT_LARGE_REQUEST_BYTES,
        ge=0,
        le=MAX_REQUEST_BYTES_LIMIT,
        description="bytes of request bodies over 16 KiB holding JSON values served at once;"
        " more wait their turn, first come first served, while smaller calls pass (a larger"
        " body is served alone); 0 serves them all at once",
    )
    max_connections: int = Field(
        5_000, gt=0, description="most client connections open at once; more are closed at once"
    )
    handshake_timeout: float = Field(
        10.0, gt=0, description="seconds a new connection gets to complete its HTTP/2 handshake"
    )
    connection_idle_timeout: float = Field(
        300.0,
        ge=0,
        description="seconds a connection without calls stays open; 0 keeps it open",
    )
    max_connection_age: float = Field(
        1800.0,
        ge=0,
        description="seconds after which a connection is asked to close (its calls get 330 s"
        " more; streams resume elsewhere); 0 for no limit",
    )
    keepalive_time: float = Field(
        60.0,
        gt=0,
        description="seconds between pings the server sends on a connection with calls open",
    )
    keepalive_timeout: float = Field(
        20.0,
        gt=0,
        description="seconds a client gets to answer a ping before its connection is closed",
    )
    health_check_interval: float = Field(
        2.0,
        gt=0,
        description="seconds between checks of the store for the health service; a store "
        "that does not answer within that time (at least 1 s) counts as down",
    )
    heartbeat_interval: float = Field(
        5.0, gt=0, description="seconds of silence before an idle stream gets a heartbeat"
    )
    job_lease_duration: float = Field(
        30.0,
        gt=0,
        le=86400,
        description="seconds a job lease lasts when LeaseJobs or HeartbeatJob sets none",
    )
    job_retention: float = Field(
        7 * 86400.0,
        ge=0,
        description="seconds finished jobs (SUCCEEDED, DEAD, CANCELLED) are kept before deletion",
    )
    job_change_retention: float = Field(
        86400.0, ge=0, description="seconds job state changes are kept for WatchJobs to resume"
    )
    job_sweep_interval: float = Field(
        1.0,
        gt=0,
        description="most seconds between sweeps of the job queue (due jobs, expired leases,"
        " retention)",
    )
    checkpoint_keep_last: int = Field(
        0, ge=0, description="checkpoints kept per run or agent, newest first; 0 keeps all"
    )
    checkpoint_ttl: float = Field(
        0.0,
        ge=0,
        description="seconds a checkpoint is kept (the newest always is); 0 keeps them forever",
    )
    checkpoint_sweep_interval: float = Field(
        60.0, gt=0, description="seconds between sweeps applying checkpoint retention"
    )
    sink: list[str] = Field(
        [],
        description="a sink events can be published to, NAME=URL: nats://host:4222?subject=TEMPLATE"
        " (JetStream) or redis://host:6379/0?stream=TEMPLATE&maxlen=N (Redis Streams);"
        " repeatable (needs the publish extra)",
    )
    sinks_file: str = Field(
        "", description="file of more sinks, one NAME=URL per line (# starts a comment)"
    )
    sink_format: Literal["protobuf", "json"] = Field(
        "protobuf",
        description="body of published messages unless a sink's URL says format=: the"
        " EventEnvelope as protobuf bytes or as JSON",
    )
    relay: list[str] = Field(
        [],
        description="a relay declared at start, NAME=SINK, optionally"
        " ?namespace=NS&run_id_prefix=P&event_kinds=K1,K2: created unless it exists;"
        " repeatable",
    )
    relay_poll_interval: float = Field(
        1.0,
        gt=0,
        description="most seconds a relay waits before looking for events to forward when"
        " no commit wakes it",
    )
    relay_lease_duration: float = Field(
        5.0,
        gt=0,
        description="seconds a replica holds a relay without renewing its lease (PostgreSQL):"
        " how soon another replica takes over a relay whose replica died",
    )
    metrics_namespace_label: bool = Field(
        False,
        description="label the per-namespace store metrics (events appended, job counts,"
        " leases expired, jobs dead, checkpoints) with their namespace; off keeps one series"
        " per metric however many namespaces there are",
    )

    @property
    def auth_enabled(self) -> bool:
        """Whether any authentication is configured (tokens, JWT keys or certificates)."""
        return bool(self.auth_tokens_file or self.auth_jwt_keys or self.auth_mtls_permissions)

    @field_validator("http_listen")
    @classmethod
    def _check_http_listen(cls, value: str) -> str:
        if value:
            split_host_port(value)
        return value

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        if self.reflection == "authenticated" and not self.auth_enabled:
            raise ValueError(
                "--reflection=authenticated needs authentication: --auth-tokens-file,"
                " --auth-jwt-keys or --auth-mtls-permissions"
            )
        for flag, value in (
            ("--auth-jwt-issuer", self.auth_jwt_issuer),
            ("--auth-jwt-audience", self.auth_jwt_audience),
        ):
            if value and not self.auth_jwt_keys:
                raise ValueError(f"{flag} needs --auth-jwt-keys")
        if self.auth_mtls_permissions and not self.tls_client_ca:
            raise ValueError(
                "--auth-mtls-permissions needs --tls-client-ca: without it clients send no"
                " certificate"
            )
        return self


def split_host_port(listen: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) as (host, port); ValueError saying what is expected."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{listen!r} must be HOST:PORT, such as 127.0.0.1:9464 (port 0: any)")
    return host, int(port)
