"""A PostgreSQL server of the tests' own, to restart and reconfigure at will.

The machine's shared server (tests/postgres_harness.py) serves every test at
once, so no test may restart it or change its settings. `private_postgres()`
starts a throwaway cluster instead: `initdb` in a temporary directory, on a
free loopback port, removed on exit. Without PostgreSQL's server programs it
skips the test (fails it in CI, `CI=true`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from tests.unavailable import skip_or_fail

SUPERUSER = "postgres"


def _server_programs() -> Path | None:
    """The directory holding initdb and pg_ctl, if PostgreSQL's server is installed."""
    pg_ctl = shutil.which("pg_ctl")
    candidates = [Path(pg_ctl).resolve().parent] if pg_ctl else []
    candidates += [Path(found) for found in sorted(glob.glob("/usr/lib/postgresql/*/bin"))[::-1]]
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivatePostgres:
    """One running cluster of this test's own: its URL, restarts, settings."""

    def __init__(self, programs: Path, root: Path) -> None:
        self._programs = programs
        self._root = root
        self._data = root / "data"
        self.port = _free_port()

    def url(self, schema: str) -> str:
        """The store URL of `schema` on this server (as the superuser)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres?schema={schema}"

    def create(self) -> None:
        """Make the cluster (initdb) and start it."""
        self._run("initdb", "-D", str(self._data), "-A", "trust", "-U", SUPERUSER, "--no-sync")
        self.start()

    def start(self) -> None:
        """Start the server (again, after `stop`) and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self._root} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c shared_buffers=16MB -c max_connections=60"
        )
        self._pg_ctl("start", "-o", options)

    def restart(self) -> None:
        """Fast restart, as an administrator would: every session is ended, then the
        server is down for a moment and comes back."""
        self._pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        """Stop the server at once."""
        self._pg_ctl("stop", "-m", "immediate")

    async def execute(self, statement: str) -> None:
        """Run one statement as the superuser, outside any store."""
        conn = await asyncpg.connect(
            f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres", timeout=10
        )
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    def _pg_ctl(self, action: str, *args: str) -> None:
        log = str(self._root / "server.log")
        self._run("pg_ctl", action, "-D", str(self._data), "-l", log, "-w", "-t", "60", *args)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self._programs / program), *args]
        if os.geteuid() == 0:  # the server refuses to run as root
            command = ["runuser", "-u", SUPERUSER, "--", *command]
        # Not a pipe: the server started would inherit it and keep it open.
        with open(self._root / "commands.log", "ab") as output:
            subprocess.run(command, check=True, timeout=120, stdout=output, stderr=output)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A fresh cluster of this test's own, running; stopped and removed on exit."""
    programs = _server_programs()
    if programs is None:
        problem = "PostgreSQL's server programs (initdb, pg_ctl) are not installed"
        skip_or_fail(problem)
    root = Path(tempfile.mkdtemp(prefix="statekeeper-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, SUPERUSER)
    server = PrivatePostgres(programs, root)
    try:
        server.create()
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
