"""Fixtures and helpers of the console's browser tests (tests/test_console_browser*.py).

One headless Chromium serves a whole test module (`chromium`, module-scoped, on the
module's event loop); each test gets a fresh server (`app`, or `guarded` with access
control) and a tab in a fresh browser context (`tab`, `guarded_tab`, `signed_in`).
A test module uses them by naming them at its top level:

    chromium = browser_fixtures.chromium
    app = browser_fixtures.app

and marks itself `pytest.mark.asyncio(loop_scope="module")`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

import statekeeper
from statekeeper.v1 import events_pb2, jobs_pb2
from statekeeper_server.app import Application
from tests.auth_support import write_tokens
from tests.browser import ConsoleTab, launch_chromium, require_chromium
from tests.harness import running_app

HOSTILE = "<img src=x onerror=\"window.__injected=1;alert('img')\"></script><b>\"'&amp;"
"""Caller text that would run script, add elements or break out of an attribute if a
page ever rendered it unescaped."""
COMPLETED = events_pb2.AgentEvent(run_completed=events_pb2.RunCompleted())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Browser]:
    """The module's headless Chromium (skipped without one, failed in CI)."""
    executable = require_chromium()
    async with async_playwright() as playwright:
        browser = await launch_chromium(playwright, executable)
        yield browser
        await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def app() -> AsyncIterator[Application]:
    """A fresh server (memory store) serving the console, without access control."""
    async with running_app("memory:") as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def grpc_client(app: Application) -> AsyncIterator[statekeeper.AsyncClient]:
    """A client of `app`'s gRPC API, in the default namespace."""
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}", token="") as client:
        yield client


@pytest_asyncio.fixture(loop_scope="module")
async def tab(chromium: Browser, app: Application) -> AsyncIterator[ConsoleTab]:
    """A tab on `app`'s console in a fresh browser context."""
    opened = await ConsoleTab.open(chromium, f"http://127.0.0.1:{app.http_port}")
    yield opened
    await opened.close()


@dataclass(frozen=True)
class Guarded:
    """A server with access control on, and the tokens its tokens file grants."""

    app: Application
    tokens: dict[str, str]
    """`reader` (default:read, acme:read), `writer` (default:write)."""

    def client(self, token: str) -> statekeeper.AsyncClient:
        """A gRPC client of the server sending `token` (a name of `tokens`)."""
        return statekeeper.AsyncClient(f"127.0.0.1:{self.app.port}", token=self.tokens[token])


@pytest_asyncio.fixture(loop_scope="module")
async def guarded(tmp_path: Path) -> AsyncIterator[Guarded]:
    """A fresh server whose tokens file grants a reader and a writer token."""
    tokens = write_tokens(
        tmp_path / "tokens.toml",
        {"reader": ["default:read", "acme:read"], "writer": ["default:write"]},
    )
    async with running_app("memory:", auth_tokens_file=str(tmp_path / "tokens.toml")) as app:
        yield Guarded(app, tokens)


@pytest_asyncio.fixture(loop_scope="module")
async def guarded_tab(chromium: Browser, guarded: Guarded) -> AsyncIterator[ConsoleTab]:
    """A tab on the guarded server's console, not signed in."""
    opened = await ConsoleTab.open(chromium, f"http://127.0.0.1:{guarded.app.http_port}")
    yield opened
    await opened.close()


async def sign_in(tab: ConsoleTab, token: str) -> Page:
    """Sign in through the console's form with `token`; the page it lands on."""
    page = await tab.open_page("/login")
    await page.get_by_label("Token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    return page


@pytest_asyncio.fixture(loop_scope="module")
async def signed_in(guarded_tab: ConsoleTab, guarded: Guarded) -> ConsoleTab:
    """The guarded server's tab, signed in with the writer token."""
    await sign_in(guarded_tab, guarded.tokens["writer"])
    return guarded_tab


async def cells(page: Page, row_class: str, column: int = 0) -> list[str]:
    """The text of `column` of each `tr.<row_class>` of the page's tables."""
    return [
        text.strip()
        for text in await page.locator(
            f"tr.{row_class} > td:nth-child({column + 1})"
        ).all_inner_texts()
    ]


async def dead_job(client: statekeeper.AsyncClient) -> jobs_pb2.Job:
    """A job whose only attempt failed: DEAD."""
    job = await client.jobs.enqueue("convert", {"file": "a.pdf"}, queue="docs", max_retries=0)
    [leased] = await client.jobs.lease("docs", worker_id="w-1")
    await client.jobs.fail(leased.job_id, leased.lease.lease_id, "disk full")
    return job


async def assert_nothing_ran(tab: ConsoleTab, page: Page) -> None:
    """No part of HOSTILE ran (no dialog, no script) or became an element of `page`."""
    assert tab.dialogs == []
    assert await page.evaluate("window.__injected") is None
    assert await page.locator('img[src="x"]').count() == 0
    assert await page.locator("main b").count() == 0
    # Only the console's own scripts, each a file of its own (none written into the page).
    assert await page.locator("script").count() > 0
    assert await page.locator('script:not([src^="/static/"])').count() == 0


async def assert_shown_as_text(tab: ConsoleTab, page: Page) -> None:
    """HOSTILE is on `page` as text, and none of it ran or became an element."""
    await expect(page.locator("main")).to_contain_text(HOSTILE)
    await assert_nothing_ran(tab, page)
