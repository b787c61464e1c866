"""The console's checkpoint and snapshot pages, through a real server: they show
what CheckpointService and SnapshotService hold, filter and page through the API,
diff two checkpoints' scope snapshots, escape caller text and show the API's
status for unknown ids."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

import statekeeper
from statekeeper.v1 import checkpoints_pb2, common_pb2, snapshots_pb2
from statekeeper_server.app import Application
from statekeeper_server.console.checkpoint_pages import (
    FOLD_CHARS,
    PAGE_SIZE,
    PREVIEW_CHARS,
    metadata_filter,
)
from statekeeper_server.console.paging_links import Pager, href
from statekeeper_server.stores.checkpoints import RetentionOverride, RetentionPolicy
from statekeeper_server.timestamps import now_us
from tests import console_http
from tests.console_http import page

# The console signs visitors in only without access control; these tests read as
# an anonymous loopback visitor.
pytestmark = pytest.mark.own_access_control

# The shared fixtures (tests/console_http.py), named here for pytest to find.
app = console_http.app
client = console_http.client
browser = console_http.browser

HOSTILE = "<script>alert(1)</script>\"'"
READY = checkpoints_pb2.AGENT_STATE_READY
ACTIVE = checkpoints_pb2.AGENT_STATE_ACTIVE


def rows(text: str, kind: str) -> list[str]:
    """The rows of class `kind` of a page."""
    return re.findall(rf'<tr class="{kind}">(.*?)</tr>', text, re.S)


def link(text: str, kind: str) -> str | None:
    """The unescaped target of the page's link of class `kind`, if any."""
    found = re.search(rf'<a class="{kind}" href="([^"]+)"', text)
    return html.unescape(found.group(1)) if found else None


async def save(
    client: statekeeper.AsyncClient,
    run_id: str,
    workflow: str = "billing",
    **fields: Any,
) -> checkpoints_pb2.WorkflowCheckpoint:
    return await client.checkpoints.save_workflow(run_id, workflow, **fields)


def snapshot(run_id: str, session_id: str = "s-1", **fields: Any) -> snapshots_pb2.Snapshot:
    fields.setdefault("status", snapshots_pb2.RUN_STATUS_RUNNING)
    return snapshots_pb2.Snapshot(run_id=run_id, session_id=session_id, **fields)


# -- workflow runs -----------------------------------------------------------


