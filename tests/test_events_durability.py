"""The event log across real server processes: restarts under a follower, and SIGKILL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

import statekeeper
from statekeeper.v1 import events_pb2
from tests.harness import ServerProcess, data_file
from tests.test_events_store import completed, custom, started

RUN = "run-1"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(data_file(tmp_path)).start()
    yield process
    process.stop()


@pytest.mark.parametrize("stop", ["terminate", "kill"])
async def test_client_replay_survives_a_server_restart_without_gap_or_duplicate(
    server: ServerProcess, stop: str
) -> None:
    delivered: list[int] = []
    first_half = asyncio.Event()

    async with statekeeper.AsyncClient(server.target) as client:
        await client.events.append_many(RUN, [started().event] + [custom().event] * 99)

        async def follow() -> None:
            async for envelope in client.events.replay(RUN):
                delivered.append(envelope.seq)
                if envelope.seq == 100:
                    first_half.set()

        follower = asyncio.create_task(follow())
        await asyncio.wait_for(first_half.wait(), 30)
        await asyncio.to_thread(getattr(server, stop))
        await asyncio.to_thread(server.start, server.port)
        async with statekeeper.AsyncClient(server.target) as writer:
            await asyncio.wait_for(writer.channel.channel_ready(), 30)
            for _ in range(10):
                await writer.events.append_many(RUN, [custom().event] * 10)
            await writer.events.append(RUN, completed().event)
        await asyncio.wait_for(follower, 60)

    assert delivered == list(range(1, 202))


async def test_appends_acknowledged_before_sigkill_are_all_kept(server: ServerProcess) -> None:
    async with statekeeper.AsyncClient(server.target) as client:

        async def appender(worker: int) -> list[events_pb2.EventEnvelope]:
            run_id = f"run-{worker % 3}"
            return [
                (await client.events.append(run_id, custom(worker=worker).event)) for _ in range(10)
            ] + await client.events.append_many(run_id, [custom(worker=worker).event] * 5)

        acknowledged = [
            e for batch in await asyncio.gather(*map(appender, range(20))) for e in batch
        ]
    server.kill()
    server.start()
    async with statekeeper.AsyncClient(server.target) as client:
        kept = [e for i in range(3) for e in await client.events.list(f"run-{i}", limit=1000)]
    key = lambda e: (e.run_id, e.seq)  # noqa: E731
    assert sorted(kept, key=key) == sorted(acknowledged, key=key)
    assert len(kept) == 300
