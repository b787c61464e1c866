"""The `statekeeper` command: `serve`, `health` for probes and debugging, and
`token create` for the static tokens file."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

log = logging.getLogger("statekeeper")


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field; only flags actually given override."""
    from statekeeper_server.config import Settings

    for name, field in Settings.model_fields.items():
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": field.description}
        if field.annotation is bool:
            kwargs["action"] = "store_true"
        elif typing.get_origin(field.annotation) is list:
            kwargs["action"] = "append"
        elif typing.get_origin(field.annotation) is typing.Literal:
            kwargs["choices"] = typing.get_args(field.annotation)
        elif field.annotation in (int, float):
            kwargs["type"] = field.annotation
        kwargs["help"] = f"{field.description} (default {field.default!r})"
        parser.add_argument("--" + name.replace("_", "-"), dest=name, **kwargs)


def freeze_startup_objects() -> int:
    """Move every object alive now out of the garbage collector's sight; return how many.

    What a server makes while starting (modules, descriptors, connections)
    lives as long as the process. Left in the collector's oldest generation,
    every full collection walks all of it again while calls wait: tens of
    milliseconds of stalled deliveries each time.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("%d objects from startup are out of the collector's sight", frozen)
    return frozen


async def _serve(overrides: dict[str, Any]) -> int:
    from pydantic import ValidationError

    from statekeeper_server.app import Application
    from statekeeper_server.config import Settings
    from statekeeper_server.logs import configure_logging
    from statekeeper_server.observability.access_log import log_formatter

    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for problem in settings_problems(exc):
            print(f"statekeeper serve: {problem}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, log_formatter(settings.log_format))
    app = Application(settings)
    try:
        await app.start()
    except Exception as exc:
        log.error("cannot start: %s", exc)
        return 1
    freeze_startup_objects()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        task = asyncio.create_task(app.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    if app.http_address:
        print(
            banner(f"HTTP side port listening on {app.http_address}", settings.log_format),
            file=sys.stderr,
            flush=True,
        )
    print(
        banner(f"statekeeper listening on {settings.listen}", settings.log_format),
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    await app.stop()
    return 0


def banner(text: str, log_format: str) -> str:
    """A line saying where the server serves (what supervisors and tests wait for), in
    the format of the log lines: a JSON object with `--log-format json`."""
    if log_format != "json":
        return text
    from statekeeper_server.observability.access_log import JsonFormatter

    record = logging.LogRecord("statekeeper", logging.INFO, __file__, 0, text, None, None)
    return JsonFormatter().format(record)


def _health_credentials(
    parser: argparse.ArgumentParser, args: dict[str, Any]
) -> grpc.ChannelCredentials | None:
    """The channel credentials the health flags ask for (None: plaintext); a usage
    error (exit status 2) for a lone --tls-cert or --tls-key or a file that cannot be read."""
    from statekeeper._credentials import channel_credentials

    if (args["tls_cert"] is None) != (args["tls_key"] is None):
        parser.error("--tls-cert and --tls-key go together")
    try:
        return channel_credentials(
            tls=args["tls"],
            root_certificates=args["tls_ca"],
            client_cert=args["tls_cert"],
            client_key=args["tls_key"],
        )
    except OSError as exc:
        parser.error(f"cannot read {exc.filename}: {exc.strerror}")


def settings_problems(error: Any) -> list[str]:
    """One line per problem of a pydantic ValidationError of Settings, naming the flag."""
    problems = []
    for problem in error.errors():
        message = str(problem["msg"]).removeprefix("Value error, ")
        location = [str(part) for part in problem["loc"]]
        if location:
            message = f"--{location[0].replace('_', '-')}: {message}"
        problems.append(message)
    return problems


def _create_token(args: dict[str, Any]) -> int:
    """Print a new token once, and the tokens-file entry that holds its digest; with
    `--add-to`, add the entry to that file and print only the token (for scripts)."""
    import datetime
    from pathlib import Path

    from statekeeper_server.auth.tokens import (
        add_entry,
        new_token,
        parse_expiry,
        render_entry,
        token_entry,
    )

    token = new_token()
    try:
        now = datetime.datetime.now(datetime.timezone.utc)
        expires = parse_expiry(args["expires"], now) if args["expires"] else None
        entry = token_entry(args["name"], token, args["permission"] or [], expires)
    except ValueError as exc:
        print(f"statekeeper token create: {exc}", file=sys.stderr)
        return 2
    if args["add_to"]:
        try:
            add_entry(Path(args["add_to"]), entry)
        except (ValueError, OSError) as exc:
            print(f"statekeeper token create: --add-to: {exc}", file=sys.stderr)
            return 2
        print(token)
        return 0
    print(f"Token for {args['name']} (shown only now; keep it secret, e.g. in STATEKEEPER_TOKEN):")
    print(token)
    print()
    print("Entry for the tokens file (it holds only the token's SHA-256):")
    print(render_entry(entry, args["format"]))
    return 0


def _token_commands(commands: Any) -> None:
    token = commands.add_parser("token", help="make tokens for --auth-tokens-file")
    actions = token.add_subparsers(dest="action", required=True)
    create = actions.add_parser(
        "create", help="print a new random token once, and the entry to paste into the file"
    )
    create.add_argument("--name", required=True, help="who the token is for (in logs)")
    create.add_argument(
        "--permission",
        action="append",
        metavar="NAMESPACE:ROLE",
        help="a permission such as acme:write or *:read (role read, write or admin);"
        " repeat for more",
    )
    create.add_argument(
        "--expires", help="DURATION (90d, 12h, 1w2d) or DATE (2026-12-31, UTC); default never"
    )
    create.add_argument(
        "--format", choices=("toml", "json"), default="toml", help="format of the tokens file"
    )
    create.add_argument(
        "--add-to",
        metavar="FILE",
        help="add the entry to this tokens file (TOML, or JSON for a .json name; created if"
        " missing) and print only the token",
    )


async def _health(
    target: str,
    service: str,
    deadline: float,
    credentials: grpc.ChannelCredentials | None,
    server_name: str,
) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if credentials is None:
        channel = grpc.aio.insecure_channel(target)
    else:
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.aio.secure_channel(target, credentials, options)
    async with channel:
        # The published stubs of grpc_health omit the stub's methods.
        stub: Any = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=deadline
            )
        except grpc.aio.AioRpcError as exc:
            print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


SWITCH_INTERVAL_SECONDS = 0.001


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `statekeeper` console script."""
    parser = argparse.ArgumentParser(prog="statekeeper", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gRPC server")
    health = commands.add_parser("health", help="ask a server's health service; exit 0 if SERVING")
    _token_commands(commands)
    health.add_argument("--target", default="127.0.0.1:50051", help="server address")
    health.add_argument("--service", default="", help="service name; empty for the whole server")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait")
    health.add_argument(
        "--tls", action="store_true", help="speak TLS, trusting the system's CAs (see --tls-ca)"
    )
    health.add_argument("--tls-ca", help="PEM CA certificates to trust instead (implies --tls)")
    health.add_argument(
        "--tls-cert", help="PEM client certificate for mutual TLS, with --tls-key (implies --tls)"
    )
    health.add_argument("--tls-key", help="PEM private key of --tls-cert")
    health.add_argument(
        "--tls-server-name",
        default="",
        help="name the server's certificate must hold, when not the target's host",
    )
    try:
        _settings_flags(serve)
    except ImportError as exc:
        print(
            f"the server needs its extra: pip install 'statekeeper[server]' ({exc})",
            file=sys.stderr,
        )
        return 2
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    if command == "serve":
        # A worker thread running Python (a store's writes, a large check) hands the
        # event loop the GIL after this long, not the default 5 ms: what another caller
        # may wait behind it.
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        return asyncio.run(_serve(args))
    if command == "token":
        return _create_token(args)
    credentials = _health_credentials(health, args)
    return asyncio.run(
        _health(
            args["target"], args["service"], args["timeout"], credentials, args["tls_server_name"]
        )
    )


if __name__ == "__main__":
    sys.exit(main())
