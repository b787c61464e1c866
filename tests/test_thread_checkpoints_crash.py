"""Thread checkpoints and writes acknowledged before a SIGKILL survive a restart."""

from __future__ import annotations

from pathlib import Path

import statekeeper
from tests.harness import ServerProcess, data_file


async def test_thread_checkpoints_acknowledged_before_sigkill_survive_a_restart(
    tmp_path: Path,
) -> None:
    server = ServerProcess(data_file(tmp_path)).start()
    try:
        async with statekeeper.AsyncClient(server.target) as client:
            for step in range(10):
                await client.threads.put_checkpoint(
                    "t-1",
                    f"cp-{step:02d}",
                    ("b", bytes([step]) * 100),
                    ("json", b"{}"),
                    parent_checkpoint_id=f"cp-{step - 1:02d}" if step else "",
                    channel_versions={"c": str(step)},
                    new_channel_values={("c", str(step)): ("b", bytes([step]))},
                )
            await client.threads.put_writes("t-1", "cp-09", "task", [("c", 0, ("b", b"w"))])
            before = await client.threads.get_checkpoint("t-1")
        server.kill()
        server.start()
        async with statekeeper.AsyncClient(server.target) as client:
            after = await client.threads.get_checkpoint("t-1")
            history = [c.checkpoint_id async for c in client.threads.list_checkpoints("t-1")]
    finally:
        server.stop()

    assert before is not None
    assert after == before
    assert [w.value.data for w in after.pending_writes] == [b"w"]
    assert history == [f"cp-{step:02d}" for step in reversed(range(10))]
