"""`client.checkpoints`: resumable workflow runs and recoverable agents.

Struct fields (scope snapshots, app state, metadata) are passed as plain
JSON-like dicts; the returned messages convert back with
`google.protobuf.json_format.MessageToDict`.

`CheckpointCalls` says what each method sends and returns;
`CheckpointsClient` (asyncio) and `BlockingCheckpointsClient` make the calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2

from statekeeper import _aio_calls as aio
from statekeeper import _sync_calls as sync
from statekeeper._calls import Pages, Unary, whole
from statekeeper.v1 import checkpoints_pb2, checkpoints_pb2_grpc


def to_struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct:
    """A Struct holding the JSON-like mapping `value` (empty for None)."""
    struct = struct_pb2.Struct()
    if value:
        struct.update(value)
    return struct


def retention(
    keep_last: int | None = None, ttl: float | None = None
) -> checkpoints_pb2.CheckpointRetention | None:
    """A save's retention: keep the last `keep_last`, drop those older than `ttl` seconds.

    None for a field follows the server's setting; None overall when neither
    is given.
    """
    if keep_last is None and ttl is None:
        return None
    message = checkpoints_pb2.CheckpointRetention()
    if keep_last is not None:
        message.keep_last = keep_last
    if ttl is not None:
        duration = duration_pb2.Duration()
        duration.FromNanoseconds(round(ttl * 1_000_000_000))
        message.ttl.CopyFrom(duration)
        message.ttl.SetInParent()
    return message


class CheckpointCalls:
    """The operations of the checkpoints family, shared by both clients. Saves are
    not retried: each save adds a checkpoint, so retrying one is the caller's
    decision."""

    # -- workflows -----------------------------------------------------------

    @staticmethod
    def save_workflow(
        run_id: str,
        workflow_name: str,
        *,
        step: int = 0,
        next_node_id: str = "",
        scope_snapshot: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        expected_parent: str | None = None,
        keep_last: int | None = None,
        ttl: float | None = None,
    ) -> Unary[checkpoints_pb2.WorkflowCheckpoint]:
        """Add a checkpoint to the run's history; returns it with its id and parent.

        With `expected_parent` the save is a compare-and-set on the run's
        newest checkpoint id ("": the run must have none yet); a mismatch
        raises ABORTED. `keep_last` / `ttl` (seconds) override the server's
        retention for this run.
        """
        request = checkpoints_pb2.SaveWorkflowCheckpointRequest(
            checkpoint=checkpoints_pb2.WorkflowCheckpoint(
                run_id=run_id,
                workflow_name=workflow_name,
                step=step,
                next_node_id=next_node_id,
                scope_snapshot=to_struct(scope_snapshot),
                metadata=to_struct(metadata),
            ),
            retention=retention(keep_last, ttl),
        )
        if expected_parent is not None:
            request.expected_parent = expected_parent
        return Unary("SaveWorkflowCheckpoint", request, lambda response: response.checkpoint)

    @staticmethod
    def load_workflow(
        run_id: str, checkpoint_id: str = "", *, fallback_to_readable: bool = False
    ) -> Unary[checkpoints_pb2.LoadWorkflowCheckpointResponse]:
        """The run's newest checkpoint (or `checkpoint_id`) in `.checkpoint`.

        Raises NOT_FOUND if there is none, DATA_LOSS if it is corrupt; with
        `fallback_to_readable` the newest readable one is returned instead and
        `.skipped_checkpoint_ids` names the corrupt ones passed over.
        """
        return Unary(
            "LoadWorkflowCheckpoint",
            checkpoints_pb2.LoadWorkflowCheckpointRequest(
                run_id=run_id,
                checkpoint_id=checkpoint_id,
                fallback_to_readable=fallback_to_readable,
            ),
            whole,
            idempotent=True,
        )

    @staticmethod
    def list_workflow(
        run_id: str = "",
        *,
        workflow_name: str = "",
        metadata: Mapping[str, Any] | None = None,
        before: str = "",
        page_size: int = 0,
    ) -> Pages[checkpoints_pb2.WorkflowCheckpoint]:
        """A run's checkpoints newest first (before `before`), page by page.

        Without `run_id`: the newest checkpoint of every run, in run_id
        order. `workflow_name` and `metadata` (exact top-level key/value
        pairs) filter both.
        """
        metadata_filter = to_struct(metadata)
        return Pages(
            "ListWorkflowCheckpoints",
            lambda token: checkpoints_pb2.ListWorkflowCheckpointsRequest(
                run_id=run_id,
                before=before,
                workflow_name=workflow_name,
                metadata_filter=metadata_filter,
                page_size=page_size,
                page_token=token,
            ),
            lambda response: response.checkpoints,
        )

    @staticmethod
    def delete_workflow(run_id: str) -> Unary[int]:
        """Delete the run's whole history; how many checkpoints it had."""
        return Unary(
            "DeleteWorkflowCheckpoints",
            checkpoints_pb2.DeleteWorkflowCheckpointsRequest(run_id=run_id),
            lambda response: response.deleted_count,
            idempotent=True,
        )

    # -- agents --------------------------------------------------------------

    @staticmethod
    def persist_agent(
        agent_id: str,
        agent_state: checkpoints_pb2.AgentState.ValueType,
        *,
        app_state: Mapping[str, Any] | None = None,
        version: int = 1,
        in_flight_tasks: int = 0,
        reason: str = "",
        custom: Any = None,
        timestamp: datetime | None = None,
        keep_last: int | None = None,
        ttl: float | None = None,
    ) -> Unary[checkpoints_pb2.AgentCheckpoint]:
        """Add a checkpoint to the agent's history; returns it with its id.

        `custom` is any JSON value; `timestamp` (when the agent captured the
        state) defaults to the server's create time. `keep_last` / `ttl`
        (seconds) override the server's retention for this agent.
        """
        checkpoint = checkpoints_pb2.AgentCheckpoint(
            agent_id=agent_id,
            agent_state=agent_state,
            app_state=to_struct(app_state),
            metadata=checkpoints_pb2.AgentCheckpointMetadata(
                version=version, in_flight_tasks=in_flight_tasks, reason=reason
            ),
        )
        if custom is not None:
            json_format.ParseDict(custom, checkpoint.metadata.custom)
        if timestamp is not None:
            checkpoint.timestamp.FromDatetime(timestamp)
        return Unary(
            "PersistAgentCheckpoint",
            checkpoints_pb2.PersistAgentCheckpointRequest(
                checkpoint=checkpoint, retention=retention(keep_last, ttl)
            ),
            lambda response: response.checkpoint,
        )

    @staticmethod
    def recover_agent(
        agent_id: str, *, fallback_to_readable: bool = False
    ) -> Unary[checkpoints_pb2.RecoverAgentCheckpointResponse]:
        """The agent's newest checkpoint in `.checkpoint`.

        Raises NOT_FOUND if there is none, DATA_LOSS if it is corrupt; with
        `fallback_to_readable` the newest readable one is returned instead and
        `.skipped_checkpoint_ids` names the corrupt ones passed over.
        """
        return Unary(
            "RecoverAgentCheckpoint",
            checkpoints_pb2.RecoverAgentCheckpointRequest(
                agent_id=agent_id, fallback_to_readable=fallback_to_readable
            ),
            whole,
            idempotent=True,
        )

    @staticmethod
    def list_agent(
        agent_id: str, *, before: str = "", page_size: int = 0
    ) -> Pages[checkpoints_pb2.AgentCheckpoint]:
        """The agent's checkpoints newest first (before `before`), page by page."""
        return Pages(
            "ListAgentCheckpoints",
            lambda token: checkpoints_pb2.ListAgentCheckpointsRequest(
                agent_id=agent_id, before=before, page_size=page_size, page_token=token
            ),
            lambda response: response.checkpoints,
        )

    @staticmethod
    def list_agents(
        agent_id_prefix: str = "", *, page_size: int = 0
    ) -> Pages[checkpoints_pb2.AgentCheckpoint]:
        """The newest checkpoint of every agent (only those whose id starts with
        `agent_id_prefix`, when given), in agent_id order, page by page."""
        return Pages(
            "ListAgents",
            lambda token: checkpoints_pb2.ListAgentsRequest(
                agent_id_prefix=agent_id_prefix, page_size=page_size, page_token=token
            ),
            lambda response: response.checkpoints,
        )

    @staticmethod
    def delete_agent(agent_id: str) -> Unary[int]:
        """Delete the agent's whole history; how many checkpoints it had."""
        return Unary(
            "DeleteAgentCheckpoints",
            checkpoints_pb2.DeleteAgentCheckpointsRequest(agent_id=agent_id),
            lambda response: response.deleted_count,
            idempotent=True,
        )


