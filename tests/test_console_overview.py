"""The console's overview and runs list through a real server: the overview shows each
family's first entries, each queue's jobs by state and oldest available age, and says
what to do when a family is empty; the runs list filters on the server, so a filter
finds runs beyond the first page."""

from __future__ import annotations

import re

import aiohttp
import pytest
from google.protobuf import duration_pb2

import statekeeper
from statekeeper.events import custom_event
from statekeeper.v1 import events_pb2, jobs_pb2, snapshots_pb2
from statekeeper_server.console import overview_pages
from statekeeper_server.console.overview_pages import RECENT
from statekeeper_server.console.queue_counts import age_text
from statekeeper_server.console.views import PAGE_SIZE, STATES
from tests import console_http
from tests.console_http import page

pytestmark = pytest.mark.own_access_control

# The shared fixtures (tests/console_http.py), named here for pytest to find.
app = console_http.app
client = console_http.client
browser = console_http.browser

COMPLETED = events_pb2.AgentEvent(run_completed=events_pb2.RunCompleted())


def started(session_id: str) -> events_pb2.AgentEvent:
    return events_pb2.AgentEvent(run_started=events_pb2.RunStarted(session_id=session_id))


def rows(text: str, css_class: str) -> list[str]:
    return re.findall(rf'<tr class="{css_class}">(.*?)</tr>', text, re.S)


# -- overview ------------------------------------------------------------------------


