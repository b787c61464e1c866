"""The console's checkpoint pages: workflow runs with their newest checkpoint, a
run's history (newest first, with its parent chain), the diff of two of its
checkpoints' `scope_snapshot`, agents with their newest checkpoint, and an agent's
history. Every page reads through CheckpointService, one page of at most PAGE_SIZE
checkpoints at a time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict

from statekeeper.v1 import checkpoints_pb2, checkpoints_pb2_grpc
from statekeeper_server.console.json_diff import Change, diff
from statekeeper_server.console.paging_links import Pager, href, path

if TYPE_CHECKING:  # views installs these pages: importing it here would be circular
    from statekeeper_server.console.views import Console

PAGE_SIZE = 50
"""Checkpoints (or runs) shown on one page of a list or history."""

FOLD_CHARS = 400
"""Values longer than this (as pretty JSON) are folded under <details>."""

PREVIEW_CHARS = 4000
"""A row of a list shows at most this many characters of a value (pretty JSON);
the checkpoint's own page shows it whole."""

MAX_CHANGES = 1000
"""Changes of a diff shown on its page; the page says how many more there are."""

_EMPTY = struct_pb2.Struct()


def install(console: Console, app: web.Application) -> None:
    """Add `/checkpoints` (workflow runs), `/checkpoints/runs/{run_id}` (history),
    `.../diff`, `.../{checkpoint_id}`, `/checkpoints/agents` (agents with their
    newest checkpoint) and `/checkpoints/agents/{agent_id}` (an agent's history) to
    `app`."""
    pages = _CheckpointPages(console)
    app.router.add_get("/checkpoints", console.guard(pages.workflows))
    app.router.add_get("/checkpoints/runs/{run_id}", console.guard(pages.history))
    app.router.add_get("/checkpoints/runs/{run_id}/diff", console.guard(pages.diff))
    app.router.add_get(
        "/checkpoints/runs/{run_id}/{checkpoint_id}", console.guard(pages.checkpoint)
    )
    app.router.add_get("/checkpoints/agents", console.guard(pages.agents))
    app.router.add_get("/checkpoints/agents/{agent_id}", console.guard(pages.agent))


def json_value(value: Any) -> Any:
    """A Struct's JSON value with whole numbers as ints (Struct keeps every number
    as a double), so `3` shows as `3`, not `3.0`."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_value(item) for item in value]
    return value


def struct_value(struct: struct_pb2.Struct) -> dict[str, Any]:
    """`struct` as a plain JSON object (see `json_value`)."""
    converted: dict[str, Any] = json_value(MessageToDict(struct))
    return converted


def metadata_filter(pairs: list[str]) -> tuple[list[tuple[str, Any]], str]:
    """The `key=value` filters of the page as (key, JSON value) pairs, or the reason
    one is malformed. A value that reads as a JSON scalar (`3`, `true`, `null`,
    `"3"`) is that value; any other text is a string."""
    conditions: list[tuple[str, Any]] = []
    for pair in pairs:
        if not pair.strip():
            continue
        key, sep, text = pair.partition("=")
        if not sep or not key:
            return [], "meta: expected key=value"
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        if isinstance(value, dict | list):
            value = text
        conditions.append((key, value))
    return conditions, ""


def workflow_view(checkpoint: checkpoints_pb2.WorkflowCheckpoint) -> dict[str, Any]:
    """A workflow checkpoint as template values: ids, step, node, create time,
    metadata and scope as JSON values."""
    return {
        "run_id": checkpoint.run_id,
        "workflow_name": checkpoint.workflow_name,
        "step": checkpoint.step,
        "next_node_id": checkpoint.next_node_id,
        "checkpoint_id": checkpoint.checkpoint_id,
        "parent_checkpoint_id": checkpoint.parent_checkpoint_id,
        "create_time": _time(checkpoint, "create_time"),
        "metadata": struct_value(checkpoint.metadata),
        "scope": struct_value(checkpoint.scope_snapshot),
    }


def summary_view(checkpoint: checkpoints_pb2.WorkflowCheckpoint) -> dict[str, Any]:
    """What a page says of a checkpoint it names: run, workflow, id, step, time."""
    return {
        "run_id": checkpoint.run_id,
        "workflow_name": checkpoint.workflow_name,
        "checkpoint_id": checkpoint.checkpoint_id,
        "step": checkpoint.step,
        "create_time": _time(checkpoint, "create_time"),
    }


def agent_view(checkpoint: checkpoints_pb2.AgentCheckpoint) -> dict[str, Any]:
    """An agent checkpoint as template values: id, state, times, app state and
    what the agent reported about it."""
    metadata = checkpoint.metadata
    return {
        "agent_id": checkpoint.agent_id,
        "checkpoint_id": checkpoint.checkpoint_id,
        "state": checkpoints_pb2.AgentState.Name(checkpoint.agent_state).removeprefix(
            "AGENT_STATE_"
        ),
        "timestamp": _time(checkpoint, "timestamp"),
        "create_time": _time(checkpoint, "create_time"),
        "app_state": struct_value(checkpoint.app_state),
        "version": metadata.version,
        "in_flight_tasks": metadata.in_flight_tasks,
        "reason": metadata.reason,
        "custom": json_value(MessageToDict(metadata.custom))
        if metadata.HasField("custom")
        else None,
    }


def preview(value: Any) -> dict[str, Any]:
    """`value` as pretty JSON cut to PREVIEW_CHARS: its `text`, whole `length` and
    whether it was `cut`."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    return {"text": text[:PREVIEW_CHARS], "length": len(text), "cut": len(text) > PREVIEW_CHARS}


