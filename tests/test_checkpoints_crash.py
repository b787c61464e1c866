"""An acknowledged checkpoint survives a SIGKILL of the server process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import statekeeper
from statekeeper.v1 import checkpoints_pb2
from tests.harness import ServerProcess, data_file


async def test_checkpoints_acknowledged_before_sigkill_survive_a_restart(tmp_path: Path) -> None:
    server = ServerProcess(data_file(tmp_path)).start()
    try:
        async with statekeeper.AsyncClient(server.target) as client:
            saved = [
                await client.checkpoints.save_workflow("run-1", "wf", step=step)
                for step in range(10)
            ]
            persisted = await asyncio.gather(
                *(
                    client.checkpoints.persist_agent(
                        f"agent-{n}", checkpoints_pb2.AGENT_STATE_ACTIVE, app_state={"n": n}
                    )
                    for n in range(10)
                )
            )
        server.kill()
        server.start()
        async with statekeeper.AsyncClient(server.target) as client:
            loaded = await client.checkpoints.load_workflow("run-1")
            history = [c async for c in client.checkpoints.list_workflow("run-1")]
            recovered = [
                (await client.checkpoints.recover_agent(f"agent-{n}")).checkpoint for n in range(10)
            ]
    finally:
        server.stop()

    assert loaded.checkpoint == saved[-1]
    assert history == list(reversed(saved))
    assert recovered == persisted
