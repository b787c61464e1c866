"""LangGraph's own conformance suite for checkpoint savers, against StatekeeperSaver over a
real server on every backend: every capability, base and extended, detected and passing."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import Capability

import statekeeper
from statekeeper.langgraph import StatekeeperSaver
from tests.harness import running_app


async def test_statekeeper_saver_passes_every_capability_of_the_conformance_suite(
    store_url: str,
) -> None:
    async with running_app(store_url) as app:

        @checkpointer_test(name="StatekeeperSaver")
        async def saver() -> AsyncGenerator[StatekeeperSaver, None]:
            async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client:
                yield StatekeeperSaver(client)

        report = await validate(saver)

    assert report.passed_all_base()
    outcomes = {name: (r.detected, r.passed, r.tests_skipped) for name, r in report.results.items()}
    assert outcomes == {cap.value: (True, True, 0) for cap in Capability}
