"""The processes under test: statekeeper and the echo reference, each its own process.

Both are started the same way (a fresh Python process on a free port of
127.0.0.1, ready once it prints `listening on`), so that the reference
pays exactly what statekeeper pays for being a separate process. Stores
are made per server: a fresh file in a temporary directory, memory, or a
fresh PostgreSQL schema that is dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
STORES = ("file", "postgres", "memory")


class ServerStartError(RuntimeError):
    """The server process exited or never said it was listening."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A server started as `argv` plus `--listen 127.0.0.1:PORT`."""

    name: str
    argv: list[str]
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables set for the process beside this process's own."""
    process: subprocess.Popen[str] | None = None
    log: deque[str] = field(default_factory=lambda: deque(maxlen=50))

    @property
    def target(self) -> str:
        """host:port to connect to."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.process is not None, "start() first"
        return self.process.pid

    def start(self, timeout: float = 60.0) -> ServerProcess:
        """Start the process and wait until it prints that it is listening."""
        self.port = free_port()
        self.process = subprocess.Popen(
            [*self.argv, "--listen", self.target],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
        )
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout
        for line in self.process.stderr:
            self.log.append(line.rstrip())
            if "listening on" in line:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(f"{self.name} did not start in {timeout:.0f} s")
        else:
            self.process.wait()
            raise ServerStartError(
                f"{self.name} exited with {self.process.returncode}: " + " | ".join(self.log)
            )
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        """Keep reading stderr so the server never blocks on a full pipe."""
        assert self.process is not None
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line.rstrip())

    def rss(self) -> int:
        """Resident memory of the server process, in bytes."""
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server has used so far."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within a few seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def echo_server() -> ServerProcess:
    """The bare grpc.aio reference server (bench/echo_server.py)."""
    return ServerProcess("echo", [sys.executable, str(ROOT / "bench" / "echo_server.py")])


SERVE = ("-m", "statekeeper_server")
"""How `python` runs the server (`bench/timed_server.py` runs it with its steps timed)."""


def statekeeper_server(
    store_url: str, *extra: str, launcher: Sequence[str] = SERVE
) -> ServerProcess:
    """`python -m statekeeper_server serve` (or `python <launcher> serve`) on `store_url`,
    logging warnings only, its HTTP side port (and so its call metrics) on, on a free port
    so servers never collide."""
    argv = [sys.executable, *launcher, "serve", "--store", store_url]
    flags = ["--log-level", "warning", "--grace-period", "1", "--http-listen", "127.0.0.1:0"]
    return ServerProcess("statekeeper", [*argv, *flags, *extra])


@contextlib.contextmanager
def store_url(kind: str) -> Iterator[str]:
    """A fresh, empty store of `kind` for one server; removed afterwards."""
    if kind == "memory":
        yield "memory:"
    elif kind == "file":
        directory = tempfile.mkdtemp(prefix="statekeeper-bench-")
        try:
            yield f"file:{directory}/statekeeper.db"
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    elif kind == "postgres":
        schema = f"bench_{secrets.token_hex(4)}"
        try:
            yield f"{POSTGRES_URL}?schema={schema}"
        finally:
            drop_postgres_schema(schema)
    else:
        raise ValueError(f"unknown store {kind!r}: use one of {', '.join(STORES)}")


def drop_postgres_schema(schema: str) -> None:
    """DROP SCHEMA ... CASCADE, ignoring an unreachable database."""
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    with contextlib.suppress(OSError, asyncpg.PostgresError, asyncio.TimeoutError):
        asyncio.run(drop())


@contextlib.contextmanager
def statekeeper(
    kind: str,
    *extra: str,
    env: Mapping[str, str] | None = None,
    launcher: Sequence[str] = SERVE,
) -> Iterator[ServerProcess]:
    """A statekeeper server on a fresh store of `kind`, stopped and cleaned up after;
    `env` is set in its environment; `launcher` as for `statekeeper_server`."""
    with store_url(kind) as url:
        process = statekeeper_server(url, *extra, launcher=launcher)
        process.env.update(env or {})
        with process as server:
            yield server


@dataclass
class ExternalProcess:
    """A server this benchmark did not start (Redis, NATS), watched for its CPU."""

    name: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the process has used so far."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)


def listening_process(name: str, port: int) -> ExternalProcess | None:
    """The local process listening on TCP `port`, if it can be found."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                return ExternalProcess(name, conn.pid)
    return None


class RssSampler:
    """Samples a process's RSS in a thread; `peak` and `samples` afterwards."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.samples: list[int] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.samples.append(int(self._process.memory_info().rss))
            self._stop.wait(self._interval)

    @property
    def peak(self) -> int:
        """Largest RSS seen, in bytes."""
        return max(self.samples, default=0)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
