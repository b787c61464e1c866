"""CheckpointService end to end: a real server on a free port, through the client."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

import statekeeper
from statekeeper.v1 import checkpoints_pb2, checkpoints_pb2_grpc
from tests.harness import data_file, running_app
from tests.rpc_errors import bad_request_fields, error_info

BAD_IDS = [
    pytest.param("../../etc/passwd", id="path"),
    pytest.param("", id="empty"),
    pytest.param("r" * 129, id="too-long"),
    pytest.param("has space", id="space"),
]
BAD_CHECKPOINT_IDS = [p for p in BAD_IDS if p.id != "empty"]
"""An empty checkpoint id is valid where one is optional: it means the newest."""


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[statekeeper.AsyncClient]:
    async with (
        running_app(store_url) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as connected,
    ):
        yield connected


@pytest.fixture
def stub(client: statekeeper.AsyncClient) -> checkpoints_pb2_grpc.CheckpointServiceStub:
    return checkpoints_pb2_grpc.CheckpointServiceStub(client.channel)


async def invalid_field(call: Any) -> list[str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return bad_request_fields(caught.value)


# -- resuming a workflow, recovering an agent ----------------------------------------


async def test_a_workflow_resumes_from_its_newest_checkpoint(
    client: statekeeper.AsyncClient,
) -> None:
    cps = client.checkpoints
    await cps.save_workflow("run-1", "wf", step=1, next_node_id="plan", scope_snapshot={"q": "x"})
    saved = await cps.save_workflow(
        "run-1",
        "wf",
        step=2,
        next_node_id="tool",
        scope_snapshot={"input": {"k": "v"}, "hits": [1, 2]},
        metadata={"stage": "tools"},
    )

    loaded = (await cps.load_workflow("run-1")).checkpoint

    assert loaded == saved
    assert (loaded.step, loaded.next_node_id) == (2, "tool")
    assert json_format.MessageToDict(loaded.scope_snapshot) == {
        "input": {"k": "v"},
        "hits": [1, 2],
    }


async def test_an_agent_recovers_its_newest_state(client: statekeeper.AsyncClient) -> None:
    cps = client.checkpoints
    await cps.persist_agent("agent-1", checkpoints_pb2.AGENT_STATE_READY, app_state={"v": 1})
    saved = await cps.persist_agent(
        "agent-1",
        checkpoints_pb2.AGENT_STATE_STOPPING,
        app_state={"v": 2},
        in_flight_tasks=5,
        reason="shutdown",
        custom=["a", {"b": True}],
    )

    recovered = await cps.recover_agent("agent-1")

    assert recovered.checkpoint == saved
    assert recovered.checkpoint.metadata.version == 1
    assert json_format.MessageToDict(recovered.checkpoint.metadata.custom) == ["a", {"b": True}]
    assert list(recovered.skipped_checkpoint_ids) == []


async def test_the_blocking_client_saves_and_loads_checkpoints(store_url: str) -> None:
    async with running_app(store_url) as app:

        def use_blocking_client() -> tuple[str, str]:
            with statekeeper.Client(f"127.0.0.1:{app.port}") as blocking:
                saved = blocking.checkpoints.save_workflow("run-1", "wf", step=4)
                loaded = blocking.checkpoints.load_workflow("run-1").checkpoint
                return saved.checkpoint_id, loaded.checkpoint_id

        saved_id, loaded_id = await asyncio.to_thread(use_blocking_client)
    assert saved_id == loaded_id


async def test_list_workflow_iterates_a_runs_history_across_pages(
    client: statekeeper.AsyncClient,
) -> None:
    for step in range(7):
        await client.checkpoints.save_workflow("run-1", "wf", step=step)
    steps = [c.step async for c in client.checkpoints.list_workflow("run-1", page_size=3)]
    assert steps == [6, 5, 4, 3, 2, 1, 0]


async def test_list_workflow_without_run_filters_newest_per_run_by_metadata(
    client: statekeeper.AsyncClient,
) -> None:
    cps = client.checkpoints
    await cps.save_workflow("run-1", "ingest", metadata={"team": "a", "priority": 1})
    await cps.save_workflow("run-2", "ingest", metadata={"team": "b", "priority": 1})
    await cps.save_workflow("run-3", "review", metadata={"team": "a", "priority": 1})

    listed = [
        c.run_id async for c in cps.list_workflow(workflow_name="ingest", metadata={"priority": 1})
    ]
    team_a = [c.run_id async for c in cps.list_workflow(metadata={"team": "a"})]

    assert listed == ["run-1", "run-2"]
    assert team_a == ["run-1", "run-3"]


async def test_list_agent_iterates_history_newest_first(client: statekeeper.AsyncClient) -> None:
    for n in range(4):
        await client.checkpoints.persist_agent(
            "agent-1", checkpoints_pb2.AGENT_STATE_ACTIVE, app_state={"n": n}
        )
    listed = [c.app_state["n"] async for c in client.checkpoints.list_agent("agent-1", page_size=3)]
    assert listed == [3, 2, 1, 0]


async def test_list_agents_iterates_every_agents_newest_checkpoint_in_id_order(
    client: statekeeper.AsyncClient,
) -> None:
    for agent_id in ("agent-c", "agent-a", "agent-b", "agent-d"):
        for n in range(2):
            await client.checkpoints.persist_agent(
                agent_id, checkpoints_pb2.AGENT_STATE_ACTIVE, app_state={"n": n}
            )
    listed = [
        (c.agent_id, c.app_state["n"]) async for c in client.checkpoints.list_agents(page_size=3)
    ]
    assert listed == [("agent-a", 1), ("agent-b", 1), ("agent-c", 1), ("agent-d", 1)]


async def test_list_agents_with_a_prefix_lists_only_matching_agents(
    client: statekeeper.AsyncClient,
) -> None:
    for agent_id in ("planner-1", "planner-2", "plan", "worker-1"):
        await client.checkpoints.persist_agent(agent_id, checkpoints_pb2.AGENT_STATE_READY)
    listed = [c.agent_id async for c in client.checkpoints.list_agents("planner-", page_size=1)]
    assert listed == ["planner-1", "planner-2"]


async def test_the_blocking_client_lists_agents(store_url: str) -> None:
    async with running_app(store_url) as app:

        def use_blocking_client() -> list[str]:
            with statekeeper.Client(f"127.0.0.1:{app.port}") as blocking:
                blocking.checkpoints.persist_agent("agent-1", checkpoints_pb2.AGENT_STATE_READY)
                return [c.agent_id for c in blocking.checkpoints.list_agents()]

        listed = await asyncio.to_thread(use_blocking_client)
    assert listed == ["agent-1"]


async def test_deletes_report_how_many_checkpoints_went(client: statekeeper.AsyncClient) -> None:
    cps = client.checkpoints
    await cps.save_workflow("run-1", "wf")
    await cps.save_workflow("run-1", "wf")
    await cps.persist_agent("agent-1", checkpoints_pb2.AGENT_STATE_ACTIVE)

    assert await cps.delete_workflow("run-1") == 2
    assert await cps.delete_workflow("run-1") == 0
    assert await cps.delete_agent("agent-1") == 1


async def test_save_retention_keeps_the_last_n(client: statekeeper.AsyncClient) -> None:
    for step in range(5):
        await client.checkpoints.save_workflow("run-1", "wf", step=step, keep_last=2)
    steps = [c.step async for c in client.checkpoints.list_workflow("run-1")]
    assert steps == [4, 3]


async def test_namespaces_do_not_see_each_others_checkpoints(store_url: str) -> None:
    async with running_app(store_url) as app:
        target = f"127.0.0.1:{app.port}"
        async with (
            statekeeper.AsyncClient(target, namespace="tenant-a") as tenant_a,
            statekeeper.AsyncClient(target, namespace="tenant-b") as tenant_b,
        ):
            await tenant_a.checkpoints.save_workflow("run-1", "wf")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await tenant_b.checkpoints.load_workflow("run-1")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# -- errors on the wire ---------------------------------------------------------------


async def test_missing_run_is_not_found_with_reason(client: statekeeper.AsyncClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.checkpoints.load_workflow("missing")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(caught.value)
    assert (info.reason, info.metadata["run_id"]) == ("NO_CHECKPOINT", "missing")


async def test_missing_agent_is_not_found_with_reason(client: statekeeper.AsyncClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.checkpoints.recover_agent("agent-x")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).reason == "NO_CHECKPOINT"


async def test_parent_conflict_is_aborted_with_the_actual_parent(
    client: statekeeper.AsyncClient,
) -> None:
    first = await client.checkpoints.save_workflow("run-1", "wf", expected_parent="")
    second = await client.checkpoints.save_workflow(
        "run-1", "wf", step=1, expected_parent=first.checkpoint_id
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.checkpoints.save_workflow(
            "run-1", "wf", step=2, expected_parent=first.checkpoint_id
        )

    assert caught.value.code() == grpc.StatusCode.ABORTED
    info = error_info(caught.value)
    assert info.reason == "PARENT_MISMATCH"
    assert info.metadata["actual_parent"] == second.checkpoint_id


async def test_corrupt_checkpoint_is_data_loss_and_fallback_recovers(tmp_path: Path) -> None:
    url = data_file(tmp_path)
    async with running_app(url) as app, statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as c:
        good = await c.checkpoints.persist_agent("agent-1", checkpoints_pb2.AGENT_STATE_ACTIVE)
        bad = await c.checkpoints.persist_agent("agent-1", checkpoints_pb2.AGENT_STATE_PAUSED)
    conn = sqlite3.connect(tmp_path / "statekeeper.db")
    with conn:
        conn.execute(
            "UPDATE agent_checkpoints SET data = x'0a0b0c' WHERE checkpoint_id = ?",
            (bad.checkpoint_id,),
        )
    conn.close()

    async with running_app(url) as app, statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as c:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await c.checkpoints.recover_agent("agent-1")
        recovered = await c.checkpoints.recover_agent("agent-1", fallback_to_readable=True)

    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    info = error_info(caught.value)
    assert (info.reason, info.metadata["checkpoint_id"]) == (
        "CORRUPT_CHECKPOINT",
        bad.checkpoint_id,
    )
    assert recovered.checkpoint == good
    assert list(recovered.skipped_checkpoint_ids) == [bad.checkpoint_id]


@pytest.mark.parametrize("bad_id", BAD_IDS)
async def test_invalid_run_id_is_invalid_argument_naming_the_field(
    stub: checkpoints_pb2_grpc.CheckpointServiceStub, bad_id: str
) -> None:
    save = checkpoints_pb2.SaveWorkflowCheckpointRequest(
        checkpoint=checkpoints_pb2.WorkflowCheckpoint(run_id=bad_id, workflow_name="wf")
    )
    assert await invalid_field(stub.SaveWorkflowCheckpoint(save)) == ["checkpoint.run_id"]
    load = checkpoints_pb2.LoadWorkflowCheckpointRequest(run_id=bad_id)
    assert await invalid_field(stub.LoadWorkflowCheckpoint(load)) == ["run_id"]
    delete = checkpoints_pb2.DeleteWorkflowCheckpointsRequest(run_id=bad_id)
    assert await invalid_field(stub.DeleteWorkflowCheckpoints(delete)) == ["run_id"]


@pytest.mark.parametrize("bad_id", BAD_IDS)
async def test_invalid_agent_id_is_invalid_argument_naming_the_field(
    stub: checkpoints_pb2_grpc.CheckpointServiceStub, bad_id: str
) -> None:
    persist = checkpoints_pb2.PersistAgentCheckpointRequest(
        checkpoint=checkpoints_pb2.AgentCheckpoint(
            agent_id=bad_id, agent_state=checkpoints_pb2.AGENT_STATE_ACTIVE
        )
    )
    assert await invalid_field(stub.PersistAgentCheckpoint(persist)) == ["checkpoint.agent_id"]
    recover = checkpoints_pb2.RecoverAgentCheckpointRequest(agent_id=bad_id)
    assert await invalid_field(stub.RecoverAgentCheckpoint(recover)) == ["agent_id"]
    listing = checkpoints_pb2.ListAgentCheckpointsRequest(agent_id=bad_id)
    assert await invalid_field(stub.ListAgentCheckpoints(listing)) == ["agent_id"]
    delete = checkpoints_pb2.DeleteAgentCheckpointsRequest(agent_id=bad_id)
    assert await invalid_field(stub.DeleteAgentCheckpoints(delete)) == ["agent_id"]


@pytest.mark.parametrize("bad_prefix", BAD_CHECKPOINT_IDS)
async def test_invalid_agent_id_prefix_is_invalid_argument_naming_the_field(
    stub: checkpoints_pb2_grpc.CheckpointServiceStub, bad_prefix: str
) -> None:
    listing = checkpoints_pb2.ListAgentsRequest(agent_id_prefix=bad_prefix)
    assert await invalid_field(stub.ListAgents(listing)) == ["agent_id_prefix"]


async def test_list_agents_with_a_negative_page_size_is_invalid_argument_naming_it(
    stub: checkpoints_pb2_grpc.CheckpointServiceStub,
) -> None:
    listing = checkpoints_pb2.ListAgentsRequest(page_size=-1)
    assert await invalid_field(stub.ListAgents(listing)) == ["page_size"]


@pytest.mark.parametrize("bad_id", BAD_CHECKPOINT_IDS)
async def test_invalid_checkpoint_ids_are_invalid_argument_naming_the_field(
    stub: checkpoints_pb2_grpc.CheckpointServiceStub, bad_id: str
) -> None:
    load = checkpoints_pb2.LoadWorkflowCheckpointRequest(run_id="run-1", checkpoint_id=bad_id)
    assert await invalid_field(stub.LoadWorkflowCheckpoint(load)) == ["checkpoint_id"]
    listing = checkpoints_pb2.ListWorkflowCheckpointsRequest(run_id="run-1", before=bad_id)
    assert await invalid_field(stub.ListWorkflowCheckpoints(listing)) == ["before"]
    save = checkpoints_pb2.SaveWorkflowCheckpointRequest(
        checkpoint=checkpoints_pb2.WorkflowCheckpoint(run_id="run-1", workflow_name="wf"),
        expected_parent=bad_id,
    )
    assert await invalid_field(stub.SaveWorkflowCheckpoint(save)) == ["expected_parent"]


async def test_text_holding_nul_is_invalid_argument_naming_the_field(
    stub: checkpoints_pb2_grpc.CheckpointServiceStub,
) -> None:
    named = checkpoints_pb2.SaveWorkflowCheckpointRequest(
        checkpoint=checkpoints_pb2.WorkflowCheckpoint(run_id="run-1", workflow_name="w\x00f")
    )
    assert await invalid_field(stub.SaveWorkflowCheckpoint(named)) == ["checkpoint.workflow_name"]
    tagged = checkpoints_pb2.SaveWorkflowCheckpointRequest(
        checkpoint=checkpoints_pb2.WorkflowCheckpoint(run_id="run-1", workflow_name="wf")
    )
    tagged.checkpoint.metadata.update({"notes": ["ok", "a\x00b"]})
    assert await invalid_field(stub.SaveWorkflowCheckpoint(tagged)) == ["checkpoint.metadata"]
    by_name = checkpoints_pb2.ListWorkflowCheckpointsRequest(workflow_name="w\x00f")
    assert await invalid_field(stub.ListWorkflowCheckpoints(by_name)) == ["workflow_name"]
    by_value = checkpoints_pb2.ListWorkflowCheckpointsRequest()
    by_value.metadata_filter.update({"stage": "a\x00b"})
    assert await invalid_field(stub.ListWorkflowCheckpoints(by_value)) == ["metadata_filter.stage"]


async def test_malformed_requests_name_the_offending_field(
    stub: checkpoints_pb2_grpc.CheckpointServiceStub,
) -> None:
    no_name = checkpoints_pb2.SaveWorkflowCheckpointRequest(
        checkpoint=checkpoints_pb2.WorkflowCheckpoint(run_id="run-1")
    )
    assert await invalid_field(stub.SaveWorkflowCheckpoint(no_name)) == ["checkpoint.workflow_name"]
    negative_ttl = checkpoints_pb2.SaveWorkflowCheckpointRequest(
        checkpoint=checkpoints_pb2.WorkflowCheckpoint(run_id="run-1", workflow_name="wf"),
        retention=checkpoints_pb2.CheckpointRetention(ttl={"seconds": -1}),
    )
    assert await invalid_field(stub.SaveWorkflowCheckpoint(negative_ttl)) == ["retention.ttl"]
    no_state = checkpoints_pb2.PersistAgentCheckpointRequest(
        checkpoint=checkpoints_pb2.AgentCheckpoint(agent_id="agent-1")
    )
    assert await invalid_field(stub.PersistAgentCheckpoint(no_state)) == ["checkpoint.agent_state"]
    before_without_run = checkpoints_pb2.ListWorkflowCheckpointsRequest(before="cp-1")
    assert await invalid_field(stub.ListWorkflowCheckpoints(before_without_run)) == ["before"]
    nested_filter = checkpoints_pb2.ListWorkflowCheckpointsRequest()
    nested_filter.metadata_filter.update({"team": {"name": "a"}})
    assert await invalid_field(stub.ListWorkflowCheckpoints(nested_filter)) == [
        "metadata_filter.team"
    ]
    named_with_fallback = checkpoints_pb2.LoadWorkflowCheckpointRequest(
        run_id="run-1", checkpoint_id="cp-1", fallback_to_readable=True
    )
    assert await invalid_field(stub.LoadWorkflowCheckpoint(named_with_fallback)) == [
        "fallback_to_readable"
    ]


# -- server retention settings ------------------------------------------------------------


async def test_server_keep_last_applies_to_every_save(store_url: str) -> None:
    async with (
        running_app(store_url, checkpoint_keep_last=2) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        for n in range(5):
            await client.checkpoints.persist_agent(
                "agent-1", checkpoints_pb2.AGENT_STATE_ACTIVE, app_state={"n": n}
            )
        kept = [c.app_state["n"] async for c in client.checkpoints.list_agent("agent-1")]
    assert kept == [4, 3]


async def test_expired_checkpoints_are_swept_while_serving(store_url: str) -> None:
    async with (
        running_app(store_url, checkpoint_ttl=0.2, checkpoint_sweep_interval=0.05) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        await client.checkpoints.save_workflow("run-1", "wf", step=0)
        newest = await client.checkpoints.save_workflow("run-1", "wf", step=1)
        for _ in range(200):
            remaining = [c.checkpoint_id async for c in client.checkpoints.list_workflow("run-1")]
            if len(remaining) == 1:
                break
            await asyncio.sleep(0.05)
    assert remaining == [newest.checkpoint_id]
