"""Demo data that looks like a day of real use, for the console's screenshots: an agent
run with tool calls, runs that are going, failed and cancelled, queues holding jobs
in several states (among them a webhook that died after three failed attempts),
workflow runs with their checkpoints, and the agent runs' snapshots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

import statekeeper
from statekeeper.events import custom_event
from statekeeper.v1 import common_pb2, events_pb2, snapshots_pb2

AGENT_RUN = "support-agent-4f2a"
"""The run with tool calls whose timeline (and snapshot) the screenshots show."""
WORKFLOW_RUN = "refund-approval-7731"
"""The workflow run whose checkpoint history and scope diff the screenshots show."""


@dataclass(frozen=True)
class Demo:
    """What the demo data holds that a page is about."""

    run_id: str
    """The agent run with tool calls."""
    dead_job_id: str
    """A job that died after every attempt failed."""
    workflow_run_id: str
    """A workflow run with several checkpoints."""
    diff_from: str
    """The checkpoint of `workflow_run_id` the shown diff starts from."""
    diff_to: str
    """The checkpoint of `workflow_run_id` the shown diff ends at."""


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
    diff_from, diff_to = await _workflows(client)
    await _snapshots(client)
    return Demo(
        run_id=AGENT_RUN,
        dead_job_id=dead.job_id,
        workflow_run_id=WORKFLOW_RUN,
        diff_from=diff_from,
        diff_to=diff_to,
    )


REFUND_SCOPES: list[dict[str, Any]] = [
    {
        "order": "A-20931",
        "customer": "ana@example.com",
        "amount": {"value": 42.5, "currency": "EUR"},
        "stage": "intake",
    },
    {
        "order": "A-20931",
        "customer": "ana@example.com",
        "amount": {"value": 42.5, "currency": "EUR"},
        "stage": "policy-check",
        "policy": {"rule": "refund-under-50", "verdict": "auto-approve"},
    },
    {
        "order": "A-20931",
        "customer": "ana@example.com",
        "amount": {"value": 42.5, "currency": "EUR"},
        "stage": "refunded",
        "policy": {"rule": "refund-under-50", "verdict": "approved"},
        "refund": {"id": "rf_8812", "status": "pending"},
    },
]
"""The refund workflow's scope after each of its steps."""
REFUND_NODES = ["check-policy", "issue-refund", ""]
"""The node each step of the refund workflow hands over to (none after the last)."""


async def _workflows(client: statekeeper.AsyncClient) -> tuple[str, str]:
    """Save workflow runs' checkpoints; the ids of the refund run's first and newest."""
    checkpoints = client.checkpoints
    await checkpoints.save_workflow(
        "invoice-batch-0412",
        "monthly-invoicing",
        step=1,
        next_node_id="render-pdfs",
        scope_snapshot={"month": "2026-11", "customers": 1843, "rendered": 0},
        metadata={"team": "billing", "trigger": "cron"},
    )
    await checkpoints.save_workflow(
        "invoice-batch-0412",
        "monthly-invoicing",
        step=2,
        next_node_id="send-emails",
        scope_snapshot={"month": "2026-11", "customers": 1843, "rendered": 1843},
        metadata={"team": "billing", "trigger": "cron"},
    )
    saved = [
        await checkpoints.save_workflow(
            WORKFLOW_RUN,
            "refund-approval",
            step=step,
            next_node_id=node,
            scope_snapshot=scope,
            metadata={"team": "support", "ticket": "SUP-5521"},
        )
        for step, (scope, node) in enumerate(zip(REFUND_SCOPES, REFUND_NODES, strict=True), start=1)
    ]
    return saved[0].checkpoint_id, saved[-1].checkpoint_id


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _text(role: snapshots_pb2.MessageRole.ValueType, text: str) -> snapshots_pb2.Message:
    return snapshots_pb2.Message(role=role, content=[snapshots_pb2.ContentPart(text=text)])