async def test_checkpoints_list_shows_each_run_with_its_newest_checkpoint(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await save(client, "run-a", step=1)
    newest = await save(client, "run-a", step=2, next_node_id="charge")
    other = await save(client, "run-b", "shipping", step=7)
    found = rows(await page(browser, "/checkpoints"), "workflow-run")
    assert len(found) == 2
    assert ">run-a<" in found[0]
    assert newest.checkpoint_id in found[0]
    assert "<td>2</td>" in found[0]
    assert "charge" in found[0]
    assert ">run-b<" in found[1]
    assert "shipping" in found[1]
    assert other.checkpoint_id in found[1]


async def test_checkpoints_list_filters_by_workflow_name(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await save(client, "run-a", "billing")
    await save(client, "run-b", "shipping")
    text = await page(browser, "/checkpoints?workflow=shipping")
    assert [">run-b<" in row for row in rows(text, "workflow-run")] == [True]


async def test_checkpoints_list_filters_by_metadata_key_and_json_value(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await save(client, "run-a", metadata={"team": "ops", "tier": 3})
    await save(client, "run-b", metadata={"team": "ops", "tier": "3"})
    await save(client, "run-c", metadata={"team": "dev", "tier": 3})
    by_team = await page(browser, "/checkpoints?meta=team%3Dops")
    assert len(rows(by_team, "workflow-run")) == 2
    assert ">run-c<" not in by_team
    number = await page(browser, "/checkpoints?meta=team%3Dops&meta=tier%3D3")
    assert [">run-a<" in row for row in rows(number, "workflow-run")] == [True]
    text = await page(browser, "/checkpoints?meta=tier%3D%223%22")
    assert [">run-b<" in row for row in rows(text, "workflow-run")] == [True]


def test_a_metadata_value_reads_as_a_json_scalar_or_else_as_text() -> None:
    conditions, problem = metadata_filter(["n=3", "flag=true", 's="3"', "t=ops", "l=[1]", " "])
    assert problem == ""
    assert conditions == [("n", 3), ("flag", True), ("s", "3"), ("t", "ops"), ("l", "[1]")]


async def test_a_metadata_filter_without_equals_is_a_400_page_naming_the_field(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/checkpoints?meta=team", status=400)
    assert "INVALID_ARGUMENT" in text
    assert "meta: expected key=value" in text


async def test_the_filter_form_shows_the_filters_in_force(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/checkpoints?workflow=billing&meta=team%3Dops")
    assert '<input name="workflow" value="billing">' in text
    assert '<input name="meta" value="team=ops">' in text


async def test_checkpoints_list_pages_older_and_back_newer_keeping_filters(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    for n in range(PAGE_SIZE + 3):
        await save(client, f"run-{n:03}", "billing")
    await save(client, "other", "shipping")
    first = await page(browser, "/checkpoints?workflow=billing")
    assert len(rows(first, "workflow-run")) == PAGE_SIZE
    assert link(first, "newer") is None
    older = link(first, "older")
    assert older is not None
    assert parse_qs(urlsplit(older).query)["workflow"] == ["billing"]
    second = await page(browser, older)
    assert len(rows(second, "workflow-run")) == 3
    assert "run-052" in second
    assert link(second, "older") is None
    newer = link(second, "newer")
    assert newer is not None
    assert rows(await page(browser, newer), "workflow-run") == rows(first, "workflow-run")


async def test_an_empty_checkpoints_list_says_how_to_save_a_first_checkpoint(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/checkpoints")
    assert '<p class="empty">' in text
    assert "SaveWorkflowCheckpoint" in text


async def test_a_filter_matching_nothing_offers_to_show_every_run(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await save(client, "run-a")
    text = await page(browser, "/checkpoints?workflow=nothing")
    assert "No workflow run matches these filters" in text
    assert 'href="/checkpoints?namespace=default">Show every run' in text


# -- a run's history ---------------------------------------------------------


async def test_history_lists_checkpoints_newest_first_linking_each_to_its_parent(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    first = await save(client, "run-a", step=1)
    second = await save(client, "run-a", step=2)
    third = await save(client, "run-a", step=3)
    text = await page(browser, "/checkpoints/runs/run-a")
    found = rows(text, "checkpoint")
    assert len(found) == 3
    assert third.checkpoint_id in found[0]
    assert second.checkpoint_id in found[1]
    assert first.checkpoint_id in found[2]
    parent = f"/checkpoints/runs/run-a/{second.checkpoint_id}?namespace=default"
    assert f'<a class="parent" href="{parent}">' in found[0]
    assert "none (first)" in found[2]


async def test_history_preselects_the_two_newest_checkpoints_for_the_diff(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    older = await save(client, "run-a")
    newer = await save(client, "run-a")
    text = await page(browser, "/checkpoints/runs/run-a")
    assert '<form method="get" action="/checkpoints/runs/run-a/diff"' in text
    checked = re.findall(r'name="(from|to)" value="([^"]+)"[^>]* checked>', text)
    assert sorted(checked) == [("from", older.checkpoint_id), ("to", newer.checkpoint_id)]


async def test_history_pages_older_and_newer_through_a_long_history(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    saved = [await save(client, "run-a", step=n) for n in range(2 * PAGE_SIZE + 2)]
    first = await page(browser, "/checkpoints/runs/run-a")
    assert len(rows(first, "checkpoint")) == PAGE_SIZE
    second_link = link(first, "older")
    assert second_link is not None
    second = await page(browser, second_link)
    assert saved[PAGE_SIZE + 1].checkpoint_id in rows(second, "checkpoint")[0]
    third_link = link(second, "older")
    assert third_link is not None
    third = await page(browser, third_link)
    assert len(rows(third, "checkpoint")) == 2
    assert saved[0].checkpoint_id in rows(third, "checkpoint")[-1]
    assert link(third, "older") is None
    back = link(third, "newer")
    assert back is not None
    assert rows(await page(browser, back), "checkpoint") == rows(second, "checkpoint")
    newest = link(third, "first")
    assert newest == "/checkpoints/runs/run-a?namespace=default"


async def test_history_cuts_a_huge_scope_and_links_to_the_checkpoint_showing_it_whole(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    big = "x" * (2 * PREVIEW_CHARS)
    saved = await save(client, "run-a", scope_snapshot={"big": big, "zzz": "end-mark"})
    [row] = rows(await page(browser, "/checkpoints/runs/run-a"), "checkpoint")
    assert "end-mark" not in row
    whole = f"/checkpoints/runs/run-a/{saved.checkpoint_id}?namespace=default"
    assert f'characters are shown here: <a href="{whole}">see the whole value</a>' in row
    full = await page(browser, whole)
    assert big in full
    assert "end-mark" in full


async def test_checkpoint_page_shows_its_fields_and_links_to_its_parent_and_the_diff(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    parent = await save(client, "run-a", step=1)
    child = await save(client, "run-a", step=2, scope_snapshot={"cart": ["book"]})
    text = await page(browser, f"/checkpoints/runs/run-a/{child.checkpoint_id}")
    assert (
        link(text, "parent") == f"/checkpoints/runs/run-a/{parent.checkpoint_id}?namespace=default"
    )
    diff_link = link(text, "diff-parent")
    assert diff_link is not None
    assert parse_qs(urlsplit(diff_link).query) == {
        "namespace": ["default"],
        "from": [parent.checkpoint_id],
        "to": [child.checkpoint_id],
    }
    assert "&#34;book&#34;" in text
    assert "none: the first checkpoint" in await page(
        browser, f"/checkpoints/runs/run-a/{parent.checkpoint_id}"
    )


async def test_an_unknown_run_is_a_404_page_with_the_api_status(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/checkpoints/runs/no-such-run", status=404)
    assert "NOT_FOUND" in text
    assert "Traceback" not in text


async def test_an_unknown_checkpoint_is_a_404_page_with_the_api_status(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    other = await save(client, "run-b")
    await save(client, "run-a")
    text = await page(browser, f"/checkpoints/runs/run-a/{other.checkpoint_id}", status=404)
    assert "NOT_FOUND" in text


async def test_a_malformed_run_id_is_a_400_page_naming_the_field(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/checkpoints/runs/" + quote(HOSTILE, safe=""), status=400)
    assert "INVALID_ARGUMENT" in text
    assert "run_id" in text
    assert "<script>" not in text


# -- the scope diff ----------------------------------------------------------


async def diff_page(
    client: statekeeper.AsyncClient,
    browser: aiohttp.ClientSession,
    old: dict[str, Any],
    new: dict[str, Any],
) -> str:
    a = await save(client, "run-a", scope_snapshot=old)
    b = await save(client, "run-a", scope_snapshot=new)
    return await page(
        browser, f"/checkpoints/runs/run-a/diff?from={a.checkpoint_id}&to={b.checkpoint_id}"
    )


def changes(text: str) -> list[tuple[str, str]]:
    """(kind, path) of each change row of a diff page."""
    return re.findall(
        r'<tr class="change (\w+)">\s*<td>\w+</td>\s*<td><code class="path">([^<]*)</code>',
        text,
    )


async def test_diff_lists_added_removed_and_changed_paths(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    text = await diff_page(
        client,
        browser,
        {"cart": {"items": ["book"], "total": 10}, "coupon": "X1", "user": "ann"},
        {"cart": {"items": ["book", "pen"], "total": 12}, "user": "ann", "paid": True},
    )
    assert changes(text) == [
        ("added", "/cart/items/1"),
        ("changed", "/cart/total"),
        ("removed", "/coupon"),
        ("added", "/paid"),
    ]


@pytest.mark.parametrize("kind", ["added", "removed", "changed"])
async def test_the_stylesheet_colours_each_kind_of_diff_row(
    browser: aiohttp.ClientSession, kind: str
) -> None:
    async with browser.get("/static/console.css") as response:
        assert response.status == 200
        stylesheet = await response.text()
    assert re.search(rf"tr\.change\.{kind} \{{ background: #[0-9a-f]{{6}}; \}}", stylesheet)


async def test_diff_shows_old_and_new_values_pretty_printed(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    text = await diff_page(
        client, browser, {"n": 10, "o": {"a": 1}}, {"n": 12, "o": {"a": 1, "b": [1]}}
    )
    changed = re.search(r'<tr class="change changed">(.*?)</tr>', text, re.S)
    assert changed
    assert "<pre>10</pre>" in changed.group(1)
    assert "<pre>12</pre>" in changed.group(1)
    added = re.search(r'<tr class="change added">(.*?)</tr>', text, re.S)
    assert added
    assert "<pre>[\n  1\n]</pre>" in added.group(1)


async def test_diff_folds_long_values(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    text = await diff_page(client, browser, {"log": "short"}, {"log": "x" * (FOLD_CHARS + 1)})
    row = re.search(r'<tr class="change changed">(.*?)</tr>', text, re.S)
    assert row
    assert "<pre>&#34;short&#34;</pre>" in row.group(1)
    assert f"<details><summary>{FOLD_CHARS + 3} characters</summary>" in row.group(1)


async def test_diff_of_equal_scopes_says_they_are_equal(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    text = await diff_page(client, browser, {"a": 1}, {"a": 1})
    assert "The two scope snapshots are equal." in text
    assert changes(text) == []


async def test_diff_links_to_its_swapped_direction(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    text = await diff_page(client, browser, {"a": 1}, {})
    swap = link(text, "swap")
    assert swap is not None
    assert changes(await page(browser, swap)) == [("added", "/a")]


async def test_diff_without_a_chosen_checkpoint_is_a_400_page_naming_the_field(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    saved = await save(client, "run-a")
    text = await page(browser, f"/checkpoints/runs/run-a/diff?to={saved.checkpoint_id}", status=400)
    assert "from: choose a checkpoint" in text


async def test_diff_with_an_unknown_checkpoint_is_a_404_page_with_the_api_status(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    saved = await save(client, "run-a")
    missing = "01890000-0000-7000-8000-000000000000"
    text = await page(
        browser,
        f"/checkpoints/runs/run-a/diff?from={missing}&to={saved.checkpoint_id}",
        status=404,
    )
    assert "NOT_FOUND" in text


# -- agents ------------------------------------------------------------------


async def test_agent_lookup_leads_to_the_agents_page_in_the_same_namespace(
    browser: aiohttp.ClientSession,
) -> None:
    async with browser.get(
        "/checkpoints/agents?namespace=acme&agent=agent-7", allow_redirects=False
    ) as response:
        assert response.status == 303
        assert response.headers["Location"] == "/checkpoints/agents/agent-7?namespace=acme"


async def test_agents_list_shows_each_agent_with_its_newest_checkpoint_linking_to_it(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.checkpoints.persist_agent("agent-b", READY)
    newest = await client.checkpoints.persist_agent(
        "agent-b", ACTIVE, app_state={"n": 2}, in_flight_tasks=4, reason="tick"
    )
    other = await client.checkpoints.persist_agent("agent-a", READY)
    found = rows(await page(browser, "/checkpoints/agents"), "agent")
    assert len(found) == 2
    assert '<a href="/checkpoints/agents/agent-a?namespace=default">agent-a</a>' in found[0]
    assert other.checkpoint_id in found[0]
    assert '<a href="/checkpoints/agents/agent-b?namespace=default">agent-b</a>' in found[1]
    assert newest.checkpoint_id in found[1]
    assert "ACTIVE" in found[1]
    assert "<td>4</td>" in found[1]
    assert "tick" in found[1]
    iso = newest.create_time.ToJsonString()
    assert f'<time datetime="{iso}">{iso}</time>' in found[1]


async def test_agents_list_percent_encodes_agent_ids_in_its_links(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.checkpoints.persist_agent("team@host:7", READY)
    [row] = rows(await page(browser, "/checkpoints/agents"), "agent")
    assert 'href="/checkpoints/agents/team%40host%3A7?namespace=default"' in row


async def test_agents_list_shows_only_agents_whose_id_starts_with_the_prefix(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    for agent_id in ("planner-1", "planner-2", "plan", "worker-1"):
        await client.checkpoints.persist_agent(agent_id, READY)
    text = await page(browser, "/checkpoints/agents?prefix=planner-")
    found = rows(text, "agent")
    assert [">planner-1</a>" in found[0], ">planner-2</a>" in found[1]] == [True, True]
    assert len(found) == 2
    assert '<input name="prefix" value="planner-">' in text


async def test_agents_list_pages_older_and_back_newer_keeping_the_prefix(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    for n in range(PAGE_SIZE + 3):
        await client.checkpoints.persist_agent(f"agent-{n:03}", READY)
    await client.checkpoints.persist_agent("other", READY)
    first = await page(browser, "/checkpoints/agents?prefix=agent-")
    assert len(rows(first, "agent")) == PAGE_SIZE
    assert link(first, "newer") is None
    older = link(first, "older")
    assert older is not None
    assert parse_qs(urlsplit(older).query)["prefix"] == ["agent-"]
    second = await page(browser, older)
    assert len(rows(second, "agent")) == 3
    assert "agent-052" in second
    assert "other" not in second
    assert link(second, "older") is None
    newer = link(second, "newer")
    assert newer is not None
    assert rows(await page(browser, newer), "agent") == rows(first, "agent")


async def test_an_empty_agents_list_says_how_an_agent_gets_a_first_checkpoint(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/checkpoints/agents")
    assert rows(text, "agent") == []
    assert '<p class="empty">No agent has a checkpoint' in text
    assert "PersistAgentCheckpoint" in text


async def test_a_prefix_matching_no_agent_offers_to_show_every_agent(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.checkpoints.persist_agent("agent-1", READY)
    text = await page(browser, "/checkpoints/agents?prefix=nobody")
    assert "No agent's id starts with <code>nobody</code>" in text
    assert 'href="/checkpoints/agents?namespace=default">Show every agent' in text


async def test_a_hostile_prefix_is_a_400_page_naming_the_field_escaped(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/checkpoints/agents?prefix=" + quote(HOSTILE), status=400)
    assert "INVALID_ARGUMENT" in text
    assert "agent_id_prefix" in text
    assert "<script>" not in text


async def test_hostile_agent_ids_already_stored_are_escaped_in_the_list(
    app: Application, browser: aiohttp.ClientSession
) -> None:
    # The API refuses such ids; a store written by other means may still hold one.
    await app.store.checkpoints.persist_agent(
        "default",
        checkpoints_pb2.AgentCheckpoint(agent_id=HOSTILE, agent_state=READY),
        retention=RetentionOverride(),
        defaults=RetentionPolicy(),
        now_us=now_us(),
    )
    text = await page(browser, "/checkpoints/agents")
    [row] = rows(text, "agent")
    assert "<script>" not in text
    assert '">&lt;script&gt;alert(1)&lt;/script&gt;&#34;&#39;</a>' in row
    assert 'href="/checkpoints/agents/%3Cscript%3Ealert%281%29%3C%2Fscript%3E%22%27?' in row


async def test_agent_page_shows_its_newest_checkpoint_and_history_newest_first(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    old = await client.checkpoints.persist_agent("agent-7", READY, app_state={"n": 1})
    new = await client.checkpoints.persist_agent(
        "agent-7", ACTIVE, app_state={"n": 2}, in_flight_tasks=3, reason="tick", custom={"k": 1}
    )
    text = await page(browser, "/checkpoints/agents/agent-7")
    newest = re.search(r'<dl class="newest">(.*?)</dl>', text, re.S)
    assert newest
    assert new.checkpoint_id in newest.group(1)
    assert '<dd class="state">ACTIVE</dd>' in newest.group(1)
    assert "<dd>3</dd>" in newest.group(1)
    assert "tick" in newest.group(1)
    found = rows(text, "checkpoint")
    assert [new.checkpoint_id in found[0], old.checkpoint_id in found[1]] == [True, True]
    assert "READY" in found[1]


async def test_agent_history_pages_older_and_newer(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    saved = [await client.checkpoints.persist_agent("agent-7", READY) for _ in range(PAGE_SIZE + 1)]
    first = await page(browser, "/checkpoints/agents/agent-7")
    assert len(rows(first, "checkpoint")) == PAGE_SIZE
    older = link(first, "older")
    assert older is not None
    second = await page(browser, older)
    assert [saved[0].checkpoint_id in row for row in rows(second, "checkpoint")] == [True]
    newer = link(second, "newer")
    assert newer is not None
    assert rows(await page(browser, newer), "checkpoint") == rows(first, "checkpoint")


async def test_an_unknown_agent_is_a_404_page_with_the_api_status(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/checkpoints/agents/no-such-agent", status=404)
    assert "NOT_FOUND" in text


# -- snapshots ---------------------------------------------------------------


async def test_snapshots_list_shows_each_run_and_filters_by_session_and_status(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.snapshots.save(snapshot("run-a", "s-1"))
    await client.snapshots.save(snapshot("run-b", "s-2"))
    await client.snapshots.save(snapshot("run-c", "s-1", status=snapshots_pb2.RUN_STATUS_COMPLETED))
    every = rows(await page(browser, "/snapshots"), "snapshot")
    assert [">run-a<" in every[0], ">run-b<" in every[1], ">run-c<" in every[2]] == [True] * 3
    by_session = rows(await page(browser, "/snapshots?session=s-1"), "snapshot")
    assert [">run-a<" in by_session[0], ">run-c<" in by_session[1]] == [True, True]
    assert len(by_session) == 2
    by_status = rows(await page(browser, "/snapshots?status=COMPLETED"), "snapshot")
    assert len(by_status) == 1
    assert '<td class="status">COMPLETED</td>' in by_status[0]


async def test_snapshots_list_pages_older_and_newer_keeping_filters(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    for n in range(PAGE_SIZE + 2):
        await client.snapshots.save(snapshot(f"run-{n:03}"))
    await client.snapshots.save(snapshot("run-x", status=snapshots_pb2.RUN_STATUS_PAUSED))
    first = await page(browser, "/snapshots?status=RUNNING")
    assert len(rows(first, "snapshot")) == PAGE_SIZE
    older = link(first, "older")
    assert older is not None
    second = await page(browser, older)
    assert len(rows(second, "snapshot")) == 2
    assert "run-x" not in second
    newer = link(second, "newer")
    assert newer is not None
    assert rows(await page(browser, newer), "snapshot") == rows(first, "snapshot")


async def test_an_unknown_status_filter_is_a_400_page_naming_the_field(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/snapshots?status=NOPE", status=400)
    assert "status: unknown run status" in text


async def test_an_empty_snapshots_list_says_how_a_run_gets_a_snapshot(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/snapshots")
    assert '<p class="empty">' in text
    assert "SaveSnapshot" in text


async def test_snapshot_page_shows_status_iteration_usage_last_message_and_request(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    text_part = snapshots_pb2.ContentPart(text="The answer is 42.")
    saved = snapshot(
        "run-a",
        status=snapshots_pb2.RUN_STATUS_PAUSED,
        iteration=4,
        current_state=snapshots_pb2.TURN_STATE_AWAITING_INPUT,
        total_usage=common_pb2.TokenUsage(input_tokens=120, output_tokens=30, total_tokens=150),
        last_finish=common_pb2.FINISH_REASON_TOOL_CALLS,
        assistant_message=snapshots_pb2.Message(
            role=snapshots_pb2.MESSAGE_ROLE_ASSISTANT,
            content=[text_part],
            tool_calls=[snapshots_pb2.ToolCall(id="call-1", name="lookup")],
        ),
        request=snapshots_pb2.RunRequest(
            provider="openai",
            model="gpt-x",
            temperature=0.5,
            messages=[
                snapshots_pb2.Message(
                    role=snapshots_pb2.MESSAGE_ROLE_USER,
                    content=[snapshots_pb2.ContentPart(text="What is six times seven?")],
                )
            ],
            tools=[snapshots_pb2.ToolDefinition(name="lookup", description="Finds facts")],
        ),
    )
    await client.snapshots.save(saved)
    text = await page(browser, "/snapshots/run-a")
    assert '<dd class="status">PAUSED</dd>' in text
    assert '<dd class="iteration">4</dd>' in text
    assert "AWAITING_INPUT" in text
    assert "TOOL_CALLS" in text
    assert "<tr><th>input</th><td>120</td></tr>" in text
    assert "<tr><th>total</th><td>150</td></tr>" in text
    assert "The answer is 42." in text
    assert "<strong>lookup</strong>" in text
    assert "gpt-x" in text
    assert "What is six times seven?" in text
    assert "Finds facts" in text


async def test_snapshot_page_links_to_its_sessions_snapshots(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.snapshots.save(snapshot("run-a", "s-9"))
    text = await page(browser, "/snapshots/run-a?namespace=default")
    assert '<a href="/snapshots?namespace=default&amp;session=s-9">s-9</a>' in text


async def test_an_unknown_snapshot_is_a_404_page_with_the_api_status(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/snapshots/no-such-run", status=404)
    assert "NOT_FOUND" in text


# -- on every page -----------------------------------------------------------


async def test_hostile_workflow_names_metadata_and_scope_keys_are_escaped(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    a = await save(client, "run-a", HOSTILE, metadata={HOSTILE: HOSTILE}, scope_snapshot={})
    b = await save(
        client, "run-a", HOSTILE, metadata={HOSTILE: HOSTILE}, scope_snapshot={HOSTILE: [HOSTILE]}
    )
    await client.checkpoints.persist_agent(
        "agent-7", READY, app_state={HOSTILE: HOSTILE}, reason=HOSTILE
    )
    pages = [
        await page(browser, "/checkpoints"),
        await page(browser, "/checkpoints?workflow=" + quote(HOSTILE)),
        await page(browser, "/checkpoints?meta=" + quote(f"{HOSTILE}={HOSTILE}")),
        await page(browser, "/checkpoints/runs/run-a"),
        await page(browser, f"/checkpoints/runs/run-a/{b.checkpoint_id}"),
        await page(
            browser, f"/checkpoints/runs/run-a/diff?from={a.checkpoint_id}&to={b.checkpoint_id}"
        ),
        await page(browser, "/checkpoints/agents/agent-7"),
        await page(browser, "/checkpoints/agents"),
    ]
    for text in pages:
        assert "<script>" not in text
        assert "&lt;script&gt;" in text
    assert len(rows(pages[2], "workflow-run")) == 1


async def test_hostile_snapshot_text_is_escaped(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    hostile = snapshots_pb2.Message(
        role=snapshots_pb2.MESSAGE_ROLE_ASSISTANT,
        name=HOSTILE,
        content=[snapshots_pb2.ContentPart(text=HOSTILE), snapshots_pb2.ContentPart(uri=HOSTILE)],
        tool_calls=[snapshots_pb2.ToolCall(id=HOSTILE, name=HOSTILE)],
    )
    await client.snapshots.save(
        snapshot(
            "run-a", assistant_message=hostile, request=snapshots_pb2.RunRequest(model=HOSTILE)
        )
    )
    text = await page(browser, "/snapshots/run-a")
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    refused = await page(browser, "/snapshots?session=" + quote(HOSTILE), status=400)
    assert "<script>" not in refused
    assert "session_id" in refused


async def test_dates_are_time_elements_carrying_their_iso_value(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    saved = await save(client, "run-a")
    await client.snapshots.save(snapshot("run-a"))
    iso = saved.create_time.ToJsonString()
    assert f'<time datetime="{iso}">{iso}</time>' in await page(browser, "/checkpoints")
    assert re.search(r'<time datetime="[0-9T:.-]+Z">', await page(browser, "/snapshots/run-a"))


async def test_every_link_keeps_the_namespace(
    app: Application, browser: aiohttp.ClientSession
) -> None:
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}", namespace="acme", token="") as acme:
        await acme.checkpoints.save_workflow("run-a", "billing")
        await acme.checkpoints.save_workflow("run-a", "billing")
        await acme.checkpoints.persist_agent("agent-a", READY)
        await acme.snapshots.save(snapshot("run-a"))
    assert "run-a" not in await page(browser, "/checkpoints")
    assert "agent-a" not in await page(browser, "/checkpoints/agents")
    for path in [
        "/checkpoints",
        "/checkpoints/runs/run-a",
        "/checkpoints/agents",
        "/snapshots",
        "/snapshots/run-a",
    ]:
        text = await page(browser, path + "?namespace=acme")
        targets = re.findall(r'href="(/(?:checkpoints|snapshots)[^"]*)"', text)
        assert targets
        assert all("namespace=acme" in target for target in targets), (path, targets)


async def test_every_filter_and_diff_form_keeps_the_namespace(
    app: Application, browser: aiohttp.ClientSession
) -> None:
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}", namespace="acme", token="") as acme:
        await acme.checkpoints.save_workflow("run-a", "billing")
    for path in ["/checkpoints", "/checkpoints/runs/run-a", "/checkpoints/agents", "/snapshots"]:
        text = await page(browser, path + "?namespace=acme")
        assert '<input type="hidden" name="namespace" value="acme">' in text, path


async def test_the_navigation_links_to_checkpoints_and_snapshots(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/checkpoints?namespace=acme")
    assert '<a href="/checkpoints?namespace=acme">Checkpoints</a>' in text
    assert '<a href="/snapshots?namespace=acme">Snapshots</a>' in text


# -- links of paged lists ----------------------------------------------------


def query_request(query: str) -> Any:
    return make_mocked_request("GET", "/x?" + query)


def test_href_percent_encodes_each_path_segment_whole() -> None:
    request = query_request("namespace=acme")
    assert href(request, ["checkpoints", "a/b?c"], {"x": "1", "y": "", "m": ["p", "q"]}) == (
        "/checkpoints/a%2Fb%3Fc?namespace=acme&x=1&m=p&m=q"
    )


def test_a_pager_leads_older_then_back_newer_to_the_first_page() -> None:
    first = Pager.of(query_request(""))
    assert first.newer() is None
    assert first.older("") is None
    second_params = first.older("t1")
    assert second_params == {"page": "t1", "back": ""}
    second = Pager.of(query_request("page=t1"))
    assert second.newer() == {}
    assert second.older("t2") == {"page": "t2", "back": "t1"}
    third = Pager.of(query_request("page=t2&back=t1"))
    assert third.newer() == {"page": "t1"}
    fourth = Pager.of(query_request("page=t3&back=t1,t2"))
    assert fourth.newer() == {"page": "t2", "back": "t1"}