class CheckpointsClient(aio.Family):
    """Save, load, list and delete workflow checkpoints; persist, recover and list agents."""

    stub = checkpoints_pb2_grpc.CheckpointServiceStub
    save_workflow = aio.unary(CheckpointCalls.save_workflow)
    load_workflow = aio.unary(CheckpointCalls.load_workflow)
    list_workflow = aio.pages(CheckpointCalls.list_workflow)
    delete_workflow = aio.unary(CheckpointCalls.delete_workflow)
    persist_agent = aio.unary(CheckpointCalls.persist_agent)
    recover_agent = aio.unary(CheckpointCalls.recover_agent)
    list_agent = aio.pages(CheckpointCalls.list_agent)
    list_agents = aio.pages(CheckpointCalls.list_agents)
    delete_agent = aio.unary(CheckpointCalls.delete_agent)


class BlockingCheckpointsClient(sync.Family):
    """Save, load, list and delete workflow checkpoints; persist, recover and list agents
    (blocking)."""

    stub = checkpoints_pb2_grpc.CheckpointServiceStub
    save_workflow = sync.unary(CheckpointCalls.save_workflow)
    load_workflow = sync.unary(CheckpointCalls.load_workflow)
    list_workflow = sync.pages(CheckpointCalls.list_workflow)
    delete_workflow = sync.unary(CheckpointCalls.delete_workflow)
    persist_agent = sync.unary(CheckpointCalls.persist_agent)
    recover_agent = sync.unary(CheckpointCalls.recover_agent)
    list_agent = sync.pages(CheckpointCalls.list_agent)
    list_agents = sync.pages(CheckpointCalls.list_agents)
    delete_agent = sync.unary(CheckpointCalls.delete_agent)
