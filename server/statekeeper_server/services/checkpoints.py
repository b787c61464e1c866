"""CheckpointService: validation in front of the checkpoint store, and the retention sweep.

Checkpoints are answered with the bytes the store keeps (see `wire`): a save
returns the encoding it stored, loads and listings the stored encodings,
so no checkpoint is parsed into a response message and encoded again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import grpc

from statekeeper.v1 import checkpoints_pb2, checkpoints_pb2_grpc
from statekeeper_server.config import Settings
from statekeeper_server.errors import InvalidArgument
from statekeeper_server.observability import store_metrics
from statekeeper_server.services.context import request_namespace
from statekeeper_server.stores.checkpoints import (
    NUL_RULE,
    CheckpointPage,
    CheckpointStore,
    Recovered,
    RetentionOverride,
    RetentionPolicy,
    Saved,
    WorkflowFilter,
    metadata_conditions_off_loop,
)
from statekeeper_server.timestamps import duration_us, now_us
from statekeeper_server.validation import (
    enum_value,
    optional_id,
    page_size,
    require_id,
    require_text,
)
from statekeeper_server.wire import (
    message_field,
    repeated_message_field,
    repeated_string_field,
    string_field,
    uint_field,
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

    async def SaveWorkflowCheckpoint(  # type: ignore[override]  # answers with wire bytes
        self, request: checkpoints_pb2.SaveWorkflowCheckpointRequest, context: Context
    ) -> bytes:
        """Validate the checkpoint and add it to its run's history; the
        SaveWorkflowCheckpointResponse's wire bytes."""
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
        store_metrics.checkpoint_saved(namespace, "workflow", saved.dropped_count)
        return saved_response(checkpoints_pb2.SaveWorkflowCheckpointResponse, saved)

    async def LoadWorkflowCheckpoint(  # type: ignore[override]  # answers with wire bytes
        self, request: checkpoints_pb2.LoadWorkflowCheckpointRequest, context: Context
    ) -> bytes:
        """The run's newest checkpoint, or the one named; the
        LoadWorkflowCheckpointResponse's wire bytes."""
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
        return recovered_response(checkpoints_pb2.LoadWorkflowCheckpointResponse, loaded)

    async def ListWorkflowCheckpoints(  # type: ignore[override]  # answers with wire bytes
        self, request: checkpoints_pb2.ListWorkflowCheckpointsRequest, context: Context
    ) -> bytes:
        """A run's history, or the newest checkpoint of every run, filtered; the
        ListWorkflowCheckpointsResponse's wire bytes."""
        namespace = request_namespace(context)
        run_id = optional_id(request.run_id, "run_id")
        before = optional_id(request.before, "before")
        if before and not run_id:
            raise InvalidArgument("before", "requires run_id")
        _text(request.workflow_name, "workflow_name", required=False)
        where = WorkflowFilter(
            workflow_name=request.workflow_name,
            metadata=await metadata_conditions_off_loop(request.metadata_filter, "metadata_filter"),
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
        return page_response(checkpoints_pb2.ListWorkflowCheckpointsResponse, page)

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

    async def PersistAgentCheckpoint(  # type: ignore[override]  # answers with wire bytes
        self, request: checkpoints_pb2.PersistAgentCheckpointRequest, context: Context
    ) -> bytes:
        """Validate the checkpoint and add it to its agent's history; the
        PersistAgentCheckpointResponse's wire bytes."""
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
        store_metrics.checkpoint_saved(namespace, "agent", saved.dropped_count)
        return saved_response(checkpoints_pb2.PersistAgentCheckpointResponse, saved)

    async def RecoverAgentCheckpoint(  # type: ignore[override]  # answers with wire bytes
        self, request: checkpoints_pb2.RecoverAgentCheckpointRequest, context: Context
    ) -> bytes:
        """The agent's newest (readable) checkpoint; the RecoverAgentCheckpointResponse's
        wire bytes."""
        namespace = request_namespace(context)
        agent_id = require_id(request.agent_id, "agent_id")
        recovered = await self._store.recover_agent(
            namespace, agent_id, fallback_to_readable=request.fallback_to_readable
        )
        return recovered_response(checkpoints_pb2.RecoverAgentCheckpointResponse, recovered)

    async def ListAgentCheckpoints(  # type: ignore[override]  # answers with wire bytes
        self, request: checkpoints_pb2.ListAgentCheckpointsRequest, context: Context
    ) -> bytes:
        """A page of the agent's history, newest first; the ListAgentCheckpointsResponse's
        wire bytes."""
        namespace = request_namespace(context)
        agent_id = require_id(request.agent_id, "agent_id")
        before = optional_id(request.before, "before")
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        page = await self._store.list_agent_history(
            namespace, agent_id, before=before, page_size=size, page_token=request.page_token
        )
        return page_response(checkpoints_pb2.ListAgentCheckpointsResponse, page)

    async def ListAgents(  # type: ignore[override]  # answers with wire bytes
        self, request: checkpoints_pb2.ListAgentsRequest, context: Context
    ) -> bytes:
        """A page of the newest checkpoint of each agent, in agent_id order, optionally
        only agents whose id starts with `agent_id_prefix`; the ListAgentsResponse's
        wire bytes."""
        namespace = request_namespace(context)
        prefix = optional_id(request.agent_id_prefix, "agent_id_prefix")
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        page = await self._store.list_latest_agents(
            namespace, prefix, page_size=size, page_token=request.page_token
        )
        return page_response(checkpoints_pb2.ListAgentsResponse, page)

    async def DeleteAgentCheckpoints(
        self, request: checkpoints_pb2.DeleteAgentCheckpointsRequest, context: Context
    ) -> checkpoints_pb2.DeleteAgentCheckpointsResponse:
        """Delete the agent's whole history; succeeds when there is none."""
        namespace = request_namespace(context)
        agent_id = require_id(request.agent_id, "agent_id")
        return checkpoints_pb2.DeleteAgentCheckpointsResponse(
            deleted_count=await self._store.delete_agent(namespace, agent_id)
        )


# -- answers ---------------------------------------------------------------------

SaveResponse = type[
    checkpoints_pb2.SaveWorkflowCheckpointResponse | checkpoints_pb2.PersistAgentCheckpointResponse
]
LoadResponse = type[
    checkpoints_pb2.LoadWorkflowCheckpointResponse | checkpoints_pb2.RecoverAgentCheckpointResponse
]
ListResponse = type[
    checkpoints_pb2.ListWorkflowCheckpointsResponse
    | checkpoints_pb2.ListAgentCheckpointsResponse
    | checkpoints_pb2.ListAgentsResponse
]


def saved_response(response: SaveResponse, saved: Saved[Any]) -> bytes:
    """The wire bytes of a save's `response`, around the checkpoint's stored encoding."""
    return message_field(response.CHECKPOINT_FIELD_NUMBER, saved.data) + uint_field(
        response.DROPPED_COUNT_FIELD_NUMBER, saved.dropped_count
    )


def recovered_response(response: LoadResponse, recovered: Recovered) -> bytes:
    """The wire bytes of a load's or recovery's `response`, around the stored encoding."""
    return message_field(response.CHECKPOINT_FIELD_NUMBER, recovered.data) + repeated_string_field(
        response.SKIPPED_CHECKPOINT_IDS_FIELD_NUMBER, recovered.skipped_checkpoint_ids
    )


def page_response(response: ListResponse, page: CheckpointPage) -> bytes:
    """The wire bytes of a listing's `response`, around the stored encodings of its page."""
    return repeated_message_field(
        response.CHECKPOINTS_FIELD_NUMBER, page.checkpoints
    ) + string_field(response.NEXT_PAGE_TOKEN_FIELD_NUMBER, page.next_page_token)


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
