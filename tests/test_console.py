"""The web console at / of the HTTP side port, through a real server: pages
render what the gRPC API holds, actions go through the API and need the
form's CSRF token, caller text is always escaped, and who may see it."""

from __future__ import annotations

import html
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from unittest import mock
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from yarl import URL

import statekeeper
from statekeeper.events import custom_event
from statekeeper.jobs import job_spec
from statekeeper.v1 import events_pb2, jobs_pb2
from statekeeper_server.app import Application
from statekeeper_server.console.peers import is_loopback
from statekeeper_server.console.runs import EVENTS_PAGE, FOLD_CHARS
from statekeeper_server.console.views import PAGE_SIZE, Console
from tests import console_http
from tests.auth_support import write_tokens
from tests.certificates import CertificateAuthority
from tests.console_http import csrf_of, page, visitor
from tests.harness import ServerProcess, running_app
from tests.metrics_scrape import http_get

# These tests choose whether the server has access control: the console's sign-in
# depends on it.
pytestmark = pytest.mark.own_access_control

# The shared fixtures (tests/console_http.py), named here for pytest to find.
app = console_http.app
client = console_http.client
browser = console_http.browser

HOSTILE = "<script>alert(1)</script>\"'"
COMPLETED = events_pb2.AgentEvent(run_completed=events_pb2.RunCompleted())


async def test_overview_counts_each_queues_jobs_by_state(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.jobs.enqueue("mail", queue="outbox")
    await client.jobs.enqueue("mail", queue="outbox")
    cancelled = await client.jobs.enqueue("mail", queue="outbox")
    await client.jobs.cancel(cancelled.job_id)
    text = await page(browser, "/")
    row = re.search(r'<tr class="queue">(.*?)</tr>', text, re.S)
    assert row
    assert ">outbox<" in row.group(1)
    cells = re.findall(r"state=(\w+)\">(\d+)<", row.group(1))
    assert ("AVAILABLE", "2") in cells
    assert ("CANCELLED", "1") in cells


async def test_overview_shows_the_servers_health(browser: aiohttp.ClientSession) -> None:
    text = await page(browser, "/")
    assert '<p class="health">Server and store: <strong>SERVING</strong></p>' in text


async def test_overview_shows_the_namespace_asked_for(
    app: Application, browser: aiohttp.ClientSession
) -> None:
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}", namespace="acme", token="") as acme:
        await acme.jobs.enqueue("bill", queue="acme-queue")
    assert ">acme-queue<" not in await page(browser, "/")
    assert ">acme-queue<" in await page(browser, "/?namespace=acme")


