"""The README tells the truth: its buf curl examples work and its settings table is complete."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path

from statekeeper_server.config import Settings
from tests.harness import running_app

README = (Path(__file__).parent.parent / "README.md").read_text()


def buf_curl_commands() -> list[str]:
    """Every `buf curl` command of the README's sh blocks, in reading order."""
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", README, flags=re.S):
        pending = ""
        for line in block.splitlines():
            if not pending and (not line.strip() or line.startswith("#")):
                continue
            pending += line + "\n"
            # A command ends at a line that closes every quote and does not continue.
            if pending.count("'") % 2 == 0 and not line.endswith("\\"):
                if pending.startswith("buf curl"):
                    commands.append(pending)
                pending = ""
    return commands


def test_readme_has_buf_curl_examples() -> None:
    assert len(buf_curl_commands()) >= 4


async def test_every_buf_curl_example_runs_against_a_real_server() -> None:
    # buf-bin (dev extra) installs buf beside the interpreter running the tests.
    buf = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    assert buf is not None, "buf comes with the dev extra (buf-bin)"
    async with running_app("memory:", heartbeat_interval=0.2) as app:
        for command in buf_curl_commands():
            runnable = command.replace("127.0.0.1:50051", f"127.0.0.1:{app.port}")
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
