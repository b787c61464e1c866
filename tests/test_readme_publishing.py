"""The README's section on brokers works as written: a server with a NATS and a Redis
sink, relays created and an event appended with buf curl, and the Python consumer
of each broker receiving that event."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.brokers import jetstream_cleanup, redis_keys, unique
from tests.test_readme import PUBLISHING, free_port, sh_commands, stop, wait_for_port

BLOCKS = re.findall(r"```(sh|python)\n(.*?)```", PUBLISHING, flags=re.S)


async def run(command: list[str], stdin: str | None, env: dict[str, str]) -> str:
    """Run `command` (feeding it `stdin`); its output, failing the test if it fails."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin and stdin.encode()), 60)
    assert process.returncode == 0, f"{command}\n{stdin}\n{out.decode()}\n{err.decode()}"
    return out.decode()


def test_the_section_has_a_consumer_for_each_broker() -> None:
    consumers = [code for kind, code in BLOCKS if kind == "python" and "next_msg" in code]
    consumers += [code for kind, code in BLOCKS if kind == "python" and "xread" in code]
    assert [("import nats" in code, "import redis" in code) for code in consumers] == [
        (True, False),
        (False, True),
    ]


@pytest.mark.own_access_control
async def test_the_broker_examples_work_as_written(tmp_path: Path) -> None:
    buf = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    assert buf is not None
    # The examples' stream and keys, renamed to ones of this test's own.
    prefix = unique("sktest")
    stream = prefix.upper().replace("-", "_")
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    port, http_port = free_port(), free_port()
    server: asyncio.subprocess.Process | None = None
    outputs: list[str] = []
    async with jetstream_cleanup(stream), redis_keys(prefix):
        try:
            for kind, code in BLOCKS:
                code = code.replace("AGENT_EVENTS", stream).replace("agents", prefix)
                if kind == "python":
                    code = code.replace("127.0.0.1:50051", f"127.0.0.1:{port}")
                    outputs.append(await run([sys.executable, "-"], code, env))
                    continue
                for command in sh_commands(f"```sh\n{code}```"):
                    if command.startswith("statekeeper serve"):
                        server = await asyncio.create_subprocess_exec(
                            "bash",
                            "-c",
                            f"exec {command.strip()} --listen 127.0.0.1:{port}"
                            f" --http-listen 127.0.0.1:{http_port}",
                            cwd=tmp_path,
                            env=env,
                            stderr=asyncio.subprocess.DEVNULL,
                        )
                        await wait_for_port(port)
                        continue
                    runnable = command.replace("127.0.0.1:50051", f"127.0.0.1:{port}")
                    runnable = runnable.replace("buf curl", f"{buf} curl", 1)
                    await run(["bash", "-c", runnable], None, env)
        finally:
            await stop(server)
    assert server is not None, "the section starts no server"
    _, relays, from_nats, from_redis = outputs
    assert [line.split()[:2] for line in relays.splitlines()] == [
        ["to-nats", "events"],
        ["to-redis", "audit"],
    ]
    assert from_nats.split()[:2] == from_redis.split()[:2] == ["run-1", "1"]