async def test_jobs_list_filters_by_queue_kind_and_state(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    a = await client.jobs.enqueue("resize", queue="images")
    b = await client.jobs.enqueue("crop", queue="images")
    c = await client.jobs.enqueue("resize", queue="video")
    await client.jobs.cancel(b.job_id)
    by_queue = await page(browser, "/jobs?queue=images")
    assert a.job_id in by_queue
    assert b.job_id in by_queue
    assert c.job_id not in by_queue
    by_kind = await page(browser, "/jobs?kind=resize")
    assert a.job_id in by_kind
    assert c.job_id in by_kind
    assert b.job_id not in by_kind
    by_state = await page(browser, "/jobs?state=CANCELLED")
    assert b.job_id in by_state
    assert a.job_id not in by_state


async def test_jobs_list_pages_through_every_job(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    jobs = await client.jobs.enqueue_many(
        [job_spec("tick", {"n": n}) for n in range(PAGE_SIZE + 3)]
    )
    first = await page(browser, "/jobs")
    assert first.count('<tr class="job">') == PAGE_SIZE
    link = re.search(r'<a class="next" href="([^"]+)"', first)
    assert link
    second = await page(browser, html.unescape(link.group(1)))
    assert second.count('<tr class="job">') == 3
    assert jobs[-1].job_id in second
    assert jobs[-1].job_id not in first
    assert 'class="next"' not in second


async def test_an_unknown_state_filter_is_a_400_page_naming_the_field(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/jobs?state=NOPE", status=400)
    assert "INVALID_ARGUMENT" in text
    assert "state" in text


async def test_job_page_shows_payload_attempt_errors_and_result(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    job = await client.jobs.enqueue("convert", {"file": "a.pdf"}, queue="docs", max_retries=0)
    [leased] = await client.jobs.lease("docs", worker_id="w-7")
    await client.jobs.fail(leased.job_id, leased.lease.lease_id, "disk full")
    text = await page(browser, f"/jobs/{job.job_id}")
    assert "a.pdf" in text
    assert "disk full" in text
    assert "w-7" in text
    assert '<dd class="state">DEAD</dd>' in text


async def test_an_unknown_job_is_a_404_page_with_the_api_status(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/jobs/no-such-job", status=404)
    assert "NOT_FOUND" in text
    assert "Traceback" not in text


async def test_cancel_with_the_forms_csrf_token_cancels_the_job(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    job = await client.jobs.enqueue("mail")
    token = csrf_of(await page(browser, f"/jobs/{job.job_id}"))
    async with browser.post(f"/jobs/{job.job_id}/cancel", data={"csrf": token}) as response:
        assert response.status == 200
        assert '<dd class="state">CANCELLED</dd>' in await response.text()
    assert (await client.jobs.get(job.job_id)).state == jobs_pb2.JOB_STATE_CANCELLED


async def test_retry_with_the_forms_csrf_token_requeues_a_cancelled_job(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    job = await client.jobs.enqueue("mail")
    await client.jobs.cancel(job.job_id)
    token = csrf_of(await page(browser, f"/jobs/{job.job_id}"))
    async with browser.post(f"/jobs/{job.job_id}/retry", data={"csrf": token}) as response:
        assert response.status == 200
    assert (await client.jobs.get(job.job_id)).state == jobs_pb2.JOB_STATE_AVAILABLE


async def test_an_action_without_the_csrf_token_is_refused_and_changes_nothing(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    job = await client.jobs.enqueue("mail")
    await page(browser, f"/jobs/{job.job_id}")  # the session cookie is set
    async with browser.post(f"/jobs/{job.job_id}/cancel", data={"csrf": "forged"}) as response:
        assert response.status == 403
    async with browser.post(f"/jobs/{job.job_id}/cancel") as response:
        assert response.status == 403
    assert (await client.jobs.get(job.job_id)).state == jobs_pb2.JOB_STATE_AVAILABLE


async def test_an_action_refused_by_the_api_shows_its_status(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    job = await client.jobs.enqueue("mail")
    token = csrf_of(await page(browser, f"/jobs/{job.job_id}"))
    async with browser.post(f"/jobs/{job.job_id}/retry", data={"csrf": token}) as response:
        text = await response.text()
        assert response.status == 409
        assert "FAILED_PRECONDITION" in text
        assert "Traceback" not in text


async def test_the_session_cookie_is_httponly_and_samesite_strict(
    browser: aiohttp.ClientSession,
) -> None:
    async with browser.get("/") as response:
        cookie = response.cookies["statekeeper_console"]
        assert cookie["httponly"]
        assert cookie["samesite"] == "Strict"


async def test_caller_text_is_escaped_on_every_page_and_error_page(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    job = await client.jobs.enqueue("mail", {HOSTILE: HOSTILE, "list": [HOSTILE]})
    pages = [
        await page(browser, f"/jobs/{job.job_id}"),
        await page(browser, "/?namespace=" + quote(HOSTILE), status=400),
    ]
    for text in pages:
        assert "<script>" not in text
        assert "&lt;script&gt;" in text
    refused = await page(browser, "/jobs?kind=" + quote(HOSTILE), status=400)
    assert "<script>" not in refused
    async with browser.get("/jobs/" + quote(HOSTILE, safe="")) as response:
        assert response.status in (400, 404)
        assert "<script>" not in await response.text()


async def test_namespace_text_in_links_cannot_become_a_javascript_url(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/jobs?namespace=javascript:alert(1)", status=400)
    assert 'href="javascript:' not in text
    assert "namespace=javascript%3Aalert%281%29" in text


async def test_static_files_are_served_for_offline_use(browser: aiohttp.ClientSession) -> None:
    async with browser.get("/static/htmx.min.js") as response:
        assert response.status == 200
        assert "Zero-Clause BSD" in (await response.text())[:200]


async def test_console_off_leaves_slash_unserved() -> None:
    async with running_app("memory:", console="off") as app:
        answer = await http_get(app.http_port, "/")
        assert answer.status == 404


async def test_without_access_control_only_loopback_peers_are_console_peers() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("127.8.9.1")
    assert is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1")
    assert not is_loopback("::ffff:10.0.0.1")
    assert not is_loopback(None)
    assert not is_loopback("")
    assert not is_loopback("localhost")


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
async def test_the_console_serves_a_server_whose_grpc_port_speaks_tls(
    tmp_path: Path, mutual: bool
) -> None:
    server_ca = CertificateAuthority("server CA")
    cert, key = server_ca.issue_server().write(tmp_path, "server")
    tls: dict[str, object] = {"tls_cert": str(cert), "tls_key": str(key)}
    if mutual:
        tls["tls_client_ca"] = str(CertificateAuthority("client CA").write(tmp_path, "client-ca"))
    async with running_app("memory:", **tls) as app:
        answer = await http_get(app.http_port, "/")
        assert answer.status == 200, answer.body
        assert "SERVING" in answer.body


async def test_the_consoles_socket_is_private_to_the_servers_user_and_removed_at_stop() -> None:
    async with running_app("memory:") as app:
        socket = app.console_socket
        assert socket is not None
        assert stat.S_IMODE(socket.directory.stat().st_mode) == 0o700
        assert (socket.directory / "grpc.sock").is_socket()
    assert not socket.directory.exists()


async def test_console_off_opens_no_private_socket() -> None:
    async with running_app("memory:", console="off") as app:
        assert app.console_socket is None


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[Application, dict[str, str]]]:
    tokens = write_tokens(
        tmp_path / "tokens.toml",
        {"reader": ["default:read"], "writer": ["default:write"], "stranger": ["other:read"]},
    )
    async with running_app("memory:", auth_tokens_file=str(tmp_path / "tokens.toml")) as app:
        yield app, tokens


async def sign_in(session: aiohttp.ClientSession, token: str) -> aiohttp.ClientResponse:
    csrf = csrf_of(await page(session, "/login"))
    async with session.post("/login", data={"csrf": csrf, "token": token}) as response:
        await response.read()
        return response


async def test_with_access_control_a_visitor_is_sent_to_sign_in(
    guarded: tuple[Application, dict[str, str]],
) -> None:
    app, _ = guarded
    async with visitor(app) as session, session.get("/", allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"] == "/login"


async def test_signing_in_with_a_token_shows_what_it_may_read(
    guarded: tuple[Application, dict[str, str]],
) -> None:
    app, tokens = guarded
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}", token=tokens["writer"]) as w:
        await w.jobs.enqueue("mail", queue="guarded-queue")
    async with visitor(app) as session:
        signed = await sign_in(session, tokens["reader"])
        assert ">guarded-queue<" in await signed.text()
        assert signed.url.path == "/"
        assert signed.status == 200
        cookie = session.cookie_jar.filter_cookies(signed.url)["statekeeper_console"]
        assert tokens["reader"] not in cookie.value
        assert "Sign out" in await page(session, "/")


async def test_signing_in_replaces_the_session_id(
    guarded: tuple[Application, dict[str, str]],
) -> None:
    app, tokens = guarded
    async with visitor(app) as session:
        await page(session, "/login")
        url = URL(f"http://127.0.0.1:{app.http_port}/")
        before = session.cookie_jar.filter_cookies(url)["statekeeper_console"].value
        await sign_in(session, tokens["reader"])
        after = session.cookie_jar.filter_cookies(url)["statekeeper_console"].value
        assert before != after


async def test_a_token_without_rights_on_the_namespace_gets_a_403_page(
    guarded: tuple[Application, dict[str, str]],
) -> None:
    app, tokens = guarded
    async with visitor(app) as session:
        await sign_in(session, tokens["stranger"])
        text = await page(session, "/jobs", status=403)
        assert "PERMISSION_DENIED" in text
        assert "Traceback" not in text


async def test_an_unknown_token_gets_a_401_page_offering_to_sign_in(
    guarded: tuple[Application, dict[str, str]],
) -> None:
    app, _ = guarded
    async with visitor(app) as session:
        await sign_in(session, "not-a-token")
        text = await page(session, "/", status=401)
        assert "UNAUTHENTICATED" in text
        assert 'href="/login"' in text


async def test_signing_in_needs_the_forms_csrf_token(
    guarded: tuple[Application, dict[str, str]],
) -> None:
    app, tokens = guarded
    async with visitor(app) as session:
        await page(session, "/login")
        async with session.post("/login", data={"csrf": "x", "token": tokens["reader"]}) as r:
            assert r.status == 403
        async with session.get("/", allow_redirects=False) as response:
            assert response.status == 303


async def test_signing_out_ends_the_session(
    guarded: tuple[Application, dict[str, str]],
) -> None:
    app, tokens = guarded
    async with visitor(app) as session:
        await sign_in(session, tokens["reader"])
        csrf = csrf_of(await page(session, "/"))
        url = URL(f"http://127.0.0.1:{app.http_port}/")
        old = session.cookie_jar.filter_cookies(url)["statekeeper_console"].value
        async with session.post("/logout", data={"csrf": csrf}) as response:
            assert response.url.path == "/login"
    async with visitor(app) as replay:
        replay.cookie_jar.update_cookies({"statekeeper_console": old}, url)
        async with replay.get("/", allow_redirects=False) as response:
            assert response.status == 303


def peer_request(address: str) -> web.Request:
    """A request to / arriving from `address`."""
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (address, 40000) if name == "peername" else default
    )
    return make_mocked_request("GET", "/", transport=transport)


async def console_answer(console: Console, address: str) -> int:
    app = web.Application()
    console.install(app)
    request = peer_request(address)
    match = await app.router.resolve(request)
    response = await match.handler(request)
    return response.status


async def test_a_non_loopback_peer_gets_403_without_access_control() -> None:
    console = Console("127.0.0.1:1", loopback_only=True)
    assert await console_answer(console, "192.0.2.7") == 403


async def test_console_public_serves_a_non_loopback_peer() -> None:
    console = Console("127.0.0.1:1", loopback_only=False)
    # Past the peer rule the console calls the (absent) server: the API's error, not 403.
    assert await console_answer(console, "192.0.2.7") == 503


async def test_runs_list_shows_each_run_with_its_session_and_terminal_state(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append("run-open", custom_event("step", {"n": 1}))
    await client.events.append("run-done", custom_event("step"))
    await client.events.append("run-done", COMPLETED)
    text = await page(browser, "/runs")
    assert "run-open" in text
    assert "run-done" in text


async def test_runs_list_filters_by_prefix_and_terminal_state(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append("alpha-1", custom_event("step"))
    await client.events.append("beta-1", custom_event("step"))
    await client.events.append("beta-2", COMPLETED)
    by_prefix = await page(browser, "/runs?prefix=beta")
    assert "beta-1" in by_prefix
    assert "alpha-1" not in by_prefix
    finished = await page(browser, "/runs?terminal=yes")
    assert "beta-2" in finished
    assert "beta-1" not in finished
    unfinished = await page(browser, "/runs?terminal=no")
    assert "beta-1" in unfinished
    assert "beta-2" not in unfinished


async def test_run_timeline_shows_kind_seq_type_and_data_folding_long_data(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append("r1", custom_event("tool.call", {"tool": "search"}))
    await client.events.append("r1", custom_event("tool.result", {"text": "x" * (FOLD_CHARS * 2)}))
    text = await page(browser, "/runs/r1")
    rows = re.findall(r'<tr class="event">(.*?)</tr>', text, re.S)
    assert len(rows) == 2
    assert "<td>1</td>" in rows[0]
    assert "tool.call" in rows[0]
    assert "search" in rows[0]
    assert "<details>" not in rows[0]
    assert "<details>" in rows[1]


async def test_run_timeline_pages_through_a_long_history(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append_many(
        "long", [custom_event("tick", {"n": n}) for n in range(EVENTS_PAGE + 5)]
    )
    first = await page(browser, "/runs/long")
    assert first.count('<tr class="event">') == EVENTS_PAGE
    link = re.search(r'<a class="next" href="([^"]+)"', first)
    assert link
    second = await page(browser, html.unescape(link.group(1)))
    assert second.count('<tr class="event">') == 5
    assert 'class="next"' not in second


async def test_run_timeline_escapes_event_types_and_data(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append("r-hostile", custom_event("t", {HOSTILE: HOSTILE}))
    text = await page(browser, "/runs/r-hostile")
    assert "<script>" not in text
    assert "&lt;script&gt;" in text


async def test_runs_list_filters_by_session(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    started = events_pb2.AgentEvent(run_started=events_pb2.RunStarted(session_id="s-42"))
    await client.events.append("in-session", started)
    await client.events.append("elsewhere", custom_event("step"))
    text = await page(browser, "/runs?session=s-42")
    assert "in-session" in text
    assert "elsewhere" not in text


async def test_serve_with_console_off_answers_404_at_slash() -> None:
    server = ServerProcess("memory:", "--console=off").start()
    try:
        assert (await http_get(server.http_port, "/")).status == 404
        assert (await http_get(server.http_port, "/livez")).status == 200
    finally:
        server.stop()


async def test_serve_serves_the_console_by_default() -> None:
    server = ServerProcess("memory:").start()
    try:
        answer = await http_get(server.http_port, "/")
        assert answer.status == 200
        assert "statekeeper console" in answer.body
    finally:
        server.stop()


async def test_a_signed_in_visitors_token_does_not_serve_the_next_request_without_cookie(
    guarded: tuple[Application, dict[str, str]],
) -> None:
    app, tokens = guarded
    connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection for both requests
    async with aiohttp.ClientSession(
        base_url=f"http://127.0.0.1:{app.http_port}",
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        connector=connector,
    ) as session:
        await sign_in(session, tokens["reader"])
        await page(session, "/")
        session.cookie_jar.clear()
        async with session.get("/", allow_redirects=False) as response:
            assert response.status == 303


async def test_every_console_response_forbids_framing_and_foreign_scripts(
    browser: aiohttp.ClientSession,
) -> None:
    for path in ("/", "/runs", "/static/console.css", "/jobs/absent"):
        async with browser.get(path) as response:
            policy = response.headers["Content-Security-Policy"]
            assert "script-src 'self'" in policy
            assert "frame-ancestors 'none'" in policy
            assert response.headers["X-Frame-Options"] == "DENY"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
