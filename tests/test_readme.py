"""The README tells the truth: its buf curl examples work and its settings table is complete."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest

from statekeeper_server.auth.roles import Role, role_table
from statekeeper_server.config import Settings
from tests.harness import running_app

README = (Path(__file__).parent.parent / "README.md").read_text()


ACCESS_CONTROL = README.split("\n## Access control\n", 1)[1].split("\n## ", 1)[0]
"""The README's section on access control: its examples need servers of their own."""

METRICS = README.split("\n## Metrics and health endpoints\n", 1)[1].split("\n## ", 1)[0]
"""The README's section on the HTTP side port: its examples need servers of their own."""

PUBLISHING = README.split("\n## Publishing to brokers\n", 1)[1].split("\n## ", 1)[0]
"""The README's section on brokers: its examples need a server with sinks (see
tests/test_readme_publishing.py)."""


def sh_commands(text: str) -> list[str]:
    """Every command of the sh blocks of `text`, in reading order."""
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        pending = ""
        for line in block.splitlines():
            if not pending and (not line.strip() or line.startswith("#")):
                continue
            pending += line + "\n"
            # A command ends at a line that closes every quote and does not continue.
            if pending.count("'") % 2 == 0 and not line.endswith("\\"):
                commands.append(pending)
                pending = ""
    return commands


def buf_curl_commands() -> list[str]:
    """Every `buf curl` command of the README's sh blocks outside the access control
    and broker sections, in reading order."""
    text = README.replace(ACCESS_CONTROL, "").replace(PUBLISHING, "")
    return [command for command in sh_commands(text) if command.startswith("buf curl")]


def test_readme_has_buf_curl_examples() -> None:
    assert len(buf_curl_commands()) >= 4


async def run_buf_curl(command: str, port: int) -> None:
    """Run the README's `buf curl` `command` against the server on `port` of loopback,
    checking that it succeeds."""
    # buf-bin (dev extra) installs buf beside the interpreter running the tests.
    buf = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    assert buf is not None, "buf comes with the dev extra (buf-bin)"
    runnable = command.replace("127.0.0.1:50051", f"127.0.0.1:{port}")
    runnable = runnable.replace("buf curl", f"{buf} curl", 1)
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        runnable,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, f"{command}\n{out.decode()}\n{err.decode()}"


# The examples are written for the open quickstart server: they send no token.
@pytest.mark.own_access_control
async def test_every_buf_curl_example_runs_against_a_real_server() -> None:
    async with running_app("memory:", heartbeat_interval=0.2) as app:
        for command in buf_curl_commands():
            await run_buf_curl(command, app.port)


def blocking_client_example() -> str:
    """The README's example of the blocking client (the python block after its marker)."""
    after = README.split("<!-- blocking-client-example -->", 1)[1]
    found = re.match(r"\s*```python\n(.*?)```", after, flags=re.S)
    assert found is not None
    return found.group(1)


async def test_the_blocking_client_example_runs_as_written() -> None:
    async with running_app("memory:") as app:
        script = blocking_client_example().replace("127.0.0.1:50051", f"127.0.0.1:{app.port}")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["1 False", "2 True", "NOT_FOUND SNAPSHOT_NOT_FOUND"]


def test_settings_table_lists_every_setting_with_its_flag_and_variable() -> None:
    for name in Settings.model_fields:
        flag = "--" + name.replace("_", "-")
        variable = "STATEKEEPER_" + name.upper()
        assert re.search(rf"\| `{flag}` \| `{variable}` \|", README), name


def test_quickstart_has_exactly_the_serve_and_test_commands() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)```", quickstart, flags=re.S)
    assert [c.strip() for c in commands] == [
        "pip install '.[server]' && statekeeper serve",
        "pip install -e '.[dev]' && pytest",
    ]


@pytest.mark.own_access_control
async def test_the_access_control_examples_work_as_written(tmp_path: Path) -> None:
    await run_section(ACCESS_CONTROL, tmp_path)


@pytest.mark.own_access_control
async def test_the_metrics_examples_work_as_written(tmp_path: Path) -> None:
    await run_section(METRICS, tmp_path)


async def run_section(section: str, directory: Path) -> None:
    """Run every command of the sh blocks of `section` in order, in `directory`: each
    `statekeeper serve` replaces the server before it (on free ports, the same store),
    and the commands after it reach its gRPC port (50051) and HTTP side port (9464)."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    server: asyncio.subprocess.Process | None = None
    port = http_port = 0
    try:
        for command in sh_commands(section):
            if command.startswith("statekeeper serve"):
                await stop(server)
                port, http_port = free_port(), free_port()
                server = await asyncio.create_subprocess_exec(
                    "bash",
                    "-c",
                    f"exec {command.strip()} --listen 127.0.0.1:{port}"
                    f" --http-listen 127.0.0.1:{http_port}",
                    cwd=directory,
                    env=env,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                await wait_for_port(port)
                await wait_for_port(http_port)
                continue
            runnable = re.sub(r"(127\.0\.0\.1|localhost):50051", rf"\1:{port}", command)
            runnable = re.sub(r"(127\.0\.0\.1|localhost):9464", rf"\1:{http_port}", runnable)
            process = await asyncio.create_subprocess_exec(
                "bash",
                "-c",
                runnable,
                cwd=directory,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0, f"{command}\n{out.decode()}\n{err.decode()}"
    finally:
        await stop(server)
    assert port, "the section starts no server"


async def stop(server: asyncio.subprocess.Process | None) -> None:
    """Stop a server started by a README command, if any."""
    if server is not None and server.returncode is None:
        server.terminate()
        await asyncio.wait_for(server.wait(), 30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for_port(port: int) -> None:
    """Return once something accepts connections on `port` (at most 30 s)."""
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise AssertionError(f"nothing listens on {port}")


def test_the_role_table_is_the_one_the_server_enforces() -> None:
    table = ACCESS_CONTROL.split("<!-- role-table -->", 1)[1].split("\n\n", 1)[0]
    documented: dict[str, Role] = {}
    rows = [line for line in table.splitlines() if line.startswith("|")]
    for line in rows[2:]:
        service, *by_role = (cell.strip() for cell in line.strip("|").split("|"))
        for role, cell in zip((Role.READ, Role.WRITE, Role.ADMIN), by_role, strict=True):
            for method in filter(None, (name.strip() for name in cell.split(","))):
                documented[f"/statekeeper.v1.{service}/{method}"] = role
    assert documented == dict(role_table())
