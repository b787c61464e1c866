"""The console's live views through a real server: a run's tail (SSE fed by
ReplayEvents) and jobs' state changes (SSE fed by WatchJobs), the bounds on
them, dates as <time> elements, and what a token is shown and may do."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

import statekeeper
from statekeeper.events import custom_event
from statekeeper.v1 import events_pb2, jobs_pb2
from statekeeper_server import compat
from statekeeper_server.app import Application
from statekeeper_server.console import sse
from statekeeper_server.console.runs import EVENTS_PAGE
from tests import console_http
from tests.auth_support import write_tokens
from tests.console_http import csrf_of, page, visitor
from tests.harness import running_app
from tests.waiting import ENOUGH, until

# These tests choose whether the server has access control: what the console
# shows depends on it.
pytestmark = pytest.mark.own_access_control

# The shared fixtures (tests/console_http.py), named here for pytest to find.
app = console_http.app
client = console_http.client
browser = console_http.browser

HOSTILE = "<script>alert(1)</script>\"'"
COMPLETED = events_pb2.AgentEvent(run_completed=events_pb2.RunCompleted())


@dataclass
class Frame:
    """One SSE frame: an event (name, data, id), or a comment (`event` ":")."""

    event: str
    data: str
    id: str | None = None


async def frames(response: aiohttp.ClientResponse) -> AsyncIterator[Frame]:
    """The frames of an SSE response as they arrive (comments included)."""
    event, data, event_id = "message", [], None
    while True:
        raw = await response.content.readline()
        if not raw:
            return
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            yield Frame(":", line[1:].strip())
        elif line:
            name, _, value = line.partition(": ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                event_id = value
        elif data:
            yield Frame(event, "\n".join(data), event_id)
            event, data, event_id = "message", [], None


async def next_frame(stream: AsyncIterator[Frame], event: str) -> Frame:
    """The next frame named `event` (others skipped); fails if the stream ends first
    or nothing comes for ENOUGH seconds."""
    async with compat.timeout(ENOUGH):
        async for frame in stream:
            if frame.event == event:
                return frame
    raise AssertionError(f"the stream ended before a {event!r} frame")


async def next_swap(stream: AsyncIterator[Frame], element_id: str, text: str) -> str:
    """The HTML of the next `swap` of `element_id` holding `text`."""
    while True:
        swap = json.loads((await next_frame(stream, "swap")).data)
        if swap["id"] == element_id and text in swap["html"]:
            return str(swap["html"])


@asynccontextmanager
async def live(session: aiohttp.ClientSession, path: str) -> AsyncIterator[AsyncIterator[Frame]]:
    """The frames of the SSE stream at `path` (checked to be one)."""
    async with session.get(path) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        yield frames(response)


# -- a run's live tail --------------------------------------------------------------


async def test_an_event_appended_through_grpc_arrives_on_the_tail(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append("r1", custom_event("step", {"n": 1}))
    async with live(browser, "/runs/r1/tail?after=1") as stream:
        await client.events.append("r1", custom_event("tool.call", {"tool": "search"}))
        frame = await next_frame(stream, "append")
    assert frame.id == "2"
    assert '<tr class="event">' in frame.data
    assert "tool.call" in frame.data
    assert "search" in frame.data


async def test_the_tail_sends_the_events_after_the_seq_asked_for_only(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append_many("r2", [custom_event("tick", {"n": n}) for n in range(3)])
    async with live(browser, "/runs/r2/tail?after=2") as stream:
        frame = await next_frame(stream, "append")
    assert frame.id == "3"


async def test_a_reconnecting_browser_resumes_after_its_last_event_id(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append_many("r3", [custom_event("tick") for _ in range(3)])
    async with browser.get("/runs/r3/tail?after=0", headers={"Last-Event-ID": "2"}) as response:
        frame = await next_frame(frames(response), "append")
    assert frame.id == "3"


async def test_the_tail_ends_saying_the_run_is_terminal_after_its_terminal_event(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append("r4", custom_event("step"))
    async with live(browser, "/runs/r4/tail?after=1") as stream:
        await client.events.append("r4", COMPLETED)
        appended = await next_frame(stream, "append")
        end = await next_frame(stream, "end")
    assert "run_completed" in appended.data
    assert 'data-testid="run-terminal"' in end.data


async def test_the_run_page_follows_live_after_its_last_event(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append_many("r5", [custom_event("tick") for _ in range(2)])
    text = await page(browser, "/runs/r5")
    assert 'data-testid="live-tail"' in text
    assert 'data-live-src="/runs/r5/tail?namespace=default"' in text
    assert 'data-live-after="2"' in text
    assert 'data-live-target="timeline-events"' in text
    assert '<tbody id="timeline-events"' in text


async def test_a_terminal_runs_page_says_so_and_opens_no_tail(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append("r6", custom_event("step"))
    await client.events.append("r6", COMPLETED)
    text = await page(browser, "/runs/r6")
    assert 'data-testid="run-terminal"' in text
    assert "data-live-src" not in text


async def test_a_page_before_the_latest_links_the_latest_events_instead_of_a_tail(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append_many(
        "long", [custom_event("tick") for _ in range(EVENTS_PAGE * 2 + 5)]
    )
    text = await page(browser, "/runs/long")
    assert "data-live-src" not in text
    assert (
        f'<a class="latest" href="/runs/long?namespace=default&amp;after={EVENTS_PAGE + 5}"' in text
    )
    latest = await page(browser, f"/runs/long?after={EVENTS_PAGE + 5}")
    assert f'data-live-after="{EVENTS_PAGE * 2 + 5}"' in latest


async def test_the_run_page_shows_where_the_history_was_trimmed(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append_many("r7", [custom_event("tick") for _ in range(5)])
    await client.events.truncate("r7", 3)
    text = await page(browser, "/runs/r7")
    assert re.search(r'data-testid="run-truncated">[^<]*before seq 4', text)


async def test_an_untrimmed_run_shows_no_truncation_point(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append("r8", custom_event("tick"))
    assert "run-truncated" not in await page(browser, "/runs/r8")


async def test_leaving_the_tail_ends_the_server_side_replay(
    app: Application, client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append("r9", custom_event("step"))
    async with live(browser, "/runs/r9/tail?after=1"):
        await until(lambda: app.admission.in_flight == 1, "the tail's replay is in flight")
    await until(lambda: app.admission.in_flight == 0, "the replay ended with the visitor")


async def test_a_tail_after_a_seq_that_is_not_a_number_is_a_400_page(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/runs/r/tail?after=x", status=400)
    assert "INVALID_ARGUMENT" in text
    assert "after" in text


async def test_a_tail_the_api_refuses_ends_with_its_status(
    browser: aiohttp.ClientSession,
) -> None:
    async with live(browser, "/runs/no-such-run/tail?after=3") as stream:
        end = await next_frame(stream, "end")
    assert "NOT_FOUND" in end.data


@pytest.fixture
async def eager_heartbeats(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Application]:
    monkeypatch.setattr(sse, "HEARTBEAT_SECONDS", 0.05)
    async with running_app("memory:") as running:
        yield running


async def test_an_idle_tail_sends_heartbeat_comments(
    eager_heartbeats: Application,
) -> None:
    async with statekeeper.AsyncClient(f"127.0.0.1:{eager_heartbeats.port}", token="") as c:
        await c.events.append("quiet", custom_event("step"))
    async with (
        visitor(eager_heartbeats) as session,
        live(session, "/runs/quiet/tail?after=1") as stream,
    ):
        comment = await next_frame(stream, ":")
    assert comment.data == "heartbeat"


@pytest.fixture
async def one_live_view(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Application]:
    monkeypatch.setattr(sse, "MAX_STREAMS", 1)
    async with running_app("memory:") as running:
        yield running


async def test_live_views_beyond_the_cap_get_a_503_page(one_live_view: Application) -> None:
    async with statekeeper.AsyncClient(f"127.0.0.1:{one_live_view.port}", token="") as c:
        await c.events.append("busy", custom_event("step"))
    async with (
        visitor(one_live_view) as first,
        visitor(one_live_view) as second,
        live(first, "/runs/busy/tail?after=1"),
    ):
        await until(lambda: one_live_view.admission.in_flight == 1, "the first tail is on")
        async with second.get("/runs/busy/tail?after=1") as refused:
            assert refused.status == 503
            assert refused.content_type == "text/html"
            assert "UNAVAILABLE" in await refused.text()


async def test_a_live_view_frees_its_place_under_the_cap_when_it_ends(
    one_live_view: Application,
) -> None:
    async with statekeeper.AsyncClient(f"127.0.0.1:{one_live_view.port}", token="") as c:
        await c.events.append("done", custom_event("step"))
        await c.events.append("done", COMPLETED)
    async with visitor(one_live_view) as session:
        for _ in range(2):
            async with live(session, "/runs/done/tail?after=2") as stream:
                await next_frame(stream, "end")


async def test_tail_fragments_escape_hostile_types_keys_and_values(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append("r-hostile", custom_event("step"))
    async with live(browser, "/runs/r-hostile/tail?after=1") as stream:
        await client.events.append(
            "r-hostile", custom_event("t", {HOSTILE: HOSTILE, "list": [HOSTILE]})
        )
        frame = await next_frame(stream, "append")
    assert "<script>" not in frame.data
    assert "&lt;script&gt;" in frame.data


async def test_a_hostile_run_id_is_escaped_on_its_tail(browser: aiohttp.ClientSession) -> None:
    async with browser.get(f"/runs/{quote(HOSTILE, safe='')}/tail?after=1") as response:
        body = await response.text()
    assert "<script>" not in body


# -- jobs' state changes --------------------------------------------------------------


async def test_a_job_completed_through_grpc_arrives_on_the_jobs_watch(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    job = await client.jobs.enqueue("convert", queue="docs")
    [leased] = await client.jobs.lease("docs", worker_id="w-1")
    async with live(browser, f"/jobs/{job.job_id}/watch") as stream:
        await next_swap(stream, "job-live", '<dd class="state">RUNNING</dd>')
        await client.jobs.complete(job.job_id, leased.lease.lease_id, {"pages": 3})
        html = await next_swap(stream, "job-live", '<dd class="state">SUCCEEDED</dd>')
    assert "pages" in html


async def test_a_jobs_failed_attempt_arrives_on_its_watch_with_the_attempt(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    job = await client.jobs.enqueue("convert", queue="docs", max_retries=0)
    [leased] = await client.jobs.lease("docs", worker_id="w-2")
    async with live(browser, f"/jobs/{job.job_id}/watch") as stream:
        await next_swap(stream, "job-live", "RUNNING")
        await client.jobs.fail(job.job_id, leased.lease.lease_id, "disk full")
        html = await next_swap(stream, "job-live", '<dd class="state">DEAD</dd>')
    assert '<dd class="attempt">1 of 1</dd>' in html
    assert "disk full" in html
    assert 'data-testid="job-retry"' in html


async def test_the_job_page_listens_to_its_jobs_watch(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    job = await client.jobs.enqueue("mail")
    text = await page(browser, f"/jobs/{job.job_id}")
    assert f'data-live-src="/jobs/{job.job_id}/watch?namespace=default"' in text
    assert '<div id="job-live">' in text


async def test_a_rows_new_state_arrives_on_the_jobs_list_watch(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    job = await client.jobs.enqueue("mail", queue="outbox")
    text = await page(browser, "/jobs?queue=outbox")
    assert f'id="job-state-{job.job_id}"' in text
    assert 'data-live-src="/jobs-watch?namespace=default&amp;queue=outbox' in text
    async with live(browser, "/jobs-watch?queue=outbox") as stream:
        await next_swap(stream, f"job-state-{job.job_id}", "AVAILABLE")
        await client.jobs.cancel(job.job_id)
        html = await next_swap(stream, f"job-state-{job.job_id}", "CANCELLED")
    assert html.startswith(f'<td class="job-state" id="job-state-{job.job_id}"')


async def test_the_jobs_list_watch_counts_changes_of_jobs_not_on_the_page(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    shown = await client.jobs.enqueue("mail", queue="later")
    async with live(browser, "/jobs-watch?queue=later") as stream:
        await next_swap(stream, f"job-state-{shown.job_id}", "AVAILABLE")  # watching now
        await client.jobs.enqueue("mail", queue="later")
        html = await next_swap(stream, "jobs-note", "not on this page")
    assert html.startswith('<p id="jobs-note"')
    assert ">1 change to jobs" in html


async def test_job_watch_fragments_escape_hostile_results_and_errors(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    job = await client.jobs.enqueue("convert", queue="docs", max_retries=1)
    [leased] = await client.jobs.lease("docs", worker_id="w-3")
    async with live(browser, f"/jobs/{job.job_id}/watch") as stream:
        await next_swap(stream, "job-live", "RUNNING")
        await client.jobs.fail(job.job_id, leased.lease.lease_id, HOSTILE, retry_delay=0)
        failed = await next_swap(stream, "job-live", "&lt;script&gt;")
        [again] = await client.jobs.lease("docs", worker_id="w-3")
        await client.jobs.complete(job.job_id, again.lease.lease_id, {HOSTILE: [HOSTILE]})
        done = await next_swap(stream, "job-live", "SUCCEEDED")
    for html in (failed, done):
        assert "<script>" not in html
    assert "&lt;script&gt;" in done


# -- dates and progress ---------------------------------------------------------------


async def test_dates_are_time_elements_in_utc_for_the_viewers_script(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append("r-time", custom_event("step"))
    job = await client.jobs.enqueue("mail")
    for text in (await page(browser, "/runs/r-time"), await page(browser, f"/jobs/{job.job_id}")):
        found = re.search(r'<time datetime="([^"]+)">([^<]+)</time>', text)
        assert found
        assert found.group(1) == found.group(2)
        assert found.group(1).endswith("Z")
        assert '<script src="/static/localtime.js' in text


async def test_every_page_has_a_loading_indicator_for_htmx_requests(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/jobs")
    assert 'hx-indicator="#loading"' in text
    assert '<span id="loading" class="htmx-indicator"' in text


@pytest.mark.parametrize("script", ["live.js", "localtime.js"])
async def test_the_live_scripts_are_served_from_the_package(
    browser: aiohttp.ClientSession, script: str
) -> None:
    async with browser.get(f"/static/{script}") as response:
        assert response.status == 200
        assert "statekeeper console" in (await response.text())[:200]


# -- what a token is shown and may do ----------------------------------------------


async def test_without_access_control_the_namespace_is_typed_freely(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/?namespace=acme")
    assert re.search(r'<input id="namespace-switcher"[^>]* name="namespace" value="acme"', text)
    assert "<select" not in text.split("<main>")[0]


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[Application, dict[str, str]]]:
    tokens = write_tokens(
        tmp_path / "tokens.toml",
        {
            "reader": ["default:read"],
            "writer": ["default:write"],
            "several": ["acme:read", "beta:write", "*:metrics"],
            "everywhere": ["*:read", "acme:write"],
        },
    )
    async with running_app("memory:", auth_tokens_file=str(tmp_path / "tokens.toml")) as app:
        yield app, tokens


@asynccontextmanager
async def signed_in(app: Application, token: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with visitor(app) as session:
        csrf = csrf_of(await page(session, "/login"))
        async with session.post("/login", data={"csrf": csrf, "token": token}) as response:
            assert response.status == 200, await response.text()
        yield session


async def writer_job(app: Application, tokens: dict[str, str], *, dead: bool) -> str:
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}", token=tokens["writer"]) as w:
        job = await w.jobs.enqueue("mail", queue="q", max_retries=0)
        if dead:
            [leased] = await w.jobs.lease("q", worker_id="w")
            await w.jobs.fail(job.job_id, leased.lease.lease_id, "boom")
        return job.job_id


async def test_a_read_only_token_sees_no_action_buttons(
    guarded: tuple[Application, dict[str, str]],
) -> None:
    app, tokens = guarded
    dead = await writer_job(app, tokens, dead=True)
    waiting = await writer_job(app, tokens, dead=False)
    async with signed_in(app, tokens["reader"]) as session:
        for job_id in (dead, waiting):
            text = await page(session, f"/jobs/{job_id}")
            assert "job-retry" not in text
            assert "job-cancel" not in text
            assert "/retry" not in text
            assert "/cancel" not in text
            assert 'data-testid="job-read-only"' in text


async def test_a_token_that_may_write_sees_the_action_buttons(
    guarded: tuple[Application, dict[str, str]],
) -> None:
    app, tokens = guarded
    dead = await writer_job(app, tokens, dead=True)
    waiting = await writer_job(app, tokens, dead=False)
    async with signed_in(app, tokens["writer"]) as session:
        assert 'data-testid="job-retry"' in await page(session, f"/jobs/{dead}")
        assert 'data-testid="job-cancel"' in await page(session, f"/jobs/{waiting}")


async def test_a_read_only_tokens_job_watch_offers_no_actions(
    guarded: tuple[Application, dict[str, str]],
) -> None:
    app, tokens = guarded
    dead = await writer_job(app, tokens, dead=True)
    async with (
        signed_in(app, tokens["reader"]) as session,
        live(session, f"/jobs/{dead}/watch") as stream,
    ):
        html = await next_swap(stream, "job-live", "DEAD")
    assert "job-retry" not in html
    assert "/retry" not in html


async def test_a_forged_action_of_a_read_only_token_is_refused_by_the_api(
    guarded: tuple[Application, dict[str, str]],
) -> None:
    app, tokens = guarded
    waiting = await writer_job(app, tokens, dead=False)
    async with signed_in(app, tokens["reader"]) as session:
        csrf = csrf_of(await page(session, f"/jobs/{waiting}"))  # the sign-out form's
        async with session.post(f"/jobs/{waiting}/cancel", data={"csrf": csrf}) as response:
            text = await response.text()
            assert response.status == 403
            assert "PERMISSION_DENIED" in text
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}", token=tokens["writer"]) as w:
        assert (await w.jobs.get(waiting)).state == jobs_pb2.JOB_STATE_AVAILABLE


async def test_signing_in_lands_on_a_namespace_the_token_may_read(
    guarded: tuple[Application, dict[str, str]],
) -> None:
    app, tokens = guarded
    async with visitor(app) as session:
        csrf = csrf_of(await page(session, "/login"))
        data = {"csrf": csrf, "token": tokens["several"]}
        async with session.post("/login", data=data, allow_redirects=False) as response:
            assert response.headers["Location"] == "/?namespace=acme"


async def test_the_switcher_lists_only_the_namespaces_the_token_may_read(
    guarded: tuple[Application, dict[str, str]],
) -> None:
    app, tokens = guarded
    async with signed_in(app, tokens["several"]) as session:
        text = await page(session, "/jobs?namespace=acme")
    switcher = re.search(r'<select id="namespace-switcher"[^>]*>(.*?)</select>', text, re.S)
    assert switcher
    options = re.findall(r'<option value="([^"]*)"( selected)?>', switcher.group(1))
    assert options == [("acme", " selected"), ("beta", "")]


async def test_a_token_reading_every_namespace_may_type_one(
    guarded: tuple[Application, dict[str, str]],
) -> None:
    app, tokens = guarded
    async with signed_in(app, tokens["everywhere"]) as session:
        text = await page(session, "/jobs?namespace=zeta")
    assert re.search(r'<input id="namespace-switcher"[^>]* value="zeta"', text)
    assert '<datalist id="namespaces-listed"><option value="acme">' in text


async def test_signing_out_ends_the_sessions_open_live_views(
    guarded: tuple[Application, dict[str, str]],
) -> None:
    app, tokens = guarded
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}", token=tokens["writer"]) as w:
        await w.events.append("r1", custom_event("step"))
    async with signed_in(app, tokens["reader"]) as session:
        async with live(session, "/runs/r1/tail?after=1") as stream:
            await until(lambda: app.admission.in_flight == 1, "the tail's replay is in flight")
            csrf = csrf_of(await page(session, "/"))
            async with session.post("/logout", data={"csrf": csrf}) as response:
                await response.read()
            async with compat.timeout(ENOUGH):
                left = [frame async for frame in stream if frame.event == "append"]
            assert left == []
        await until(lambda: app.admission.in_flight == 0, "the replay ended with the sign-in")
