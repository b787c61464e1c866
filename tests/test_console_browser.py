"""The web console in a real browser (headless Chromium, tests/browser.py): what a
visitor sees and does by clicking, typing and going back, against a real server.

One browser serves the whole module; each test gets a fresh server and a fresh
browser context (no cookies carried over). `tab.open_page(path)` opens a page of the
console, `grpc_client` checks through the API what the page did, and `guarded`
/ `signed_in` give a server with access control and a tab signed in to it.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from playwright.async_api import expect

import statekeeper
from statekeeper.events import custom_event
from statekeeper.v1 import events_pb2, jobs_pb2
from statekeeper_server.app import Application
from statekeeper_server.console.runs import EVENTS_PAGE, FOLD_CHARS
from statekeeper_server.console.views import PAGE_SIZE
from tests import browser_fixtures, console_demo
from tests.browser import ConsoleTab, save_screenshot
from tests.browser_fixtures import (
    COMPLETED,
    HOSTILE,
    Guarded,
    assert_nothing_ran,
    assert_shown_as_text,
    cells,
    dead_job,
)

# The console's sign-in depends on whether the server has access control: these tests
# choose it. One event loop for the module, so that its one browser serves every test.
pytestmark = [pytest.mark.own_access_control, pytest.mark.asyncio(loop_scope="module")]

# The shared fixtures (tests/browser_fixtures.py), named here for pytest to find.
chromium = browser_fixtures.chromium
app = browser_fixtures.app
grpc_client = browser_fixtures.grpc_client
tab = browser_fixtures.tab
guarded = browser_fixtures.guarded
guarded_tab = browser_fixtures.guarded_tab
signed_in = browser_fixtures.signed_in


# -- runs ---------------------------------------------------------------------------


async def test_runs_list_pages_to_the_runs_beyond_the_first_page(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    run_ids = [f"run-{n:03d}" for n in range(PAGE_SIZE + 3)]
    for run_id in run_ids:
        await grpc_client.events.append(run_id, custom_event("step"))
    page = await tab.open_page("/runs")
    first = await cells(page, "run")
    assert len(first) == PAGE_SIZE
    await page.get_by_role("link", name="Next page").click()
    await expect(page).to_have_url(re.compile(r"[?&]page="))
    await expect(page.locator("tr.run")).to_have_count(3)
    second = await cells(page, "run")
    assert sorted(first + second) == run_ids
    await expect(page.get_by_role("link", name="Next page")).to_have_count(0)


async def test_runs_list_filters_by_run_id_prefix(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    for run_id in ("alpha-1", "beta-1", "beta-2"):
        await grpc_client.events.append(run_id, custom_event("step"))
    page = await tab.open_page("/runs")
    await page.get_by_label("Run id starts with").fill("beta")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"[?&]prefix=beta(&|$)"))
    await expect(page.locator("tr.run")).to_have_count(2)
    assert sorted(await cells(page, "run")) == ["beta-1", "beta-2"]


async def test_runs_list_filters_by_session(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    started = events_pb2.AgentEvent(run_started=events_pb2.RunStarted(session_id="s-42"))
    await grpc_client.events.append("in-session", started)
    await grpc_client.events.append("elsewhere", custom_event("step"))
    page = await tab.open_page("/runs")
    await page.get_by_label("Session").fill("s-42")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"[?&]session=s-42(&|$)"))
    await expect(page.locator("tr.run")).to_have_count(1)
    assert await cells(page, "run") == ["in-session"]
    assert await cells(page, "run", column=1) == ["s-42"]


async def test_runs_list_filters_by_terminal_state(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    await grpc_client.events.append("going", custom_event("step"))
    await grpc_client.events.append("ended", COMPLETED)
    page = await tab.open_page("/runs")
    await page.get_by_label("Terminal").select_option("yes")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"[?&]terminal=yes(&|$)"))
    await expect(page.locator("tr.run")).to_have_count(1)
    assert await cells(page, "run") == ["ended"]
    await page.get_by_label("Terminal").select_option("no")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"[?&]terminal=no(&|$)"))
    await expect(page.locator("tr.run")).to_have_count(1)
    assert await cells(page, "run") == ["going"]


async def test_a_runs_link_opens_its_timeline_of_events(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    await grpc_client.events.append("r1", custom_event("tool.call", {"tool": "search"}))
    await grpc_client.events.append("r1", COMPLETED)
    page = await tab.open_page("/runs")
    await page.get_by_role("link", name="r1", exact=True).click()
    await expect(page).to_have_url(re.compile(r"/runs/r1(\?|$)"))
    await expect(page.locator("tr.event")).to_have_count(2)
    assert await cells(page, "event") == ["1", "2"]
    assert await cells(page, "event", column=3) == ["custom", "run_completed"]
    assert await cells(page, "event", column=4) == ["tool.call", ""]
    await expect(page.locator("tr.event").first).to_contain_text('"tool": "search"')


async def test_timeline_folds_long_data_until_opened(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    long_text = "x" * (FOLD_CHARS * 2)
    await grpc_client.events.append("r1", custom_event("tool.result", {"text": long_text}))
    page = await tab.open_page("/runs/r1")
    folded = page.locator("tr.event details")
    await expect(folded.locator("pre")).to_be_hidden()
    await folded.locator("summary").click()
    await expect(folded.locator("pre")).to_be_visible()
    await expect(folded.locator("pre")).to_contain_text(long_text)


async def test_timeline_pages_to_the_later_events_of_a_long_run(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    await grpc_client.events.append_many(
        "long", [custom_event("tick", {"n": n}) for n in range(EVENTS_PAGE + 5)]
    )
    page = await tab.open_page("/runs/long")
    await expect(page.locator("tr.event")).to_have_count(EVENTS_PAGE)
    await page.get_by_role("link", name="Later events").click()
    await expect(page).to_have_url(re.compile(rf"[?&]after={EVENTS_PAGE}(&|$)"))
    await expect(page.locator("tr.event")).to_have_count(5)
    first_seq = EVENTS_PAGE + 1
    assert await cells(page, "event") == [str(seq) for seq in range(first_seq, first_seq + 5)]
    await expect(page.get_by_role("link", name="Later events")).to_have_count(0)


# -- jobs ---------------------------------------------------------------------------


async def test_retrying_a_dead_job_from_its_page_makes_it_available(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    job = await dead_job(grpc_client)
    page = await tab.open_page(f"/jobs/{job.job_id}")
    await expect(page.locator("dd.state")).to_have_text("DEAD")
    await page.get_by_role("button", name="Retry").click()
    await expect(page.locator("dd.state")).to_have_text("AVAILABLE")
    assert tab.dialogs == ["Retry this job?"]
    assert (await grpc_client.jobs.get(job.job_id)).state == jobs_pb2.JOB_STATE_AVAILABLE


async def test_a_dead_job_can_be_retried_with_the_keyboard_alone(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    job = await dead_job(grpc_client)
    page = await tab.open_page(f"/jobs/{job.job_id}")
    retry = page.get_by_role("button", name="Retry")
    for _ in range(40):  # Tab through the page's links and fields to the button
        if await retry.evaluate("button => button === document.activeElement"):
            break
        await page.keyboard.press("Tab")
    await expect(retry).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("dd.state")).to_have_text("AVAILABLE")
    assert tab.dialogs == ["Retry this job?"]


async def test_cancelling_a_job_from_its_page_after_confirming_cancels_it(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    job = await grpc_client.jobs.enqueue("mail")
    page = await tab.open_page(f"/jobs/{job.job_id}")
    await page.get_by_role("button", name="Cancel").click()
    await expect(page.locator("dd.state")).to_have_text("CANCELLED")
    assert tab.dialogs == ["Cancel this job?"]
    assert (await grpc_client.jobs.get(job.job_id)).state == jobs_pb2.JOB_STATE_CANCELLED


# -- namespaces ---------------------------------------------------------------------


async def test_switching_namespace_puts_it_in_the_url_and_back_returns_to_the_last(
    app: Application, grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    await grpc_client.jobs.enqueue("mail", queue="home-queue")
    await grpc_client.events.append("home-run", custom_event("step"))
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}", namespace="acme", token="") as acme:
        await acme.jobs.enqueue("bill", queue="acme-queue")
        await acme.events.append("acme-run", custom_event("step"))
    page = await tab.open_page("/")
    await expect(page.get_by_role("link", name="home-queue")).to_be_visible()
    switcher = page.get_by_test_id("namespace-switcher")
    await switcher.fill("acme")
    await switcher.press("Enter")
    await expect(page).to_have_url(re.compile(r"/\?namespace=acme$"))
    await expect(page.get_by_role("link", name="acme-queue")).to_be_visible()
    await expect(page.get_by_role("link", name="home-queue")).to_have_count(0)
    await page.get_by_role("link", name="Runs").click()
    await expect(page).to_have_url(re.compile(r"/runs\?namespace=acme$"))
    await expect(page.locator("tr.run")).to_have_count(1)
    assert await cells(page, "run") == ["acme-run"]
    await page.go_back()
    await expect(page).to_have_url(re.compile(r"/\?namespace=acme$"))
    await expect(page.get_by_role("link", name="acme-queue")).to_be_visible()
    await page.go_back()
    await expect(page).to_have_url(re.compile(r"/$"))
    await expect(page.get_by_role("link", name="home-queue")).to_be_visible()
    await expect(page.get_by_role("link", name="acme-queue")).to_have_count(0)


# -- access control -----------------------------------------------------------------


async def test_with_access_control_a_visitor_signs_in_with_a_token_and_sees_the_overview(
    guarded: Guarded, guarded_tab: ConsoleTab
) -> None:
    async with guarded.client("writer") as writer:
        await writer.jobs.enqueue("mail", queue="guarded-queue")
    page = await guarded_tab.open_page("/")
    await expect(page).to_have_url(re.compile(r"/login$"))
    await page.get_by_label("Token").fill(guarded.tokens["reader"])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/$"))
    await expect(page.get_by_role("link", name="guarded-queue")).to_be_visible()
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()


async def test_a_forged_action_request_of_a_signed_in_visitor_is_refused(
    guarded: Guarded, signed_in: ConsoleTab
) -> None:
    async with guarded.client("writer") as writer:
        job = await writer.jobs.enqueue("mail")
        await signed_in.open_page(f"/jobs/{job.job_id}")
        request = signed_in.page.request  # the tab's cookies: the session is signed in
        without = await request.post(f"/jobs/{job.job_id}/cancel", form={}, max_redirects=0)
        assert without.status == 403
        forged = await request.post(
            f"/jobs/{job.job_id}/cancel", form={"csrf": "forged"}, max_redirects=0
        )
        assert forged.status == 403
        assert (await writer.jobs.get(job.job_id)).state == jobs_pb2.JOB_STATE_AVAILABLE


# -- hostile text -------------------------------------------------------------------


async def test_hostile_custom_types_and_event_data_are_shown_as_text(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    await grpc_client.events.append("r1", custom_event(HOSTILE, {HOSTILE: HOSTILE}))
    page = await tab.open_page("/runs/r1")
    await assert_shown_as_text(tab, page)
    assert await cells(page, "event", column=4) == [HOSTILE]


async def test_hostile_job_payloads_and_errors_are_shown_as_text(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    await grpc_client.jobs.enqueue("convert", {HOSTILE: [HOSTILE]}, queue="docs", max_retries=0)
    [leased] = await grpc_client.jobs.lease("docs", worker_id="w-1")
    await grpc_client.jobs.fail(leased.job_id, leased.lease.lease_id, HOSTILE)
    page = await tab.open_page(f"/jobs/{leased.job_id}")
    await assert_shown_as_text(tab, page)
    await expect(page.locator("ol.errors")).to_contain_text(HOSTILE)


async def test_a_hostile_run_id_in_the_url_is_refused_naming_the_field_and_runs_nothing(
    tab: ConsoleTab,
) -> None:
    page = await tab.open_page("/runs/" + quote(HOSTILE, safe=""), status=400)
    await expect(page.locator("main")).to_contain_text("run_id")
    await assert_nothing_ran(tab, page)


async def test_hostile_run_id_prefix_and_session_filters_stay_in_their_fields(
    tab: ConsoleTab,
) -> None:
    page = await tab.open_page(
        f"/runs?prefix={quote(HOSTILE)}&session={quote(HOSTILE)}", status=400
    )
    await expect(page.get_by_label("Run id starts with")).to_have_value(HOSTILE)
    await expect(page.get_by_label("Session")).to_have_value(HOSTILE)
    await assert_nothing_ran(tab, page)


async def test_a_hostile_job_kind_in_the_url_is_refused_naming_the_field_and_runs_nothing(
    tab: ConsoleTab,
) -> None:
    page = await tab.open_page("/jobs?kind=" + quote(HOSTILE), status=400)
    await expect(page.locator("main")).to_contain_text("kind")
    await assert_nothing_ran(tab, page)


# -- every main page ----------------------------------------------------------------


async def test_each_main_page_renders_without_script_errors(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    demo = await console_demo.fill(grpc_client)
    errors: list[str] = []
    tab.page.on("pageerror", lambda error: errors.append(str(error)))
    # A script or style the content security policy refuses is reported as a console error.
    tab.page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    tab.page.on(
        "response",
        lambda r: (
            errors.append(f"{r.status} {r.request.resource_type} {r.url}")
            if r.status >= 400
            else None
        ),
    )
    for name, path in console_demo.main_pages(demo).items():
        page = await tab.open_page(path)
        await expect(page.locator("main h1").first).to_be_visible()
        assert await page.evaluate("typeof window.htmx") == "object", path
        await save_screenshot(page, name)
    assert errors == []
