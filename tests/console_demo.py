"""Demo data that looks like a day of real use, for the console's screenshots: an agent
run with tool calls, runs that are going, failed and cancelled, and queues holding jobs
in several states, among them a webhook that died after three failed attempts."""

from __future__ import annotations

from dataclasses import dataclass

import statekeeper
from statekeeper.events import custom_event
from statekeeper.v1 import events_pb2

AGENT_RUN = "support-agent-4f2a"
"""The run with tool calls whose timeline the screenshots show."""


@dataclass(frozen=True)
class Demo:
    """What the demo data holds that a page is about."""

    run_id: str
    """The agent run with tool calls."""
    dead_job_id: str
    """A job that died after every attempt failed."""


def _started(session: str, model: str = "claude-sonnet-4-5") -> events_pb2.AgentEvent:
    return events_pb2.AgentEvent(
        run_started=events_pb2.RunStarted(session_id=session, provider="anthropic", model=model)
    )


def _completed(iterations: int) -> events_pb2.AgentEvent:
    return events_pb2.AgentEvent(run_completed=events_pb2.RunCompleted(iterations=iterations))


ORDERS = [
    {
        "order": f"A-2093{n}",
        "placed": f"2026-11-2{n}T10:1{n}:00Z",
        "status": "shipped" if n % 2 else "delivered",
        "items": [{"sku": f"KB-{400 + n}", "name": "Mechanical keyboard", "quantity": 1}],
        "total": {"amount": 89.0 + n, "currency": "EUR"},
    }
    for n in range(1, 6)
]


async def fill(client: statekeeper.AsyncClient) -> Demo:
    """Write the demo data through `client` (a fresh namespace is best) and say where it is."""
    events = client.events
    await events.append_many(
        AGENT_RUN,
        [
            _started("sess-ana-1142"),
            custom_event(
                "llm.request",
                {"messages": 3, "input_tokens": 812, "question": "Where is my refund?"},
            ),
            custom_event(
                "tool.call",
                {
                    "tool": "orders.search",
                    "call_id": "toolu_01",
                    "arguments": {"customer": "ana@example.com", "since": "2026-11-01"},
                },
            ),
            custom_event("tool.result", {"call_id": "toolu_01", "orders": ORDERS}),
            custom_event(
                "tool.call",
                {
                    "tool": "refunds.create",
                    "call_id": "toolu_02",
                    "arguments": {"order": "A-20931", "amount": 42.5, "currency": "EUR"},
                },
            ),
            custom_event(
                "tool.result", {"call_id": "toolu_02", "refund": "rf_8812", "status": "pending"}
            ),
            custom_event(
                "llm.response",
                {
                    "output_tokens": 96,
                    "text": "I've issued a refund of EUR 42.50 for order A-20931;"
                    " it reaches your card in 3-5 days.",
                },
            ),
            _completed(3),
        ],
    )
    await events.append_many(
        "research-agent-91c0",
        [
            _started("sess-bo-77"),
            custom_event("tool.call", {"tool": "web.search", "arguments": {"q": "CRDT papers"}}),
        ],
    )
    await events.append_many(
        "triage-run-2031",
        [
            _started("sess-ops-3", model="claude-haiku-4-5"),
            custom_event(
                "tool.call", {"tool": "web.fetch", "arguments": {"url": "https://x.test"}}
            ),
            events_pb2.AgentEvent(
                run_failed=events_pb2.RunFailed(error="tool timeout: web.fetch took over 30 s")
            ),
        ],
    )
    await events.append_many(
        "triage-run-2032",
        [
            _started("sess-ops-3", model="claude-haiku-4-5"),
            events_pb2.AgentEvent(
                run_cancelled=events_pb2.RunCancelled(reason="superseded by triage-run-2033")
            ),
        ],
    )
    await events.append_many(
        "triage-run-2033", [_started("sess-ops-3", model="claude-haiku-4-5"), _completed(2)]
    )

    jobs = client.jobs
    for n in range(4):
        await jobs.enqueue("email.send", {"to": f"user{n}@example.com", "template": "receipt"})
    for n in range(3):
        await jobs.enqueue("email.send", {"to": f"team{n}@example.com"}, queue="emails")
    [sent] = await jobs.lease("emails", worker_id="mailer-2")
    await jobs.complete(sent.job_id, sent.lease.lease_id, {"message_id": "<0192@mail.example>"})
    await jobs.lease("emails", worker_id="mailer-1")  # one RUNNING, its lease held
    await jobs.enqueue(
        "embed.document", {"doc": "handbook.pdf", "pages": 112}, queue="embeddings", delay=3600
    )
    await jobs.enqueue("embed.document", {"doc": "faq.md"}, queue="embeddings", priority="high")
    dead = await jobs.enqueue(
        "webhook.deliver",
        {"url": "https://hooks.example.com/orders", "event": "order.refunded", "order": "A-20931"},
        queue="webhooks",
        max_retries=2,
    )
    for error in (
        "POST https://hooks.example.com/orders: 502 Bad Gateway",
        "POST https://hooks.example.com/orders: connect timeout after 10 s",
        "POST https://hooks.example.com/orders: 502 Bad Gateway",
    ):
        [attempt] = await jobs.lease("webhooks", worker_id="hooks-worker-1")
        await jobs.fail(attempt.job_id, attempt.lease.lease_id, error, retry_delay=0)
    return Demo(run_id=AGENT_RUN, dead_job_id=dead.job_id)


def main_pages(demo: Demo) -> dict[str, str]:
    """The console's main pages showing the demo data: screenshot name to path."""
    return {
        "overview": "/",
        "runs": "/runs",
        "run": f"/runs/{demo.run_id}",
        "jobs": "/jobs",
        "job": f"/jobs/{demo.dead_job_id}",
    }
