"""CheckpointService: validation in front of the checkpoint store, and the retention sweep."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import grpc

from statekeeper.v1 import checkpoints_pb2, checkpoints_pb2_grpc
from statekeeper_server.config import Settings
from statekeeper_server.errors import InvalidArgument
from statekeeper_server.services.context import request_namespace
from statekeeper_server.stores.checkpoints import (
    NUL_RULE,
    CheckpointStore,
    RetentionOverride,
    RetentionPolicy,
    WorkflowFilter,
    metadata_conditions,
)
from statekeeper_server.timestamps import duration_us, now_us
from statekeeper_server.validation import (
    enum_value,
    optional_id,
    page_size,
    require_id,
    require_text,
)

Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_NAME_LENGTH = 256


class CheckpointServicer(checkpoints_pb2_grpc.CheckpointServiceServicer):
    """Serves CheckpointService from a CheckpointStore, with the server's retention."""

    service_name = checkpoints_pb2.DESCRIPTOR.services_by_name["CheckpointService"].full_name

    def __init__(self, store: CheckpointStore, settings: Settings) -> None:
        self._store = store
        self._defaults = RetentionPolicy(
            keep_last=settings.checkpoint_keep_last,
            ttl_us=round(settings.checkpoint_ttl * 1_000_000),
        )
        self._sweep_interval = settings.checkpoint_sweep_interval

    def add_to(self, server: grpc.aio.Server) -> None:
        """Register this servicer on `server`."""
        checkpoints_pb2_grpc.add_CheckpointServiceServicer_to_server(self, server)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """The retention sweep, every `checkpoint_sweep_interval` seconds."""
        return [self._sweep_forever()]

    async def _sweep_forever(self) -> None:
        """Apply retention to every run and agent, forever; a failed sweep is retried."""
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                dropped = await self._store.sweep(self._defaults, now_us())
            except Exception:
                log.exception("checkpoint retention sweep failed")
                continue
            if dropped:
                log.info("checkpoint retention dropped %d checkpoints", dropped)

    # -- workflows -----------------------------------------------------------

    async def SaveWorkflowCheckpoint(
        self, request: checkpoints_pb2.SaveWorkflowCheckpointRequest, context: Context
    ) -> checkpoints_pb2.SaveWorkflowCheckpointResponse:
        """Validate the checkpoint and add it to its run's history."""
        namespace = request_namespace(context)
        if not request.HasField("checkpoint"):
            raise InvalidArgument("checkpoint", "is required")
        checkpoint = request.checkpoint
        require_id(checkpoint.run_id, "checkpoint.run_id")
        _text(checkpoint.workflow_name, "checkpoint.workflow_name", required=True)
        _text(checkpoint.next_node_id, "checkpoint.next_node_id", required=False)
        expected_parent = None
        if request.HasField("expected_parent"):
            expected_parent = optional_id(request.expected_parent, "expected_parent")
        saved = await self._store.save_workflow(
            namespace,
            checkpoint,
            expected_parent=expected_parent,
            retention=_retention(request, "retention"),
            defaults=self._defaults,
            now_us=now_us(),
        )
        return checkpoints_pb2.SaveWorkflowCheckpointResponse(
            checkpoint=saved.checkpoint, dropped_count=saved.dropped_count
        )

    async def LoadWorkflowCheckpoint(
        self, request: checkpoints_pb2.LoadWorkflowCheckpointRequest, context: Context
    ) -> checkpoints_pb2.LoadWorkflowCheckpointResponse:
        """The run's newest checkpoint, or the one named."""
        namespace = request_namespace(context)
        run_id = require_id(request.run_id, "run_id")
        checkpoint_id = optional_id(request.checkpoint_id, "checkpoint_id")
        if checkpoint_id and request.fallback_to_readable:
            raise InvalidArgument(
                "fallback_to_readable", "applies to the newest checkpoint, not to a named one"
            )
        loaded = await self._store.load_workflow(
            namespace, run_id, checkpoint_id, fallback_to_readable=request.fallback_to_readable
        )
        return checkpoints_pb2.LoadWorkflowCheckpointResponse(
            checkpoint=loaded.checkpoint, skipped_checkpoint_ids=loaded.skipped_checkpoint_ids
        )

    async def ListWorkflowCheckpoints(
        self, request: checkpoints_pb2.ListWorkflowCheckpointsRequest, context: Context
    ) -> checkpoints_pb2.ListWorkflowCheckpointsResponse:
        """A run's history, or the newest checkpoint of every run, filtered."""
        namespace = request_namespace(context)
        run_id = optional_id(request.run_id, "run_id")
        before = optional_id(request.before, "before")
        if before and not run_id:
            raise InvalidArgument("before", "requires run_id")
        _text(request.workflow_name, "workflow_name", required=False)
        where = WorkflowFilter(
            workflow_name=request.workflow_name,
            metadata=metadata_conditions(request.metadata_filter, "metadata_filter"),
        )
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        if run_id:
            page = await self._store.list_workflow_history(
                namespace,
                run_id,
                where,
                before=before,
                page_size=size,
                page_token=request.page_token,
            )
        else:
            page = await self._store.list_latest_workflows(
                namespace, where, page_size=size, page_token=request.page_token
            )
        return checkpoints_pb2.ListWorkflowCheckpointsResponse(
            checkpoints=page.checkpoints, next_page_token=page.next_page_token
        )

    async def DeleteWorkflowCheckpoints(
        self, request: checkpoints_pb2.DeleteWorkflowCheckpointsRequest, context: Context
    ) -> checkpoints_pb2.DeleteWorkflowCheckpointsResponse:
        """Delete the run's whole history; succeeds when there is none."""
        namespace = request_namespace(context)
        run_id = require_id(request.run_id, "run_id")
        return checkpoints_pb2.DeleteWorkflowCheckpointsResponse(
            deleted_count=await self._store.delete_workflow(namespace, run_id)
        )

    # -- agents --------------------------------------------------------------

    async def PersistAgentCheckpoint(
        self, request: checkpoints_pb2.PersistAgentCheckpointRequest, context: Context
    ) -> checkpoints_pb2.PersistAgentCheckpointResponse:
        """Validate the checkpoint and add it to its agent's history."""
        namespace = request_namespace(context)
        if not request.HasField("checkpoint"):
            raise InvalidArgument("checkpoint", "is required")
        checkpoint = request.checkpoint
        require_id(checkpoint.agent_id, "checkpoint.agent_id")
        enum_value(
            checkpoint.agent_state,
            "checkpoint.agent_state",
            checkpoints_pb2.AgentState.values(),
            required=True,
        )
        saved = await self._store.persist_agent(
            namespace,
            checkpoint,
            retention=_retention(request, "retention"),
            defaults=self._defaults,
            now_us=now_us(),
        )
        return checkpoints_pb2.PersistAgentCheckpointResponse(
            checkpoint=saved.checkpoint, dropped_count=saved.dropped_count
        )

    async def RecoverAgentCheckpoint(
        self, request: checkpoints_pb2.RecoverAgentCheckpointRequest, context: Context
    ) -> checkpoints_pb2.RecoverAgentCheckpointResponse:
        """The agent's newest (readable) checkpoint."""
        namespace = request_namespace(context)
        agent_id = require_id(request.agent_id, "agent_id")
        recovered = await self._store.recover_agent(
            namespace, agent_id, fallback_to_readable=request.fallback_to_readable
        )
        return checkpoints_pb2.RecoverAgentCheckpointResponse(
            checkpoint=recovered.checkpoint,
            skipped_checkpoint_ids=recovered.skipped_checkpoint_ids,
        )

    async def ListAgentCheckpoints(
        self, request: checkpoints_pb2.ListAgentCheckpointsRequest, context: Context
    ) -> checkpoints_pb2.ListAgentCheckpointsResponse:
        """A page of the agent's history, newest first."""
        namespace = request_namespace(context)
        agent_id = require_id(request.agent_id, "agent_id")
        before = optional_id(request.before, "before")
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        page = await self._store.list_agent_history(
            namespace, agent_id, before=before, page_size=size, page_token=request.page_token
        )
        return checkpoints_pb2.ListAgentCheckpointsResponse(
            checkpoints=page.checkpoints, next_page_token=page.next_page_token
        )

    async def DeleteAgentCheckpoints(
        self, request: checkpoints_pb2.DeleteAgentCheckpointsRequest, context: Context
    ) -> checkpoints_pb2.DeleteAgentCheckpointsResponse:
        """Delete the agent's whole history; succeeds when there is none."""
        namespace = request_namespace(context)
        agent_id = require_id(request.agent_id, "agent_id")
        return checkpoints_pb2.DeleteAgentCheckpointsResponse(
            deleted_count=await self._store.delete_agent(namespace, agent_id)
        )


def _retention(
    request: checkpoints_pb2.SaveWorkflowCheckpointRequest
    | checkpoints_pb2.PersistAgentCheckpointRequest,
    field: str,
) -> RetentionOverride:
    """The retention a save names; unset fields stay None (the server's)."""
    if not request.HasField("retention"):
        return RetentionOverride()
    retention = request.retention
    ttl_us = None
    if retention.HasField("ttl"):
        ttl_us = duration_us(retention.ttl)
        if ttl_us < 0:
            raise InvalidArgument(f"{field}.ttl", "must not be negative")
    keep_last = retention.keep_last if retention.HasField("keep_last") else None
    return RetentionOverride(keep_last=keep_last, ttl_us=ttl_us)


def _text(value: str, field: str, *, required: bool) -> None:
    """Reject text longer than MAX_NAME_LENGTH or holding U+0000; empty passes if not required."""
    if value or required:
        require_text(value, field, max_length=MAX_NAME_LENGTH)
    if "\x00" in value:
        raise InvalidArgument(field, NUL_RULE)
