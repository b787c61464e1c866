"""The console's live views, permission-aware actions, checkpoint and snapshot pages in
a real browser (headless Chromium, tests/browser.py), against a real server.

The page is opened first and the change is made afterwards through gRPC, as a worker
or an agent would: the test then waits on the page's DOM (Playwright's `expect`)
for the change to show, never for a fixed time. One browser serves the module; each
test gets a fresh server and browser context (tests/browser_fixtures.py).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import pytest
from playwright.async_api import Page, expect

import statekeeper
from statekeeper.events import custom_event
from statekeeper.v1 import checkpoints_pb2, common_pb2, jobs_pb2, snapshots_pb2
from statekeeper_server.app import Application
from tests import browser_fixtures
from tests.browser import ConsoleTab
from tests.browser_fixtures import (
    COMPLETED,
    HOSTILE,
    Guarded,
    assert_nothing_ran,
    assert_shown_as_text,
    cells,
    dead_job,
    sign_in,
)
from tests.test_readme import buf_curl_commands, run_buf_curl

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


async def listening(page: Page, test_id: str) -> None:
    """Wait until the live view `test_id` of `page` has its stream open."""
    await expect(page.get_by_test_id(test_id)).to_have_attribute("data-live-state", "open")


# -- a run's live tail --------------------------------------------------------------


async def test_the_live_tail_shows_an_event_appended_while_the_page_is_open(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    await grpc_client.events.append("r1", custom_event("llm.request", {"messages": 1}))
    page = await tab.open_page("/runs/r1")
    await listening(page, "live-tail")
    await grpc_client.events.append("r1", custom_event("tool.call", {"tool": "search"}))
    rows = page.locator("#timeline-events tr.event")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(1)).to_contain_text('"tool": "search"')
    assert await cells(page, "event") == ["1", "2"]
    assert await cells(page, "event", column=4) == ["llm.request", "tool.call"]
    await expect(page.get_by_test_id("live-tail")).to_have_attribute("data-live-state", "open")


async def test_the_live_tail_shows_the_run_terminal_when_its_terminal_event_is_appended(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    await grpc_client.events.append("r1", custom_event("step"))
    page = await tab.open_page("/runs/r1")
    await listening(page, "live-tail")
    await expect(page.get_by_test_id("run-terminal")).to_have_count(0)
    await grpc_client.events.append("r1", COMPLETED)
    await expect(page.get_by_test_id("live-tail")).to_have_attribute("data-live-state", "ended")
    await expect(page.get_by_test_id("run-terminal")).to_be_visible()
    assert await cells(page, "event", column=3) == ["custom", "run_completed"]


async def test_the_live_tail_follows_the_readmes_buf_curl_appends(
    app: Application, tab: ConsoleTab
) -> None:
    start, tool_call_and_end = [c for c in buf_curl_commands() if '"run-7"' in c][:2]
    await run_buf_curl(start, app.port)
    page = await tab.open_page("/runs/run-7")
    await listening(page, "live-tail")
    await run_buf_curl(tool_call_and_end, app.port)
    await expect(page.locator("#timeline-events tr.event")).to_have_count(3)
    await expect(page.get_by_test_id("run-terminal")).to_be_visible()
    assert await cells(page, "event", column=3) == ["run_started", "custom", "run_completed"]


# -- jobs changing under the visitor's eyes ------------------------------------------


async def test_a_job_page_shows_the_job_leased_then_completed_by_a_worker(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    job = await grpc_client.jobs.enqueue("convert", {"file": "a.pdf"}, queue="docs")
    page = await tab.open_page(f"/jobs/{job.job_id}")
    await listening(page, "job-watch")
    state = page.locator("#job-live dd.state")
    await expect(state).to_have_text("AVAILABLE")
    [leased] = await grpc_client.jobs.lease("docs", worker_id="converter-1")
    await expect(state).to_have_text("RUNNING")
    await expect(page.locator("#job-live")).to_contain_text("converter-1")
    await grpc_client.jobs.complete(job.job_id, leased.lease.lease_id, {"pages": 3})
    await expect(state).to_have_text("SUCCEEDED")
    await expect(page.locator("#job-live")).to_contain_text('"pages": 3')
    await expect(page.locator("#job-cancel")).to_have_count(0)


async def test_a_job_page_shows_the_job_dead_with_its_error_and_retry_when_a_worker_fails_it(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    job = await grpc_client.jobs.enqueue("convert", queue="docs", max_retries=0)
    page = await tab.open_page(f"/jobs/{job.job_id}")
    await listening(page, "job-watch")
    await expect(page.locator("#job-cancel")).to_be_visible()
    [leased] = await grpc_client.jobs.lease("docs", worker_id="converter-1")
    await grpc_client.jobs.fail(job.job_id, leased.lease.lease_id, "disk full")
    await expect(page.locator("#job-live dd.state")).to_have_text("DEAD")
    await expect(page.locator("#job-live dd.attempt")).to_have_text("1 of 1")
    await expect(page.locator("ol.errors")).to_contain_text("disk full")
    await expect(page.locator("#job-retry")).to_be_visible()
    await expect(page.locator("#job-cancel")).to_have_count(0)


async def test_a_retry_button_shown_live_retries_the_job_after_confirming(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    job = await grpc_client.jobs.enqueue("convert", queue="docs", max_retries=0)
    page = await tab.open_page(f"/jobs/{job.job_id}")
    await listening(page, "job-watch")
    [leased] = await grpc_client.jobs.lease("docs", worker_id="converter-1")
    await grpc_client.jobs.fail(job.job_id, leased.lease.lease_id, "disk full")
    await page.locator("#job-retry").click()
    await expect(page.locator("#job-live dd.state")).to_have_text("AVAILABLE")
    assert tab.dialogs == ["Retry this job?"]
    assert (await grpc_client.jobs.get(job.job_id)).state == jobs_pb2.JOB_STATE_AVAILABLE


async def test_the_jobs_list_updates_the_state_of_the_row_whose_job_a_worker_completes(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    first = await grpc_client.jobs.enqueue("mail", queue="emails")
    second = await grpc_client.jobs.enqueue("mail", queue="emails")
    page = await tab.open_page("/jobs")
    await listening(page, "jobs-watch")
    await expect(page.locator(f"#job-state-{first.job_id}")).to_have_text("AVAILABLE")
    [leased] = await grpc_client.jobs.lease("emails", worker_id="mailer-1")
    await grpc_client.jobs.complete(leased.job_id, leased.lease.lease_id, {"sent": True})
    other = second.job_id if leased.job_id == first.job_id else first.job_id
    await expect(page.locator(f"#job-state-{leased.job_id}")).to_have_text("SUCCEEDED")
    await expect(page.locator(f"#job-state-{other}")).to_have_text("AVAILABLE")
    await expect(page.locator("#jobs-list tr.job")).to_have_count(2)


async def test_the_jobs_list_counts_changes_of_jobs_not_on_the_page_in_a_note(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    shown = await grpc_client.jobs.enqueue("mail", queue="emails")
    page = await tab.open_page("/jobs?queue=emails")
    await listening(page, "jobs-watch")
    # Once a change of the page's own job shows, the watch knows which jobs are on it.
    await grpc_client.jobs.lease("emails", worker_id="mailer-1")
    await expect(page.locator(f"#job-state-{shown.job_id}")).to_have_text("RUNNING")
    await expect(page.get_by_test_id("jobs-note")).to_be_hidden()
    await grpc_client.jobs.enqueue("mail", queue="emails")
    await expect(page.get_by_test_id("jobs-note")).to_contain_text("1 change to jobs not on")
    await expect(page.locator("#jobs-list tr.job")).to_have_count(1)


# -- a read-only token ---------------------------------------------------------------


async def signed_in_as_reader(guarded: Guarded, guarded_tab: ConsoleTab) -> Page:
    """`guarded_tab`, signed in with the reader token (default:read, acme:read)."""
    return await sign_in(guarded_tab, guarded.tokens["reader"])


async def test_a_read_only_token_sees_no_retry_button_on_a_dead_jobs_page(
    guarded: Guarded, guarded_tab: ConsoleTab
) -> None:
    async with guarded.client("writer") as writer:
        job = await dead_job(writer)
    await signed_in_as_reader(guarded, guarded_tab)
    page = await guarded_tab.open_page(f"/jobs/{job.job_id}")
    await expect(page.locator("#job-live dd.state")).to_have_text("DEAD")
    await expect(page.get_by_test_id("job-read-only")).to_be_visible()
    await expect(page.locator("#job-retry")).to_have_count(0)
    await expect(page.locator("#job-cancel")).to_have_count(0)


async def test_a_read_only_token_sees_no_cancel_button_on_an_available_jobs_page(
    guarded: Guarded, guarded_tab: ConsoleTab
) -> None:
    async with guarded.client("writer") as writer:
        job = await writer.jobs.enqueue("mail")
    await signed_in_as_reader(guarded, guarded_tab)
    page = await guarded_tab.open_page(f"/jobs/{job.job_id}")
    await expect(page.locator("#job-live dd.state")).to_have_text("AVAILABLE")
    await expect(page.get_by_test_id("job-read-only")).to_be_visible()
    await expect(page.locator("#job-cancel")).to_have_count(0)


async def test_the_switcher_of_a_read_only_token_lists_only_its_namespaces(
    guarded: Guarded, guarded_tab: ConsoleTab
) -> None:
    page = await signed_in_as_reader(guarded, guarded_tab)
    switcher = page.get_by_test_id("namespace-switcher")
    await expect(switcher.locator("option")).to_have_text(["acme", "default"])
    await expect(switcher).to_have_value("default")
    await switcher.select_option("acme")
    await page.get_by_role("button", name="Switch").click()
    await expect(page).to_have_url(re.compile(r"[?&]namespace=acme(&|$)"))
    await expect(page.get_by_test_id("namespace-switcher")).to_have_value("acme")


async def test_a_retry_posted_with_a_valid_csrf_token_by_a_read_only_token_is_refused(
    guarded: Guarded, guarded_tab: ConsoleTab
) -> None:
    async with guarded.client("writer") as writer:
        job = await dead_job(writer)
        page = await signed_in_as_reader(guarded, guarded_tab)
        await guarded_tab.open_page(f"/jobs/{job.job_id}")
        csrf = await page.locator("form.logout input[name=csrf]").get_attribute("value")
        assert csrf
        # The tab's own request context: its session cookie, a genuine CSRF token.
        refused = await page.request.post(
            f"/jobs/{job.job_id}/retry", form={"csrf": csrf}, max_redirects=0
        )
        assert refused.status == 403
        text = await refused.text()
        assert "PERMISSION_DENIED" in text
        assert "stale" not in text  # refused by the API's permissions, not by the CSRF check
        assert (await writer.jobs.get(job.job_id)).state == jobs_pb2.JOB_STATE_DEAD


# -- checkpoints ---------------------------------------------------------------------

SCOPES: list[dict[str, Any]] = [
    {"cart": {"items": ["book"], "total": 10}, "coupon": "X1", "user": "ann"},
    {"cart": {"items": ["book"], "total": 10}, "coupon": "X1", "user": "ann", "step": "pay"},
    {"cart": {"items": ["book", "pen"], "total": 12}, "user": "ann", "paid": True},
]
"""The scope snapshots of a workflow run's three checkpoints, oldest first."""