def listed_workflows(
    checkpoints: Iterable[checkpoints_pb2.WorkflowCheckpoint],
) -> list[dict[str, Any]]:
    """Workflow checkpoints as rows of a list: their views with a `preview` of their
    metadata and scope instead of the whole values."""
    rows = []
    for checkpoint in checkpoints:
        view = workflow_view(checkpoint)
        scope, metadata = view.pop("scope"), view.pop("metadata")
        view["preview"] = {"scope": preview(scope), "metadata": preview(metadata)}
        rows.append(view)
    return rows


def listed_agents(checkpoints: Iterable[checkpoints_pb2.AgentCheckpoint]) -> list[dict[str, Any]]:
    """Agent checkpoints as rows of a list: their views with a `preview` of their app
    state instead of the whole value."""
    rows = []
    for checkpoint in checkpoints:
        view = agent_view(checkpoint)
        view["preview"] = {"app_state": preview(view.pop("app_state"))}
        rows.append(view)
    return rows


def change_view(change: Change) -> dict[str, Any]:
    """A diff change as template values (the root path shown as `/`)."""
    return {"kind": change.kind, "path": change.path or "/", "old": change.old, "new": change.new}


def _time(message: Any, field: str) -> str:
    return str(getattr(message, field).ToJsonString()) if message.HasField(field) else ""


def _scope_diff(
    old: checkpoints_pb2.WorkflowCheckpoint, new: checkpoints_pb2.WorkflowCheckpoint
) -> list[Change]:
    return diff(struct_value(old.scope_snapshot), struct_value(new.scope_snapshot))


