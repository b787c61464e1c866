"""A runtime in another language works statekeeper: the TypeScript client of
clients/typescript (@grpc/grpc-js, types generated from protos/) type-checks and
passes its suite against a real server: appends under expectations, replays and
follows runs (resuming from a seq), works jobs with heartbeats, recovers agent
checkpoints and reads ErrorInfo and BadRequest from grpc-status-details-bin.

Its dependencies come from the committed lockfile (`npm ci` in clients/typescript,
a step of .ci/run). Without node, npm or those dependencies the test fails under CI
and is skipped elsewhere, saying what to install.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

from tests.harness import running_app
from tests.unavailable import skip_or_fail

CLIENT = Path(__file__).resolve().parent.parent / "clients" / "typescript"
NODE_SUITE_TIMEOUT = 100.0
"""Seconds the build (types, tsc) and the node suite get together."""


def npm_or_why_not() -> str:
    """The npm executable, once node, npm and the locked dependencies are installed."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        problem = "node and npm are not installed (Debian: apt-get install nodejs npm)"
    elif not (CLIENT / "node_modules" / ".package-lock.json").exists():
        problem = f"the TypeScript client's dependencies are not installed: (cd {CLIENT} && npm ci)"
    else:
        return npm
    skip_or_fail(problem)


async def test_the_typescript_client_suite_passes_against_a_real_server() -> None:
    npm = npm_or_why_not()
    async with running_app("memory:") as app:
        # STATEKEEPER_TOKEN passes through: the run with access control sets it.
        process = await asyncio.create_subprocess_exec(
            npm,
            "test",
            cwd=CLIENT,
            env={**os.environ, "STATEKEEPER_TARGET": f"127.0.0.1:{app.port}"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(), NODE_SUITE_TIMEOUT)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    report = out.decode(errors="replace")
    assert process.returncode == 0, report
    # node's test runner closes with its counts (TAP): tests ran, none failed.
    passed = re.search(r"^# pass (\d+)$", report, re.M)
    assert passed is not None, report
    assert int(passed.group(1)) > 0, report
    assert re.search(r"^# fail 0$", report, re.M), report
