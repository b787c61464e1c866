"""The console's pages: each reads or acts through the gRPC API and renders a
Jinja2 template (autoescape on, so no caller text is ever shown unescaped)."""

from __future__ import annotations

import contextvars
import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import jinja2
import markupsafe
from aiohttp import web
from yarl import URL

from statekeeper._calls import CallOptions
from statekeeper.errors import StatekeeperError
from statekeeper.jobs import JobsClient
from statekeeper.v1 import events_pb2, events_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from statekeeper_server.auth.control import AccessControl
from statekeeper_server.console import checkpoint_pages, overview_pages, snapshot_pages, sse
from statekeeper_server.console.access import CANCEL_JOB, RETRY_JOB, ConsoleAccess
from statekeeper_server.console.csrf import Csrf
from statekeeper_server.console.job_views import job_view
from statekeeper_server.console.live import LiveViews
from statekeeper_server.console.peers import is_loopback
from statekeeper_server.console.queue_counts import COUNT_LIMIT, queue_view
from statekeeper_server.console.runs import (
    EVENTS_PAGE,
    FOLD_CHARS,
    TERMINAL_CHOICES,
    TERMINAL_KINDS,
    event_view,
    run_view,
)
from statekeeper_server.console.sessions import Sessions

SESSION_COOKIE = "statekeeper_console"
PAGE_SIZE = 50
CALL_TIMEOUT = 10.0
HERE = Path(__file__).parent

_TOKEN: contextvars.ContextVar[str | None] = contextvars.ContextVar("console_token", default=None)
_SESSION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "console_session", default=None
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATES = [
    name.removeprefix("JOB_STATE_")
    for name in jobs_pb2.JobState.DESCRIPTOR.values_by_name
    if name != "JOB_STATE_UNSPECIFIED"
]


