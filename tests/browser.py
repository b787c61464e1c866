"""Headless Chromium for the console's browser tests and screenshots.

The browser is the system's own (Debian's `chromium`, or the executable named by
`STATEKEEPER_TEST_CHROMIUM`): Playwright drives it through `executable_path` and
never downloads one. Without it a test skips, saying what to install, except in CI
(`CI` set), where it fails.

    async with async_playwright() as playwright:
        browser = await launch_chromium(playwright)
        tab = await ConsoleTab.open(browser, "http://127.0.0.1:9464")
        await tab.open_page("/runs")
"""

from __future__ import annotations

import os
from pathlib import Path

from playwright.async_api import (
    Browser,
    BrowserContext,
    Dialog,
    Page,
    Playwright,
    Response,
    ViewportSize,
)

from tests.unavailable import skip_or_fail

CHROMIUM_ENV = "STATEKEEPER_TEST_CHROMIUM"
"""Names the Chromium executable to drive instead of DEFAULT_CHROMIUM."""
DEFAULT_CHROMIUM = "/usr/bin/chromium"
"""Where Debian's `chromium` package installs the browser."""
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
"""Headless, and no traffic of the browser's own (updates, sync, field trials)."""
SCREENSHOTS_ENV = "STATEKEEPER_SCREENSHOTS"
"""A directory to save a PNG of each main page into (CI keeps it as an artefact)."""
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
"""A laptop's screen."""


def chromium_executable() -> str:
    """The path of the Chromium to drive: `STATEKEEPER_TEST_CHROMIUM`, else Debian's."""
    return os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM


def require_chromium() -> str:
    """The Chromium executable; skips the test without one (fails it in CI)."""
    path = chromium_executable()
    if os.access(path, os.X_OK):
        return path
    problem = (
        f"no Chromium at {path}: install Debian's chromium (apt-get install chromium)"
        f" or name the executable in {CHROMIUM_ENV}"
    )
    skip_or_fail(problem)


async def launch_chromium(playwright: Playwright, executable: str | None = None) -> Browser:
    """Headless Chromium (`executable`, else `chromium_executable()`) with CHROMIUM_ARGS."""
    return await playwright.chromium.launch(
        executable_path=executable or chromium_executable(), args=list(CHROMIUM_ARGS)
    )


class ConsoleTab:
    """One page of the console in a browser context of its own (fresh cookies).

    Every dialog the page opens (`confirm()`, `alert()`) is recorded in `dialogs`
    and then accepted, or dismissed when `accept_dialogs` is False.
    """

    def __init__(self, context: BrowserContext, page: Page, base_url: str) -> None:
        self.context = context
        self.page = page
        self.base_url = base_url
        self.dialogs: list[str] = []
        """The messages of the dialogs the page opened, in order."""
        self.accept_dialogs = True
        page.on("dialog", self._answer)

    @classmethod
    async def open(cls, browser: Browser, base_url: str) -> ConsoleTab:
        """A blank tab in a new context of `browser`, for the console at `base_url`."""
        context = await browser.new_context(base_url=base_url, viewport=VIEWPORT)
        return cls(context, await context.new_page(), base_url)

    async def _answer(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        if self.accept_dialogs:
            await dialog.accept()
        else:
            await dialog.dismiss()

    async def open_page(self, path: str, status: int = 200) -> Page:
        """Navigate to `path` of the console and check the answer's HTTP status."""
        response: Response | None = await self.page.goto(path)
        assert response is not None, f"no answer for {path}"
        assert response.status == status, f"{path}: HTTP {response.status}"
        return self.page

    async def close(self) -> None:
        """Close the tab's context (its cookies go with it)."""
        await self.context.close()


async def save_screenshot(page: Page, name: str, directory: Path | None = None) -> Path | None:
    """Save a PNG of the whole `page` as `<name>.png` in `directory`, else in the
    directory named by STATEKEEPER_SCREENSHOTS; None (nothing saved) without either."""
    if directory is None:
        named = os.environ.get(SCREENSHOTS_ENV)
        if not named:
            return None
        directory = Path(named)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