class _CheckpointPages:
    def __init__(self, console: Console) -> None:
        self._console = console

    def _stub(self) -> checkpoints_pb2_grpc.CheckpointServiceAsyncStub:
        return checkpoints_pb2_grpc.CheckpointServiceStub(self._console.channel())

    def _call(self, request: web.Request) -> dict[str, Any]:
        options = self._console.options(request)
        return {"metadata": options.metadata, "timeout": options.timeout}

    async def _load(
        self, request: web.Request, run_id: str, checkpoint_id: str = ""
    ) -> checkpoints_pb2.WorkflowCheckpoint:
        response = await self._stub().LoadWorkflowCheckpoint(
            checkpoints_pb2.LoadWorkflowCheckpointRequest(
                run_id=run_id, checkpoint_id=checkpoint_id
            ),
            **self._call(request),
        )
        return response.checkpoint

    async def workflows(self, request: web.Request) -> web.Response:
        workflow = request.query.get("workflow", "")
        meta = request.query.getall("meta", [])
        conditions, problem = metadata_filter(meta)
        if problem:
            return self._console.error(request, 400, "INVALID_ARGUMENT", problem)
        where = struct_pb2.Struct()
        for key, value in conditions:
            where[key] = value
        pager = Pager.of(request)
        response = await self._stub().ListWorkflowCheckpoints(
            checkpoints_pb2.ListWorkflowCheckpointsRequest(
                workflow_name=workflow,
                metadata_filter=where,
                page_size=PAGE_SIZE,
                page_token=pager.page,
            ),
            **self._call(request),
        )
        filters: dict[str, Any] = {"workflow": workflow, "meta": [m for m in meta if m.strip()]}
        return self._console.render(
            request,
            "checkpoints.html",
            checkpoints=await asyncio.to_thread(listed_workflows, response.checkpoints),
            workflow=workflow,
            meta=filters["meta"],
            filtered=bool(workflow or conditions),
            older=_link(request, ["checkpoints"], filters, pager.older(response.next_page_token)),
            newer=_link(request, ["checkpoints"], filters, pager.newer()),
            history=lambda run_id: href(request, ["checkpoints", "runs", run_id]),
            fold=FOLD_CHARS,
        )

    async def history(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        newest = await self._load(request, run_id)  # NOT_FOUND for an unknown run
        pager = Pager.of(request)
        response = await self._stub().ListWorkflowCheckpoints(
            checkpoints_pb2.ListWorkflowCheckpointsRequest(
                run_id=run_id, page_size=PAGE_SIZE, page_token=pager.page
            ),
            **self._call(request),
        )
        # A page may hold megabytes of scope: convert it off the event loop.
        checkpoints = await asyncio.to_thread(listed_workflows, response.checkpoints)
        segments = ["checkpoints", "runs", run_id]
        return self._console.render(
            request,
            "checkpoint_history.html",
            run_id=run_id,
            newest=summary_view(newest),
            checkpoints=checkpoints,
            older=_link(request, segments, {}, pager.older(response.next_page_token)),
            newer=_link(request, segments, {}, pager.newer()),
            first=href(request, segments),
            diff_action=path([*segments, "diff"]),
            one=lambda checkpoint_id: href(request, [*segments, checkpoint_id]),
            list_link=href(request, ["checkpoints"]),
            fold=FOLD_CHARS,
        )

    async def checkpoint(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        found = await self._load(request, run_id, request.match_info["checkpoint_id"])
        segments = ["checkpoints", "runs", run_id]
        parent = found.parent_checkpoint_id
        return self._console.render(
            request,
            "checkpoint.html",
            checkpoint=await asyncio.to_thread(workflow_view, found),
            history=href(request, segments),
            parent=href(request, [*segments, parent]) if parent else "",
            diff_parent=href(
                request, [*segments, "diff"], {"from": parent, "to": found.checkpoint_id}
            )
            if parent
            else "",
            fold=FOLD_CHARS,
        )

    async def diff(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        old_id = request.query.get("from", "")
        new_id = request.query.get("to", "")
        for field, value in (("from", old_id), ("to", new_id)):
            if not value:
                return self._console.error(
                    request, 400, "INVALID_ARGUMENT", f"{field}: choose a checkpoint"
                )
        old, new = await asyncio.gather(
            self._load(request, run_id, old_id), self._load(request, run_id, new_id)
        )
        # A scope snapshot may be megabytes: compare it off the event loop.
        changes = await asyncio.to_thread(_scope_diff, old, new)
        segments = ["checkpoints", "runs", run_id]
        return self._console.render(
            request,
            "checkpoint_diff.html",
            run_id=run_id,
            old=summary_view(old),
            new=summary_view(new),
            changes=[change_view(change) for change in changes[:MAX_CHANGES]],
            more=max(0, len(changes) - MAX_CHANGES),
            history=href(request, segments),
            one=lambda checkpoint_id: href(request, [*segments, checkpoint_id]),
            swapped=href(request, [*segments, "diff"], {"from": new_id, "to": old_id}),
            fold=FOLD_CHARS,
        )

    async def agents(self, request: web.Request) -> web.Response:
        agent_id = request.query.get("agent", "").strip()
        if agent_id:  # an agent's id given whole (links and bookmarks of earlier pages)
            raise web.HTTPSeeOther(href(request, ["checkpoints", "agents", agent_id]))
        prefix = request.query.get("prefix", "").strip()
        pager = Pager.of(request)
        response = await self._stub().ListAgents(  # INVALID_ARGUMENT for a malformed prefix
            checkpoints_pb2.ListAgentsRequest(
                agent_id_prefix=prefix, page_size=PAGE_SIZE, page_token=pager.page
            ),
            **self._call(request),
        )
        segments = ["checkpoints", "agents"]
        filters: dict[str, Any] = {"prefix": prefix}
        return self._console.render(
            request,
            "agents.html",
            # A page may hold megabytes of app state: convert it off the event loop.
            agents=await asyncio.to_thread(listed_agents, response.checkpoints),
            prefix=prefix,
            older=_link(request, segments, filters, pager.older(response.next_page_token)),
            newer=_link(request, segments, filters, pager.newer()),
            every=href(request, segments),
            history=lambda agent_id: href(request, [*segments, agent_id]),
            fold=FOLD_CHARS,
        )

    async def agent(self, request: web.Request) -> web.Response:
        agent_id = request.match_info["agent_id"]
        stub = self._stub()
        recovered = await stub.RecoverAgentCheckpoint(  # NOT_FOUND for an unknown agent
            checkpoints_pb2.RecoverAgentCheckpointRequest(agent_id=agent_id),
            **self._call(request),
        )
        pager = Pager.of(request)
        response = await stub.ListAgentCheckpoints(
            checkpoints_pb2.ListAgentCheckpointsRequest(
                agent_id=agent_id, page_size=PAGE_SIZE, page_token=pager.page
            ),
            **self._call(request),
        )
        segments = ["checkpoints", "agents", agent_id]
        return self._console.render(
            request,
            "agent.html",
            agent_id=agent_id,
            newest=await asyncio.to_thread(agent_view, recovered.checkpoint),
            checkpoints=await asyncio.to_thread(listed_agents, response.checkpoints),
            older=_link(request, segments, {}, pager.older(response.next_page_token)),
            newer=_link(request, segments, {}, pager.newer()),
            first=href(request, segments),
            every=href(request, ["checkpoints", "agents"]),
            fold=FOLD_CHARS,
        )


def _link(
    request: web.Request,
    segments: list[str],
    filters: dict[str, Any],
    page: dict[str, str] | None,
) -> str:
    """The link to another page of a list with the same filters; "" when there is none."""
    if page is None:
        return ""
    return href(request, segments, {**filters, **page})