async def three_checkpoints(
    client: statekeeper.AsyncClient,
) -> list[checkpoints_pb2.WorkflowCheckpoint]:
    """Save run `wf-1` of workflow `checkout` with SCOPES, oldest first."""
    return [
        await client.checkpoints.save_workflow(
            "wf-1", "checkout", step=step, scope_snapshot=scope, metadata={"team": "shop"}
        )
        for step, scope in enumerate(SCOPES, start=1)
    ]


async def test_comparing_two_checkpoints_picked_in_the_history_shows_the_changed_paths(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    first, _, third = await three_checkpoints(grpc_client)
    page = await tab.open_page("/checkpoints")
    await page.get_by_role("link", name="wf-1", exact=True).click()
    await expect(page).to_have_url(re.compile(r"/checkpoints/runs/wf-1(\?|$)"))
    await expect(page.locator("tr.checkpoint")).to_have_count(3)
    await page.get_by_label(f"compare from {first.checkpoint_id}").check()
    await page.get_by_label(f"compare to {third.checkpoint_id}").check()
    await page.get_by_role("button", name="Compare scope snapshots").click()
    diff = rf"/checkpoints/runs/wf-1/diff\?(?=.*&from={first.checkpoint_id})"
    await expect(page).to_have_url(re.compile(diff + rf"(?=.*&to={third.checkpoint_id})"))
    await expect(page.locator("tr.change")).to_have_count(4)
    assert await cells(page, "change") == ["added", "changed", "removed", "added"]
    assert await cells(page, "change", column=1) == [
        "/cart/items/1",
        "/cart/total",
        "/coupon",
        "/paid",
    ]


async def test_parent_links_lead_from_the_newest_checkpoint_to_the_first(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    first, second, third = await three_checkpoints(grpc_client)
    page = await tab.open_page("/checkpoints/runs/wf-1")
    await page.locator("tr.checkpoint").first.locator("a.parent").click()
    await expect(page.locator("main h1")).to_contain_text(second.checkpoint_id)
    await page.locator("a.parent").click()
    await expect(page.locator("main h1")).to_contain_text(first.checkpoint_id)
    await expect(page.locator("main")).to_contain_text("none: the first checkpoint")
    await page.go_back()
    await expect(page.locator("main h1")).to_contain_text(second.checkpoint_id)
    await page.locator("a.diff-parent").click()
    await expect(page.locator("tr.change")).to_have_count(1)
    assert await cells(page, "change", column=1) == ["/step"]
    assert third.parent_checkpoint_id == second.checkpoint_id


# -- snapshots -----------------------------------------------------------------------


def paused_snapshot(run_id: str = "agent-run-7") -> snapshots_pb2.Snapshot:
    """A paused run's snapshot with usage and a last assistant message."""
    return snapshots_pb2.Snapshot(
        run_id=run_id,
        session_id="sess-7",
        status=snapshots_pb2.RUN_STATUS_PAUSED,
        iteration=4,
        total_usage=common_pb2.TokenUsage(input_tokens=120, output_tokens=30, total_tokens=150),
        assistant_message=snapshots_pb2.Message(
            role=snapshots_pb2.MESSAGE_ROLE_ASSISTANT,
            content=[snapshots_pb2.ContentPart(text="The refund is on its way.")],
        ),
    )


async def test_the_snapshots_list_shows_a_saved_snapshots_status_and_tokens(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    await grpc_client.snapshots.save(paused_snapshot())
    page = await tab.open_page("/snapshots")
    await expect(page.locator("tr.snapshot")).to_have_count(1)
    assert await cells(page, "snapshot") == ["agent-run-7"]
    assert await cells(page, "snapshot", column=1) == ["sess-7"]
    assert await cells(page, "snapshot", column=2) == ["PAUSED"]
    assert await cells(page, "snapshot", column=5) == ["150"]


async def test_a_snapshots_page_shows_its_status_usage_and_last_message(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    await grpc_client.snapshots.save(paused_snapshot())
    page = await tab.open_page("/snapshots")
    await page.get_by_role("link", name="agent-run-7", exact=True).click()
    await expect(page).to_have_url(re.compile(r"/snapshots/agent-run-7(\?|$)"))
    await expect(page.locator("dd.status")).to_have_text("PAUSED")
    await expect(page.locator("dd.iteration")).to_have_text("4")
    usage = page.locator("table.usage")
    await expect(usage.get_by_role("row", name="input 120", exact=True)).to_be_visible()
    await expect(usage.get_by_role("row", name="total 150", exact=True)).to_be_visible()
    await expect(page.locator(".message pre.text")).to_have_text("The refund is on its way.")


# -- hostile text --------------------------------------------------------------------


def pointer(key: str) -> str:
    """The JSON pointer of top-level `key`."""
    return "/" + key.replace("~", "~0").replace("/", "~1")


async def hostile_checkpoints(
    client: statekeeper.AsyncClient,
) -> list[checkpoints_pb2.WorkflowCheckpoint]:
    """Two checkpoints of run `wf-1` with HOSTILE as workflow name, metadata and scope."""
    return [
        await client.checkpoints.save_workflow(
            "wf-1", HOSTILE, metadata={HOSTILE: HOSTILE}, scope_snapshot=scope
        )
        for scope in ({}, {HOSTILE: HOSTILE})
    ]


async def test_hostile_workflow_names_and_metadata_are_shown_as_text_in_the_lists(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    await hostile_checkpoints(grpc_client)
    for path in ("/checkpoints", "/checkpoints/runs/wf-1"):
        page = await tab.open_page(path)
        await assert_shown_as_text(tab, page)
        await expect(page.locator("main")).to_contain_text(json.dumps(HOSTILE))


async def test_hostile_scope_keys_and_values_are_shown_as_text_on_the_checkpoint_and_diff(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    old, new = await hostile_checkpoints(grpc_client)
    page = await tab.open_page(f"/checkpoints/runs/wf-1/{new.checkpoint_id}")
    await assert_shown_as_text(tab, page)
    await expect(page.locator("main")).to_contain_text(f"{json.dumps(HOSTILE)}: ")
    diff = f"/checkpoints/runs/wf-1/diff?from={old.checkpoint_id}&to={new.checkpoint_id}"
    page = await tab.open_page(diff)
    await assert_nothing_ran(tab, page)
    assert await cells(page, "change", column=1) == [pointer(HOSTILE)]
    await expect(page.locator("tr.change")).to_contain_text(json.dumps(HOSTILE))


async def test_hostile_workflow_filters_stay_in_their_fields(tab: ConsoleTab) -> None:
    meta = quote(f"{HOSTILE}={HOSTILE}")
    page = await tab.open_page(f"/checkpoints?workflow={quote(HOSTILE)}&meta={meta}")
    await expect(page.get_by_label("Workflow")).to_have_value(HOSTILE)
    await expect(page.get_by_label("Metadata").first).to_have_value(f"{HOSTILE}={HOSTILE}")
    await assert_nothing_ran(tab, page)


async def test_hostile_snapshot_message_text_is_shown_as_text(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    hostile = snapshots_pb2.Message(
        role=snapshots_pb2.MESSAGE_ROLE_ASSISTANT,
        name=HOSTILE,
        content=[snapshots_pb2.ContentPart(text=HOSTILE)],
        tool_calls=[snapshots_pb2.ToolCall(id="call-1", name=HOSTILE)],
    )
    snapshot = paused_snapshot()
    snapshot.assistant_message.CopyFrom(hostile)
    snapshot.request.model = HOSTILE
    await grpc_client.snapshots.save(snapshot)
    page = await tab.open_page("/snapshots/agent-run-7")
    await assert_shown_as_text(tab, page)
    await expect(page.locator(".message pre.text")).to_have_text(HOSTILE)


async def test_the_agents_list_searches_by_prefix_and_leads_to_an_agents_history(
    grpc_client: statekeeper.AsyncClient, tab: ConsoleTab
) -> None:
    ready = checkpoints_pb2.AGENT_STATE_READY
    for agent_id in ("planner-1", "planner-2", "writer-1"):
        await grpc_client.checkpoints.persist_agent(agent_id, ready)
    page = await tab.open_page("/checkpoints/agents")
    await page.get_by_label("Agent id starts with").fill("planner")
    await page.get_by_label("Agent id starts with").press("Enter")
    await expect(page).to_have_url(re.compile(r"prefix=planner"))
    await expect(page.get_by_role("link", name="writer-1")).to_have_count(0)
    await page.get_by_role("link", name="planner-2").click()
    await expect(page).to_have_url(re.compile(r"/checkpoints/agents/planner-2"))
    await expect(page.locator("main")).to_contain_text("READY")
