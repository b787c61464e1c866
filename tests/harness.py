"""Real servers for end-to-end tests: in-process, or as a separate process.

Both bind port 0 (with `grpc.so_reuseport` off, set by the application) so
tests never collide on a port. In the suite's run with access control on
(`STATEKEEPER_TEST_AUTH`, see tests/suite_access.py) both demand the suite's
token, unless the test configures access control itself.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

from statekeeper_server.app import Application
from statekeeper_server.config import Settings
from tests import suite_access


@contextlib.asynccontextmanager
async def running_app(store_url: str, **settings: object) -> AsyncIterator[Application]:
    """An Application serving `store_url` on a free port of 127.0.0.1.

    Its grace period is half a second unless given: a test's calls are over
    when it stops the server, and a short grace keeps the drain short. Its
    HTTP side port takes a free port of 127.0.0.1 unless given (`app.http_port`).
    """
    settings.setdefault("grace_period", 0.5)
    settings.setdefault("http_listen", "127.0.0.1:0")
    access = suite_access.active()
    if access is not None:
        access.add_to_settings(settings)
    app = Application(Settings(listen="127.0.0.1:0", store=store_url, **settings))  # type: ignore[arg-type]
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


class ServerProcess:
    """`statekeeper serve` in its own process, for restarts and crashes.

    By default the server's stderr is echoed to the test's stderr. With
    `capture_log=True` every line it writes (startup included) is kept in
    `log` instead, undecodable bytes escaped, so a test can inspect it.
    Its HTTP side port takes a free port (`http_port`) unless `--http-listen` is
    among the extra arguments.
    """

    def __init__(self, store_url: str, *extra_args: str, capture_log: bool = False) -> None:
        self.store_url = store_url
        self.extra_args = extra_args
        self.capture_log = capture_log
        self.port = 0
        self.http_port = 0
        """The port of the HTTP side port once started (0 when it is off)."""
        self.process: subprocess.Popen[str] | None = None
        self.startup_log: list[str] = []
        """What the server wrote to stderr until it was listening."""
        self.log: list[str] = []
        """With `capture_log`: every line the server wrote to stderr, in order."""

    @property
    def target(self) -> str:
        """host:port of the running server."""
        return f"127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> ServerProcess:
        """Start the server (on `port`, or a free one) and wait until it serves."""
        listen_port = port or self.port or _free_port()
        access = suite_access.active()
        access_flags = [] if access is None else access.server_flags(self.extra_args)
        http_flags = [] if "--http-listen" in self.extra_args else ["--http-listen", "127.0.0.1:0"]
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "statekeeper_server",
                "serve",
                "--listen",
                f"127.0.0.1:{listen_port}",
                "--store",
                self.store_url,
                "--grace-period",
                "2",
                *http_flags,
                *self.extra_args,
                *access_flags,
            ],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.port = listen_port
        assert self.process.stderr is not None
        if self.capture_log:
            # Keep every byte the server wrote: no newline translation (a stray
            # carriage return stays visible), undecodable bytes escaped.
            self.process.stderr = io.TextIOWrapper(
                cast(io.TextIOWrapper, self.process.stderr).detach(),
                encoding="utf-8",
                errors="backslashreplace",
                newline="",
            )
        deadline = time.monotonic() + 20
        lines: list[str] = []
        self.http_port = 0
        for line in self.process.stderr:
            lines.append(line)
            # Plain lines, or JSON objects with `--log-format json`.
            http = re.search(r"HTTP side port listening on [^\s\"]*:(\d+)", line)
            if http:
                self.http_port = int(http.group(1))
            if "statekeeper listening on" in line:
                break
            if time.monotonic() > deadline:
                break
        else:
            raise RuntimeError("server exited before serving:\n" + "".join(lines))
        self.startup_log = lines
        if self.capture_log:
            self.log.extend(lines)
            _drain(self.process, self.log)
        else:
            _drain(self.process)
        return self

    def rss_bytes(self) -> int:
        """The resident memory of the running server process, in bytes (Linux)."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert kib is not None, "no VmRSS in /proc status"
        return int(kib.group(1)) * 1024

    def kill(self) -> None:
        """SIGKILL: the process dies with no chance to clean up."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int:
        """SIGTERM, then wait for the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def stop(self) -> None:
        """Make sure the process is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def _drain(process: subprocess.Popen[str], into: list[str] | None = None) -> None:
    """Keep reading the server's stderr so its log lines never block it.

    Lines are echoed to our stderr, or appended to `into` when given.
    """
    import threading

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if into is None:
                sys.stderr.write("[server] " + line)
            else:
                into.append(line)

    threading.Thread(target=pump, daemon=True).start()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def data_file(tmp_path: Path) -> str:
    """A file store URL inside the test's temporary directory."""
    return f"file:{tmp_path / 'statekeeper.db'}"