async def test_overview_lists_open_runs_and_not_ended_ones(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.events.append("run-open", started("session-1"))
    await client.events.append_many("run-ended", [started("session-2"), COMPLETED])
    shown = rows(await page(browser, "/"), "open-run")
    assert len(shown) == 1
    assert "run-open" in shown[0]
    assert "session-1" in shown[0]


async def test_overview_counts_a_family_beyond_its_first_entries_as_n_plus(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    for n in range(RECENT + 1):
        await client.events.append(f"run-{n:02}", custom_event("step"))
    text = await page(browser, "/")
    assert len(rows(text, "open-run")) == RECENT
    assert f'Open runs <span class="count">{RECENT}+</span>' in text


async def test_overview_lists_workflow_checkpoints_and_snapshots(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.checkpoints.save_workflow("wf-run", "billing", step=3)
    snapshot = snapshots_pb2.Snapshot(
        run_id="snap-run", session_id="s-1", status=snapshots_pb2.RUN_STATUS_RUNNING
    )
    await client.snapshots.save(snapshot)
    text = await page(browser, "/")
    (checkpoint,) = rows(text, "checkpoint")
    assert "wf-run" in checkpoint
    assert "billing" in checkpoint
    (snapshot_row,) = rows(text, "snapshot")
    assert "snap-run" in snapshot_row
    assert "RUNNING" in snapshot_row


async def test_overview_shows_the_age_of_each_queues_oldest_available_job(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    await client.jobs.enqueue("mail", queue="outbox")
    await client.jobs.enqueue("mail", queue="later", delay=3600)
    by_queue = {
        re.search(r">(\w+)</a>", row).group(1): row  # type: ignore[union-attr]
        for row in rows(await page(browser, "/"), "queue")
    }
    assert re.search(r'<td class="oldest">\d+s</td>', by_queue["outbox"])
    assert '<td class="oldest">none waiting</td>' in by_queue["later"]


async def test_overview_shows_a_count_past_its_limit_as_n_plus(
    client: statekeeper.AsyncClient,
    browser: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(overview_pages, "COUNT_LIMIT", 2)
    for _ in range(3):
        await client.jobs.enqueue("mail", queue="outbox")
    (row,) = rows(await page(browser, "/"), "queue")
    assert 'state=AVAILABLE">2+<' in row


async def test_an_empty_namespace_overview_says_how_to_fill_each_family(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/?namespace=empty")
    assert "No jobs in this namespace. Enqueue one" in text
    assert "No run is open" in text
    assert "No workflow checkpoints in this namespace. Save one" in text
    assert "No run snapshots in this namespace. Save one" in text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (725, "12m 5s"),
        (3 * 3600 + 120, "3h 2m"),
        (4 * 86_400 + 3600, "4d 1h"),
    ],
)
def test_ages_read_as_the_largest_two_units(seconds: int, text: str) -> None:
    assert age_text(duration_pb2.Duration(seconds=seconds)) == text


# -- runs list -------------------------------------------------------------------------


async def test_a_prefix_finds_runs_beyond_the_first_page(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    for n in range(PAGE_SIZE + 5):
        await client.events.append(f"a-{n:03}", custom_event("step"))
    await client.events.append("z-late", custom_event("step"))
    shown = rows(await page(browser, "/runs?prefix=z-"), "run")
    assert len(shown) == 1
    assert "z-late" in shown[0]


async def test_terminal_and_session_filters_find_runs_beyond_the_first_page(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    for n in range(PAGE_SIZE + 5):
        await client.events.append(f"a-{n:03}", custom_event("step"))
    await client.events.append_many("z-ended", [started("late-session"), COMPLETED])
    ended = rows(await page(browser, "/runs?terminal=yes"), "run")
    assert len(ended) == 1
    assert "z-ended" in ended[0]
    of_session = rows(await page(browser, "/runs?session=late-session"), "run")
    assert len(of_session) == 1


async def test_the_next_page_link_keeps_the_filters(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    for n in range(PAGE_SIZE + 3):
        await client.events.append(f"b-{n:03}", custom_event("step"))
        await client.events.append(f"c-{n:03}", custom_event("step"))
    first = await page(browser, "/runs?prefix=c-")
    link = re.search(r'<a class="next" href="([^"]+)"', first)
    assert link
    second = rows(await page(browser, link.group(1).replace("&amp;", "&")), "run")
    assert len(second) == 3
    assert all("c-" in row and "b-" not in row for row in second)


async def test_an_unknown_terminal_choice_is_a_400_page_naming_the_field(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/runs?terminal=maybe", status=400)
    assert "terminal:" in text


async def test_a_malformed_prefix_is_the_apis_400_naming_the_field(
    browser: aiohttp.ClientSession,
) -> None:
    text = await page(browser, "/runs?prefix=%3Cscript%3E", status=400)
    assert "run_id_prefix" in text
    assert "<script>" not in text


async def test_a_refused_filter_stays_in_its_field(browser: aiohttp.ClientSession) -> None:
    text = await page(browser, "/runs?prefix=a%20b&session=s-1", status=400)
    assert '<input name="prefix" value="a b">' in text
    assert '<input name="session" value="s-1">' in text


async def test_runs_list_says_what_to_do_when_empty_or_when_nothing_matches(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    assert "No runs in this namespace yet" in await page(browser, "/runs")
    await client.events.append("run-1", custom_event("step"))
    assert "No run matches these filters" in await page(browser, "/runs?prefix=zzz")


async def test_a_queues_jobs_page_counts_its_jobs_by_priority_and_state(
    client: statekeeper.AsyncClient, browser: aiohttp.ClientSession
) -> None:
    high = jobs_pb2.JOB_PRIORITY_HIGH
    await client.jobs.enqueue("mail", queue="q", priority=high)
    await client.jobs.enqueue("mail", queue="q", priority=high)
    await client.jobs.enqueue("mail", queue="q", priority=jobs_pb2.JOB_PRIORITY_LOW)
    cancelled = await client.jobs.enqueue("mail", queue="q", priority=jobs_pb2.JOB_PRIORITY_LOW)
    await client.jobs.cancel(cancelled.job_id)
    text = await page(browser, "/jobs?queue=q")
    table = text[text.index('data-testid="queue-stats"') :]
    rows = re.findall(r'<tr class="priority">(.*?)</tr>', table, re.S)
    assert [re.search(r"<th[^>]*>(\w+)</th>", row).group(1) for row in rows] == ["HIGH", "LOW"]  # type: ignore[union-attr]
    high_cells = re.findall(r"<td>(\d+)</td>", rows[0])
    low_cells = re.findall(r"<td>(\d+)</td>", rows[1])
    assert high_cells[STATES.index("AVAILABLE")] == "2"
    assert low_cells[STATES.index("AVAILABLE")] == "1"
    assert low_cells[STATES.index("CANCELLED")] == "1"


async def test_the_jobs_page_without_a_queue_shows_no_queue_counts(
    browser: aiohttp.ClientSession,
) -> None:
    assert 'data-testid="queue-stats"' not in await page(browser, "/jobs")