async def _snapshots(client: statekeeper.AsyncClient) -> None:
    """Save the agent runs' snapshots: the support run's complete, with its request."""
    user = snapshots_pb2.MESSAGE_ROLE_USER
    assistant = snapshots_pb2.MESSAGE_ROLE_ASSISTANT
    await client.snapshots.save(
        snapshots_pb2.Snapshot(
            run_id=AGENT_RUN,
            timestamp=_now(),
            session_id="sess-ana-1142",
            status=snapshots_pb2.RUN_STATUS_COMPLETED,
            iteration=3,
            current_state=snapshots_pb2.TURN_STATE_DONE,
            total_usage=common_pb2.TokenUsage(
                input_tokens=2436, output_tokens=288, cached_input_tokens=1620, total_tokens=2724
            ),
            last_finish=common_pb2.FINISH_REASON_STOP,
            assistant_msg_id="msg_01HX9",
            assistant_message=_text(
                assistant,
                "I've issued a refund of EUR 42.50 for order A-20931;"
                " it reaches your card in 3-5 days.",
            ),
            request=snapshots_pb2.RunRequest(
                provider="anthropic",
                model="claude-sonnet-4-5",
                temperature=0.2,
                limits=snapshots_pb2.RunLimits(max_iterations=8, max_output_tokens=1024),
                metadata=_struct({"channel": "chat", "customer": "ana@example.com"}),
                tools=[
                    snapshots_pb2.ToolDefinition(
                        name="orders.search",
                        description="Find a customer's orders",
                        parameters=_struct({"customer": "string", "since": "date"}),
                    ),
                    snapshots_pb2.ToolDefinition(
                        name="refunds.create",
                        description="Refund an order",
                        parameters=_struct({"order": "string", "amount": "number"}),
                    ),
                ],
                messages=[
                    _text(
                        snapshots_pb2.MESSAGE_ROLE_SYSTEM,
                        "You are the support agent of Example Shop.",
                    ),
                    _text(user, "Where is my refund for the keyboard I sent back?"),
                ],
            ),
        )
    )
    await client.snapshots.save(
        snapshots_pb2.Snapshot(
            run_id="research-agent-91c0",
            timestamp=_now(),
            session_id="sess-bo-77",
            status=snapshots_pb2.RUN_STATUS_RUNNING,
            iteration=2,
            current_state=snapshots_pb2.TURN_STATE_EXECUTING_TOOLS,
            total_usage=common_pb2.TokenUsage(
                input_tokens=5120, output_tokens=410, total_tokens=5530
            ),
            last_finish=common_pb2.FINISH_REASON_TOOL_CALLS,
        )
    )
    await client.snapshots.save(
        snapshots_pb2.Snapshot(
            run_id="triage-run-2031",
            timestamp=_now(),
            session_id="sess-ops-3",
            status=snapshots_pb2.RUN_STATUS_FAILED,
            iteration=1,
            current_state=snapshots_pb2.TURN_STATE_EXECUTING_TOOLS,
            total_usage=common_pb2.TokenUsage(input_tokens=880, output_tokens=64, total_tokens=944),
        )
    )


def main_pages(demo: Demo) -> dict[str, str]:
    """The console's main pages showing the demo data: screenshot name to path."""
    return {
        "overview": "/",
        "runs": "/runs",
        "run": f"/runs/{demo.run_id}",
        "jobs": "/jobs",
        "job": f"/jobs/{demo.dead_job_id}",
        "checkpoints": "/checkpoints",
        "checkpoint-history": f"/checkpoints/runs/{demo.workflow_run_id}",
        "checkpoint-diff": f"/checkpoints/runs/{demo.workflow_run_id}/diff"
        f"?from={demo.diff_from}&to={demo.diff_to}",
        "snapshots": "/snapshots",
        "snapshot": f"/snapshots/{demo.run_id}",
    }