def pretty(value: Any) -> str:
    """`value` as indented JSON text (escaped later by the template)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def when(value: str) -> markupsafe.Markup:
    """An ISO-8601 UTC time as a <time> element (the page's script shows it in the
    viewer's local time); the text is escaped."""
    if not value:
        return markupsafe.Markup("")
    return markupsafe.Markup('<time datetime="{0}">{0}</time>').format(value)


def trimmed_to(error: grpc.aio.AioRpcError) -> int | None:
    """The first kept seq of a run when `error` says the seqs asked for were trimmed
    (SEQ_TRUNCATED), else None."""
    details = StatekeeperError.from_call(error)
    kept = details.info.metadata.get("first_seq", "") if details.info is not None else ""
    if details.reason != "SEQ_TRUNCATED" or not kept.isdigit():
        return None
    return int(kept)


class Console:
    """The console of one server, talking to it over `target` (its own gRPC port)."""

    def __init__(
        self,
        target: str,
        loopback_only: bool,
        login: bool = False,
        access: AccessControl | None = None,
    ) -> None:
        """`login`: access control is on, so visitors sign in with a token that
        every call of theirs then carries. `access`: the server's access control,
        asked what a visitor's token may do so that pages show only that."""
        self._target = target
        self.access = ConsoleAccess(access)
        self.streams = sse.Slots(sse.MAX_STREAMS)
        """The live streams (SSE) open now, at most `sse.MAX_STREAMS`."""
        self.heartbeat = sse.HEARTBEAT_SECONDS
        self.page_size = PAGE_SIZE
        """Rows of a list page."""
        self.call_timeout = CALL_TIMEOUT
        """Deadline of each unary call (seconds)."""
        self._sessions = Sessions() if login else None
        self._loopback_only = loopback_only
        self._channel: grpc.aio.Channel | None = None
        self._csrf = Csrf()
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._templates.filters["pretty"] = pretty
        self._templates.filters["when"] = when
        self._live = LiveViews(self)

    def install(self, app: web.Application) -> None:
        """Add the console's routes (`/`, `/jobs`, `/jobs/{id}`, `/static/`) to `app`."""
        overview_pages.install(self, app)
        app.router.add_get("/jobs", self.guard(self._jobs))
        app.router.add_get("/jobs/{job_id}", self.guard(self._job), name="job")
        app.router.add_get("/jobs/{job_id}/watch", self.guard(self._live.job_watch))
        app.router.add_get("/jobs-watch", self.guard(self._live.jobs_watch))
        app.router.add_get("/runs/{run_id}/tail", self.guard(self._live.run_tail))
        app.router.add_post("/jobs/{job_id}/{action:retry|cancel}", self.guard(self._act))
        app.router.add_get("/runs", self.guard(self._runs))
        app.router.add_get("/runs/{run_id}", self.guard(self._run), name="run")
        checkpoint_pages.install(self, app)
        snapshot_pages.install(self, app)
        app.router.add_get("/login", self.guard(self._login_form, signed_in=False))
        app.router.add_post("/login", self.guard(self._login, signed_in=False))
        app.router.add_post("/logout", self.guard(self._logout, signed_in=False))
        app.router.add_static("/static/", HERE / "static", append_version=True)
        app.on_cleanup.append(self._close)
        app.on_response_prepare.append(_add_security_headers)

    async def _close(self, app: web.Application) -> None:
        if self._channel is not None:
            await self._channel.close()

    def channel(self) -> grpc.aio.Channel:
        """The console's channel to its own server, opened on first use."""
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._target)
        return self._channel

    def options(self, request: web.Request) -> CallOptions:
        """The calls' namespace (`?namespace=`), deadline and credential."""
        return CallOptions(request.query.get("namespace", "default"), CALL_TIMEOUT, _TOKEN.get())

    def jobs_client(self, request: web.Request) -> JobsClient:
        """A jobs client calling with the visitor's namespace and credential."""
        return JobsClient(self.channel(), self.options(request))

    def guard(self, handler: Handler, *, signed_in: bool = True) -> Handler:
        """Wrap `handler`: the peer rule, the sign-in (with access control, when
        `signed_in`), the session cookie, gRPC errors as pages."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            # Requests of one keep-alive connection may share a context: start clean,
            # so no visitor's session or token can carry over to the next request.
            _SESSION.set(None)
            _TOKEN.set(None)
            if self._loopback_only and not is_loopback(request.remote):
                return self.error(
                    request,
                    403,
                    "PERMISSION_DENIED",
                    "the console is served to loopback peers only (see --console-public)",
                )
            if signed_in and self._sessions is not None:
                token = self._sessions.token(request.cookies.get(SESSION_COOKIE, ""))
                if token is None:
                    raise web.HTTPSeeOther("/login")
                _TOKEN.set(token)
            try:
                response = await handler(request)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                status = {
                    grpc.StatusCode.PERMISSION_DENIED: 403,
                    grpc.StatusCode.UNAUTHENTICATED: 401,
                    grpc.StatusCode.NOT_FOUND: 404,
                    grpc.StatusCode.INVALID_ARGUMENT: 400,
                    grpc.StatusCode.FAILED_PRECONDITION: 409,
                }.get(code, 503 if code == grpc.StatusCode.UNAVAILABLE else 502)
                response = self.error(request, status, code.name, error.details() or "")
            if SESSION_COOKIE not in request.cookies:
                response.set_cookie(
                    SESSION_COOKIE,
                    self._session(request),
                    httponly=True,
                    samesite="Strict",
                    path="/",
                )
            return response

        return guarded

    def sign_in_check(self, request: web.Request) -> Callable[[], bool]:
        """A check of whether the sign-in `request` was served under still holds
        (always true without access control): a live view ends once it fails."""
        sessions = self._sessions
        if sessions is None:
            return lambda: True
        session_id = request.cookies.get(SESSION_COOKIE, "")
        return lambda: sessions.token(session_id) is not None

    def _session(self, request: web.Request) -> str:
        """The visitor's session id: its cookie, or one made for this request
        (set afresh for each request by the guard)."""
        session = _SESSION.get()
        if session is None:
            session = request.cookies.get(SESSION_COOKIE) or secrets.token_urlsafe(32)
            _SESSION.set(session)
        return session

    def fragment(self, request: web.Request, template: str, **context: Any) -> str:
        """`template` rendered (autoescaped) with `context` plus what every page shows:
        the namespace, the form CSRF token, whether the visitor signed in and the
        namespaces they may switch to."""
        return self._templates.get_template(template).render(
            namespace=request.query.get("namespace", "default"),
            csrf=self._csrf.token(self._session(request)),
            signed_in=_TOKEN.get() is not None,
            switcher=self.access.namespaces(_TOKEN.get()),
            **context,
        )

    def render(
        self, request: web.Request, template: str, *, status: int = 200, **context: Any
    ) -> web.Response:
        """The page of `template`: `fragment` as an HTML response."""
        page = self.fragment(request, template, **context)
        return web.Response(status=status, text=page, content_type="text/html")

    def may(self, request: web.Request, method: str) -> bool:
        """Whether the visitor's token may call `method` (a gRPC path) in the page's
        namespace, as the API decides it (True without access control)."""
        return self.access.may(_TOKEN.get(), request.query.get("namespace", "default"), method)

    def job_actions(self, request: web.Request) -> dict[str, bool]:
        """Which job actions (retry, cancel) the page may offer the visitor."""
        return {"retry": self.may(request, RETRY_JOB), "cancel": self.may(request, CANCEL_JOB)}

    def error(self, request: web.Request, status: int, code: str, message: str) -> web.Response:
        """The error page: HTTP `status`, the API's status `code` and `message` (escaped)."""
        return self.render(request, "error.html", status=status, code=code, message=message)

    async def _jobs(self, request: web.Request) -> web.Response:
        query = request.query
        state_name = query.get("state", "")
        if state_name and state_name not in STATES:
            return self.error(request, 400, "INVALID_ARGUMENT", "state: unknown job state")
        state = jobs_pb2.JobState.Value("JOB_STATE_" + (state_name or "UNSPECIFIED"))
        stub = jobs_pb2_grpc.JobServiceStub(self.channel())
        response = await stub.ListJobs(
            jobs_pb2.ListJobsRequest(
                page_size=PAGE_SIZE,
                page_token=query.get("page", ""),
                queue=query.get("queue", ""),
                kind=query.get("kind", ""),
                state=state,
            ),
            metadata=self.options(request).metadata,
            timeout=CALL_TIMEOUT,
        )
        queue_stats = None
        if query.get("queue", ""):
            stats = await stub.GetQueueStats(
                jobs_pb2.GetQueueStatsRequest(
                    queue=query["queue"], page_size=1, count_limit=COUNT_LIMIT
                ),
                metadata=self.options(request).metadata,
                timeout=CALL_TIMEOUT,
            )
            queue_stats = queue_view(stats.queues[0]) if stats.queues else None
        return self.render(
            request,
            "jobs.html",
            queue_stats=queue_stats,
            jobs=[job_view(job) for job in response.jobs],
            next_page=response.next_page_token,
            states=STATES,
            queue=query.get("queue", ""),
            kind=query.get("kind", ""),
            state=state_name,
            page=query.get("page", ""),
        )

    async def _runs(self, request: web.Request) -> web.Response:
        """The runs list, filtered by the server (ListRuns' filters). A filter the API
        refuses is a 400 page that keeps the filters in their fields, with the reason."""
        query = request.query
        filters: dict[str, Any] = {
            name: query.get(name, "") for name in ("prefix", "session", "terminal")
        }
        if filters["terminal"] not in TERMINAL_CHOICES:
            return self._runs_refused(request, filters, "terminal: must be yes or no")
        stub = events_pb2_grpc.EventLogServiceStub(self.channel())
        try:
            response = await stub.ListRuns(
                events_pb2.ListRunsRequest(
                    page_size=PAGE_SIZE,
                    page_token=query.get("page", ""),
                    run_id_prefix=filters["prefix"],
                    session_id=filters["session"],
                    terminal=TERMINAL_CHOICES[filters["terminal"]],
                ),
                metadata=self.options(request).metadata,
                timeout=CALL_TIMEOUT,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            return self._runs_refused(request, filters, error.details() or "")
        runs = [run_view(run) for run in response.runs]
        return self.render(
            request,
            "runs.html",
            runs=runs,
            next_page=response.next_page_token,
            problem="",
            **filters,
        )

    def _runs_refused(
        self, request: web.Request, filters: dict[str, Any], problem: str
    ) -> web.Response:
        """The runs list answering filters the API refused: HTTP 400, the filters kept in
        their fields, the reason (naming the field) shown."""
        return self.render(
            request, "runs.html", status=400, runs=[], next_page="", problem=problem, **filters
        )

    async def _run(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        after = request.query.get("after", "0")
        if not after.isdigit():
            return self.error(request, 400, "INVALID_ARGUMENT", "after: must be a seq number")
        stub = events_pb2_grpc.EventLogServiceStub(self.channel())
        metadata = self.options(request).metadata
        try:
            response = await stub.ListEvents(
                events_pb2.ListEventsRequest(
                    run_id=run_id, after_seq=int(after), limit=EVENTS_PAGE
                ),
                metadata=metadata,
                timeout=CALL_TIMEOUT,
            )
        except grpc.aio.AioRpcError as error:
            kept = trimmed_to(error)
            if kept is None:
                raise
            # Asked for events that were trimmed: show the history from where it starts.
            after = str(kept - 1)
            response = await stub.ListEvents(
                events_pb2.ListEventsRequest(
                    run_id=run_id, after_seq=int(after), limit=EVENTS_PAGE
                ),
                metadata=metadata,
                timeout=CALL_TIMEOUT,
            )
        events = [event_view(envelope) for envelope in response.envelopes]
        shown_to = events[-1]["seq"] if events else int(after)
        more = shown_to < response.last_seq
        latest = max(response.last_seq - EVENTS_PAGE, response.first_seq - 1, 0)
        return self.render(
            request,
            "run.html",
            run_id=run_id,
            events=events,
            more=more,
            latest=latest if more and latest > shown_to else None,
            last_seq=response.last_seq,
            first_seq=response.first_seq,
            shown_to=shown_to,
            terminal=not more and bool(events) and events[-1]["kind"] in TERMINAL_KINDS,
            fold=FOLD_CHARS,
        )

    async def _job(self, request: web.Request) -> web.Response:
        job = await self.jobs_client(request).get(request.match_info["job_id"])
        return self.render(
            request, "job.html", job=job_view(job), actions=self.job_actions(request)
        )

    def csrf_ok(self, request: web.Request, form: Any) -> bool:
        """Whether `form` carries the CSRF token of the visitor's session."""
        token = form.get("csrf")
        session = request.cookies.get(SESSION_COOKIE, "")
        return bool(session) and isinstance(token, str) and self._csrf.valid(session, token)

    def stale_form(self, request: web.Request) -> web.Response:
        """The page answering a form whose CSRF token does not match."""
        return self.error(
            request,
            403,
            "PERMISSION_DENIED",
            "the form is stale or not from this console: reload the page",
        )

    async def _login_form(self, request: web.Request) -> web.Response:
        return self.render(request, "login.html")

    async def _login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if not self.csrf_ok(request, form):
            return self.stale_form(request)
        token = form.get("token")
        if self._sessions is None:
            raise web.HTTPSeeOther("/")
        if not isinstance(token, str) or not token.strip():
            return self.error(request, 400, "INVALID_ARGUMENT", "token: required")
        session_id = self._sessions.open(token.strip())
        readable = self.access.namespaces(token.strip())
        # Land where the token may read: its first namespace when "default" is not one.
        home = "/"
        if not readable.any and readable.listed and "default" not in readable.listed:
            home = str(URL("/").with_query(namespace=readable.listed[0]))
        response = web.HTTPSeeOther(home)
        response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="Strict", path="/")
        raise response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if not self.csrf_ok(request, form):
            return self.stale_form(request)
        if self._sessions is not None:
            self._sessions.close(request.cookies.get(SESSION_COOKIE, ""))
        response = web.HTTPSeeOther("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    async def _act(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if not self.csrf_ok(request, form):
            return self.stale_form(request)
        job_id = request.match_info["job_id"]
        jobs = self.jobs_client(request)
        if request.match_info["action"] == "retry":
            await jobs.retry(job_id)
        else:
            await jobs.cancel(job_id)
        location = (
            request.app.router["job"]
            .url_for(job_id=job_id)
            .with_query(namespace=request.query.get("namespace", "default"))
        )
        raise web.HTTPSeeOther(location)


SECURITY_HEADERS = {
    # Only the console's own files may run or style a page, no page may frame it
    # (its actions cannot be clickjacked), and forms post only back to it.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self';"
        " frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


async def _add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Give every response of the side port the console's security headers."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
