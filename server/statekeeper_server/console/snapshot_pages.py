"""The console's snapshot pages: the namespace's run snapshots filtered by session
and status (ListSnapshots, one page at a time), and one snapshot's fields
(LoadSnapshot) made readable: status, iteration, usage, last message, request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from google.protobuf.json_format import MessageToDict

from statekeeper.v1 import common_pb2, snapshots_pb2, snapshots_pb2_grpc
from statekeeper_server.console.checkpoint_pages import FOLD_CHARS, PAGE_SIZE, json_value
from statekeeper_server.console.paging_links import Pager, href

if TYPE_CHECKING:  # views installs these pages: importing it here would be circular
    from statekeeper_server.console.views import Console

STATUSES = [
    name.removeprefix("RUN_STATUS_")
    for name in snapshots_pb2.RunStatus.DESCRIPTOR.values_by_name
    if name != "RUN_STATUS_UNSPECIFIED"
]
"""The run statuses a visitor may filter by, as shown."""


def install(console: Console, app: web.Application) -> None:
    """Add `/snapshots` (the filtered list) and `/snapshots/{run_id}` to `app`."""
    pages = _SnapshotPages(console)
    app.router.add_get("/snapshots", console.guard(pages.snapshots))
    app.router.add_get("/snapshots/{run_id}", console.guard(pages.snapshot))


def snapshot_view(snapshot: snapshots_pb2.Snapshot) -> dict[str, Any]:
    """A snapshot as template values: enum names without their prefix, numbers as
    numbers, times as RFC 3339 text, messages and request made readable."""
    usage = snapshot.total_usage
    return {
        "run_id": snapshot.run_id,
        "session_id": snapshot.session_id,
        "status": snapshots_pb2.RunStatus.Name(snapshot.status).removeprefix("RUN_STATUS_"),
        "iteration": snapshot.iteration,
        "current_state": _named(
            snapshots_pb2.TurnState.Name(snapshot.current_state), "TURN_STATE_"
        ),
        "usage": {
            "input": usage.input_tokens,
            "output": usage.output_tokens,
            "cached input": usage.cached_input_tokens,
            "reasoning": usage.reasoning_tokens,
            "total": usage.total_tokens,
        },
        "last_finish": _named(common_pb2.FinishReason.Name(snapshot.last_finish), "FINISH_REASON_"),
        "assistant_message": message_view(snapshot.assistant_message)
        if snapshot.HasField("assistant_message")
        else None,
        "assistant_msg_id": snapshot.assistant_msg_id,
        "request": request_view(snapshot.request),
        "output_recovery_count": snapshot.output_recovery_count,
        "timestamp": _time(snapshot, "timestamp"),
        "version": snapshot.version,
        "update_time": _time(snapshot, "update_time"),
    }


def message_view(message: snapshots_pb2.Message) -> dict[str, Any]:
    """A conversation message: role, author name, content parts (text, uri or data
    with its MIME type) and tool calls with their arguments."""
    parts = []
    for part in message.content:
        kind = part.WhichOneof("part") or ""
        value: Any = ""
        if kind == "data":
            value = json_value(MessageToDict(part.data))
        elif kind:
            value = getattr(part, kind)
        parts.append({"kind": kind, "value": value, "mime_type": part.mime_type})
    return {
        "role": snapshots_pb2.MessageRole.Name(message.role).removeprefix("MESSAGE_ROLE_"),
        "name": message.name,
        "tool_call_id": message.tool_call_id,
        "parts": parts,
        "tool_calls": [
            {
                "id": call.id,
                "name": call.name,
                "arguments": json_value(MessageToDict(call.arguments)),
            }
            for call in message.tool_calls
        ],
    }


def request_view(request: snapshots_pb2.RunRequest) -> dict[str, Any]:
    """The request that started a run: model, limits, tools, messages, metadata."""
    return {
        "provider": request.provider,
        "model": request.model,
        "temperature": request.temperature if request.HasField("temperature") else None,
        "limits": MessageToDict(request.limits, preserving_proto_field_name=True),
        "tools": [
            {
                "name": tool.name,
                "description": tool.description,
                "parameters": json_value(MessageToDict(tool.parameters)),
            }
            for tool in request.tools
        ],
        "messages": [message_view(message) for message in request.messages],
        "metadata": json_value(MessageToDict(request.metadata)),
    }


def _named(enum_name: str, prefix: str) -> str:
    """An enum value's name without its type's `prefix`; "—" for the unset value."""
    name = enum_name.removeprefix(prefix)
    return "—" if name == "UNSPECIFIED" else name


def _time(message: Any, field: str) -> str:
    return str(getattr(message, field).ToJsonString()) if message.HasField(field) else ""


class _SnapshotPages:
    def __init__(self, console: Console) -> None:
        self._console = console

    def _stub(self) -> snapshots_pb2_grpc.SnapshotServiceAsyncStub:
        return snapshots_pb2_grpc.SnapshotServiceStub(self._console.channel())

    async def snapshots(self, request: web.Request) -> web.Response:
        session = request.query.get("session", "")
        status = request.query.get("status", "")
        if status and status not in STATUSES:
            return self._console.error(
                request, 400, "INVALID_ARGUMENT", "status: unknown run status"
            )
        pager = Pager.of(request)
        options = self._console.options(request)
        response = await self._stub().ListSnapshots(
            snapshots_pb2.ListSnapshotsRequest(
                page_size=PAGE_SIZE,
                page_token=pager.page,
                session_id=session,
                status=snapshots_pb2.RunStatus.Value("RUN_STATUS_" + (status or "UNSPECIFIED")),
            ),
            metadata=options.metadata,
            timeout=options.timeout,
        )
        filters = {"session": session, "status": status}
        older = pager.older(response.next_page_token)
        newer = pager.newer()
        return self._console.render(
            request,
            "snapshots.html",
            snapshots=[snapshot_view(snapshot) for snapshot in response.snapshots],
            statuses=STATUSES,
            session=session,
            chosen_status=status,
            filtered=bool(session or status),
            older=href(request, ["snapshots"], {**filters, **older}) if older is not None else "",
            newer=href(request, ["snapshots"], {**filters, **newer}) if newer is not None else "",
            one=lambda run_id: href(request, ["snapshots", run_id]),
        )

    async def snapshot(self, request: web.Request) -> web.Response:
        options = self._console.options(request)
        response = await self._stub().LoadSnapshot(
            snapshots_pb2.LoadSnapshotRequest(run_id=request.match_info["run_id"]),
            metadata=options.metadata,
            timeout=options.timeout,
        )
        view = snapshot_view(response.snapshot)
        return self._console.render(
            request,
            "snapshot.html",
            snapshot=view,
            session_link=href(request, ["snapshots"], {"session": view["session_id"]}),
            list_link=href(request, ["snapshots"]),
            fold=FOLD_CHARS,
        )
