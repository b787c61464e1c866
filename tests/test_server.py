"""The server process: health, reflection, settings, shutdown and crashes."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import statekeeper
from statekeeper.v1 import snapshots_pb2
from statekeeper_server.config import Settings
from tests.harness import ServerProcess, data_file, running_app

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def snapshot(run_id: str) -> snapshots_pb2.Snapshot:
    return snapshots_pb2.Snapshot(
        run_id=run_id, session_id="session-1", status=snapshots_pb2.RUN_STATUS_RUNNING
    )


async def check(target: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service)
        )
    return reply.status


async def test_health_is_serving_overall_and_per_service() -> None:
    async with running_app("memory:") as app:
        target = f"127.0.0.1:{app.port}"
        assert await check(target) == SERVING
        assert await check(target, "statekeeper.v1.SnapshotService") == SERVING


async def test_health_of_unknown_service_is_not_found() -> None:
    async with running_app("memory:") as app:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await check(f"127.0.0.1:{app.port}", "no.such.Service")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_every_service() -> None:
    async with (
        running_app("memory:") as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [reply async for reply in stub.ServerReflectionInfo(iter([request]))]
    names = {service.name for service in replies[0].list_services_response.service}
    assert {"statekeeper.v1.SnapshotService", "grpc.health.v1.Health"} <= names


async def test_shutdown_turns_health_not_serving_before_closing() -> None:
    # The open Watch stream is an in-flight call: a short grace period ends it.
    async with (
        running_app("memory:", grace_period=0.5) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        first = await watch.read()
        stopping = asyncio.create_task(app.stop())
        second = await watch.read()
        await stopping
    assert (first.status, second.status) == (SERVING, NOT_SERVING)


def test_sigterm_exits_cleanly_with_code_zero(tmp_path: Path) -> None:
    server = ServerProcess(data_file(tmp_path)).start()
    try:
        assert server.terminate() == 0
    finally:
        server.stop()


async def test_snapshot_acknowledged_before_sigkill_survives_restart(tmp_path: Path) -> None:
    server = ServerProcess(data_file(tmp_path)).start()
    try:
        async with statekeeper.AsyncClient(server.target) as client:
            saved = await client.snapshots.save(snapshot("run-1"))
        server.kill()
        server.start()
        async with statekeeper.AsyncClient(server.target) as client:
            assert await client.snapshots.load("run-1") == saved
    finally:
        server.stop()


def test_serving_process_freezes_its_startup_objects_out_of_the_collector(
    tmp_path: Path,
) -> None:
    server = ServerProcess(data_file(tmp_path), "--log-level", "debug").start()
    try:
        frozen = [
            int(match.group(1))
            for line in server.startup_log
            if (match := re.search(r"(\d+) objects from startup are out of the collector", line))
        ]
    finally:
        server.stop()
    assert len(frozen) == 1
    assert frozen[0] > 1000


def test_second_server_on_the_same_file_fails_fast(tmp_path: Path) -> None:
    first = ServerProcess(data_file(tmp_path)).start()
    try:
        with pytest.raises(RuntimeError, match="in use by another statekeeper process"):
            ServerProcess(data_file(tmp_path)).start()
    finally:
        first.stop()


def test_unknown_store_url_fails_to_start_with_a_clear_message() -> None:
    with pytest.raises(RuntimeError, match="unknown store URL"):
        ServerProcess("redis://nowhere").start()


def test_flags_override_environment_and_environment_overrides_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STATEKEEPER_STORE", "memory:")
    monkeypatch.setenv("STATEKEEPER_LISTEN", "127.0.0.1:7000")
    settings = Settings(listen="127.0.0.1:8000")  # type: ignore[call-arg]
    assert (settings.store, settings.listen) == ("memory:", "127.0.0.1:8000")
    assert Settings().grace_period == 10.0  # type: ignore[call-arg]


def test_serve_help_lists_a_flag_for_every_setting() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "statekeeper_server", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in out


async def test_health_command_exits_zero_for_a_serving_server() -> None:
    async with running_app("memory:") as app:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "statekeeper_server",
            "health",
            "--target",
            f"127.0.0.1:{app.port}",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
    assert process.returncode == 0
    assert out.decode().strip() == "SERVING"


async def test_health_command_exits_non_zero_without_a_server() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "statekeeper_server",
        "health",
        "--target",
        "127.0.0.1:9",
        "--timeout",
        "0.5",
        stderr=asyncio.subprocess.PIPE,
    )
    await process.communicate()
    assert process.returncode == 1
