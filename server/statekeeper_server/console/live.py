"""The console's live views: a run's tail (fed by ReplayEvents) and jobs' state
changes (fed by WatchJobs), sent to the page as Server-Sent Events.

Every event carries HTML rendered here by the same templates as the pages
(autoescaped), so what a live view adds is escaped exactly like the page.
The page's script understands three events:

- `append`: HTML to add at the end of the live list (`id` is the event's seq,
  so a reconnecting browser resumes after it);
- `swap`: JSON `{"id": ..., "html": ...}`, the element of that id replaced;
- `end`: HTML saying why the stream ended; the page stops listening.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web

from statekeeper.v1 import events_pb2, events_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from statekeeper_server.console.job_views import job_view
from statekeeper_server.console.runs import FOLD_CHARS, event_view
from statekeeper_server.console.sse import EventStream, forward

if TYPE_CHECKING:
    from statekeeper_server.console.views import Console


class LiveViews:
    """The SSE endpoints of one console."""

    def __init__(self, console: Console) -> None:
        self._console = console

    @contextlib.asynccontextmanager
    async def _opened(self, request: web.Request) -> AsyncIterator[EventStream | None]:
        """The visitor's event stream, opened, holding one of the console's places for
        live views until it ends; None (nothing opened) when every place is taken."""
        if not self._console.streams.take():
            yield None
            return
        try:
            stream = EventStream(request, self._console.sign_in_check(request))
            await stream.open()
            yield stream
        finally:
            self._console.streams.give()

    def _full(self, request: web.Request) -> web.Response:
        """The 503 page answering a live view beyond the console's most."""
        limit = self._console.streams.limit
        return self._console.error(
            request,
            503,
            "UNAVAILABLE",
            f"the console already serves {limit} live views, its most:"
            " reload the page later to follow it live",
        )

    async def _end(self, request: web.Request, stream: EventStream, **context: Any) -> None:
        """Send the `end` event rendered from `context`; nothing if the visitor left."""
        with contextlib.suppress(ConnectionError):
            await stream.send("end", self._console.fragment(request, "_live_end.html", **context))

    async def _serve(
        self,
        request: web.Request,
        call: grpc.aio.UnaryStreamCall[Any, Any],
        stream: EventStream,
        on_message: Any,
        **ended: Any,
    ) -> None:
        """Forward `call` to `stream`; tell the visitor how it ended (`ended` when the
        call itself ends, the API's status when it fails), except when the server is
        unavailable (stopping): the stream then just ends, and the browser reconnects
        and resumes after the last event it received."""
        try:
            if await forward(stream, call, on_message, self._console.heartbeat):
                await self._end(request, stream, **ended)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                return  # the server is stopping: the browser reconnects and resumes
            code = error.code().name
            await self._end(request, stream, code=code, message=error.details() or "")
        except ConnectionError:
            pass  # the visitor left while a write was under way

    async def run_tail(self, request: web.Request) -> web.StreamResponse:
        """GET /runs/{run_id}/tail?after=SEQ: the run's events after SEQ (or after the
        browser's Last-Event-ID), then live ones until the run's terminal event."""
        run_id = request.match_info["run_id"]
        after = request.query.get("after", "0")
        if not after.isdigit():
            return self._console.error(request, 400, "INVALID_ARGUMENT", "after: must be a seq")
        resume = request.headers.get("Last-Event-ID", "")
        after_seq = max(int(after), int(resume) if resume.isdigit() else 0)
        async with self._opened(request) as opened:
            if opened is None:
                return self._full(request)
            stream = opened
            stub = events_pb2_grpc.EventLogServiceStub(self._console.channel())
            call = stub.ReplayEvents(
                events_pb2.ReplayEventsRequest(run_id=run_id, after_seq=after_seq, follow=True),
                metadata=self._console.options(request).metadata,
            )

            async def on_message(message: events_pb2.ReplayEventsResponse) -> bool:
                for envelope in message.batch.envelopes:
                    row = self._console.fragment(
                        request, "_event.html", event=event_view(envelope), fold=FOLD_CHARS
                    )
                    await stream.send("append", row, str(envelope.seq))
                return True

            await self._serve(request, call, stream, on_message, terminal=True)
            return stream.response

    async def job_watch(self, request: web.Request) -> web.StreamResponse:
        """GET /jobs/{job_id}/watch: the job's state section, sent again each time the
        job changes (and once when the watch starts, for changes made meanwhile)."""
        job_id = request.match_info["job_id"]
        async with self._opened(request) as opened:
            if opened is None:
                return self._full(request)
            stream = opened
            jobs = self._console.jobs_client(request)
            stub = jobs_pb2_grpc.JobServiceStub(self._console.channel())
            call = stub.WatchJobs(
                jobs_pb2.WatchJobsRequest(job_ids=[job_id]),
                metadata=self._console.options(request).metadata,
            )

            async def on_message(message: jobs_pb2.WatchJobsResponse) -> bool:
                if message.WhichOneof("message") in ("started", "changes"):
                    section = self._console.fragment(
                        request,
                        "_job_state.html",
                        job=job_view(await jobs.get(job_id)),
                        actions=self._console.job_actions(request),
                    )
                    await stream.send("swap", json.dumps({"id": "job-live", "html": section}))
                return True

            await self._serve(request, call, stream, on_message, code="", message="")
            return stream.response

    async def jobs_watch(self, request: web.Request) -> web.StreamResponse:
        """GET /jobs-watch?queue=&kind=&state=&page=: the rows of that page of the jobs
        list, each sent again when its job changes; changes of jobs not on the page are
        counted in a note asking to reload."""
        query = request.query
        state_name = query.get("state", "")
        if state_name and (
            "JOB_STATE_" + state_name not in jobs_pb2.JobState.DESCRIPTOR.values_by_name
        ):
            return self._console.error(request, 400, "INVALID_ARGUMENT", "state: unknown")
        async with self._opened(request) as opened:
            if opened is None:
                return self._full(request)
            stream = opened
            metadata = self._console.options(request).metadata
            jobs = self._console.jobs_client(request)
            stub = jobs_pb2_grpc.JobServiceStub(self._console.channel())
            call = stub.WatchJobs(
                jobs_pb2.WatchJobsRequest(queue=query.get("queue", ""), kind=query.get("kind", "")),
                metadata=metadata,
            )
            shown: set[str] = set()
            elsewhere = 0

            async def send_row(job: jobs_pb2.Job) -> None:
                view = job_view(job)
                for cell in ("state", "attempt"):
                    html = self._console.fragment(request, f"_job_{cell}_cell.html", job=view)
                    swap = {"id": f"job-{cell}-{job.job_id}", "html": html}
                    await stream.send("swap", json.dumps(swap))

            async def on_message(message: jobs_pb2.WatchJobsResponse) -> bool:
                nonlocal elsewhere
                kind = message.WhichOneof("message")
                if kind == "started":
                    # Changes made between the page and the watch: the page's rows afresh.
                    page = await stub.ListJobs(
                        jobs_pb2.ListJobsRequest(
                            page_size=self._console.page_size,
                            page_token=query.get("page", ""),
                            queue=query.get("queue", ""),
                            kind=query.get("kind", ""),
                            state=jobs_pb2.JobState.Value(
                                "JOB_STATE_" + (state_name or "UNSPECIFIED")
                            ),
                        ),
                        metadata=metadata,
                        timeout=self._console.call_timeout,
                    )
                    for job in page.jobs:
                        shown.add(job.job_id)
                        await send_row(job)
                elif kind == "changes":
                    changed = dict.fromkeys(change.job_id for change in message.changes.changes)
                    for job_id in changed:
                        if job_id in shown:
                            await send_row(await jobs.get(job_id))
                        else:
                            elsewhere += 1
                    if elsewhere:
                        note = self._console.fragment(
                            request, "_jobs_note.html", elsewhere=elsewhere
                        )
                        await stream.send("swap", json.dumps({"id": "jobs-note", "html": note}))
                return True

            await self._serve(request, call, stream, on_message, code="", message="")
            return stream.response
