"""Take the console's screenshots for the README: `python scripts/console_screenshots.py`.

Starts a server on free ports with an in-memory store, fills it with demo data
(tests/console_demo.py: an agent run with tool calls, queues with jobs in several
states, a dead webhook job, workflow runs' checkpoints, agent runs' snapshots), and
saves a PNG of each main page into docs/console/
(or `--out`). The browser is the system's Chromium (tests/browser.py: Debian's
`chromium`, or the executable in STATEKEEPER_TEST_CHROMIUM); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests package: its server harness, browser and demo data

from playwright.async_api import async_playwright  # noqa: E402

import statekeeper  # noqa: E402
from tests import console_demo  # noqa: E402
from tests.browser import ConsoleTab, launch_chromium, save_screenshot  # noqa: E402
from tests.harness import running_app  # noqa: E402

DEFAULT_OUT = ROOT / "docs" / "console"


async def take(out: Path) -> list[Path]:
    """Start a server with the demo data and save each main page into `out`."""
    async with running_app("memory:") as app:
        async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}", token="") as client:
            demo = await console_demo.fill(client)
        async with async_playwright() as playwright:
            browser = await launch_chromium(playwright)
            try:
                tab = await ConsoleTab.open(browser, f"http://127.0.0.1:{app.http_port}")
                saved = []
                for name, path in console_demo.main_pages(demo).items():
                    page = await tab.open_page(path)
                    shot = await save_screenshot(page, name, out)
                    assert shot is not None
                    saved.append(shot)
                return saved
            finally:
                await browser.close()


def main() -> None:
    """Parse `--out` and take the screenshots, printing each file's path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the PNGs")
    args = parser.parse_args()
    for path in asyncio.run(take(args.out)):
        print(path)


if __name__ == "__main__":
    main()
