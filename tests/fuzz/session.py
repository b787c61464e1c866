"""A connection to the server under test that checks and records every call.

Fuzz requests and the read-back calls that follow successful writes both go
through `Session`, so every rule is checked on every call; each broken rule
becomes a `Violation` carrying what is needed to reproduce it: the seed, the
method, the kind of mutation, the request (or its bytes) and the status.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message

from tests.fuzz.calls import CALL_TIMEOUT, IDLE_WAIT, Outcome, invoke
from tests.fuzz.catalog import Rpc
from tests.fuzz.checks import Finding, check_status, decode_responses
from tests.fuzz.plan import Planned

READ_BACK = "read-back"
"""The kind recorded for calls the checks make after a successful write."""
MAX_SHOWN_REQUEST = 600


@dataclass(frozen=True)
class Violation:
    """A broken rule and the request that broke it."""

    rule: str
    detail: str
    method: str = ""
    kind: str = ""
    seed: int | None = None
    request: str = ""
    note: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    status: str = ""

    def describe(self) -> str:
        """Everything about the violation, over a few lines."""
        lines = [f"{self.rule}: {self.detail}"]
        if self.method:
            lines.append(f"  method {self.method}, kind {self.kind}, seed {self.seed}")
        if self.note:
            lines.append(f"  mutation: {self.note}")
        if self.headers:
            lines.append(f"  headers: {list(self.headers)}")
        if self.request:
            lines.append(f"  request: {self.request}")
        if self.status:
            lines.append(f"  status: {self.status}")
        return "\n".join(lines)


@dataclass
class Tally:
    """Counts of what was sent and what came back."""

    sent: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(RPC, kind of mutation) -> requests."""
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(RPC, status code) -> calls."""
    kind_codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(kind of mutation, status code) -> calls."""
    refused_locally: int = 0
    streams_left_open: int = 0


def _status(outcome: Outcome) -> str:
    if outcome.refused_locally:
        return f"not sent: {outcome.refused_locally[:200]}"
    if outcome.left_open:
        return "OK (stream still open when we stopped listening)"
    return f"{outcome.code.name}: {outcome.details[:300]}"


def _code(outcome: Outcome) -> str:
    return "NOT_SENT" if outcome.refused_locally else outcome.code.name


class Session:
    """Sends requests over one channel, checks every call, records violations."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.tally = Tally()
        self.violations: list[Violation] = []

    async def send(self, planned: Planned) -> list[Message] | None:
        """Send a fuzz request; its decoded responses if it succeeded, else None."""
        outcome = await invoke(self.channel, planned.rpc, planned.payload, planned.headers.metadata)
        self.tally.sent[planned.rpc.short, planned.kind] += 1
        self.tally.codes[planned.rpc.short, _code(outcome)] += 1
        self.tally.kind_codes[planned.kind, _code(outcome)] += 1
        self.tally.refused_locally += bool(outcome.refused_locally)
        self.tally.streams_left_open += outcome.left_open
        findings = check_status(
            outcome,
            must_refuse=planned.headers.must_refuse,
            beyond_transport_limit=planned.beyond_transport_limit,
        )
        decoded, undecodable = decode_responses(planned.rpc, outcome)
        for finding in [*findings, *undecodable]:
            self.record(planned, finding, outcome)
        return decoded if outcome.ok and not undecodable else None

    async def read(
        self,
        rpc: Rpc,
        request: Message,
        cause: Planned,
        *,
        idle_wait: float = IDLE_WAIT,
        enough: Callable[[bytes], bool] | None = None,
    ) -> tuple[Outcome, list[Message]]:
        """A read-back call made because of `cause`, checked like any other call."""
        outcome = await invoke(
            self.channel,
            rpc,
            request.SerializeToString(),
            cause.headers.metadata,
            first_wait=CALL_TIMEOUT,  # every read path answers at once: waiting costs nothing
            idle_wait=idle_wait,
            enough=enough,
        )
        self.tally.sent[rpc.short, READ_BACK] += 1
        self.tally.codes[rpc.short, _code(outcome)] += 1
        self.tally.kind_codes[READ_BACK, _code(outcome)] += 1
        decoded, undecodable = decode_responses(rpc, outcome)
        for finding in [*check_status(outcome), *undecodable]:
            self.record(
                cause,
                Finding(
                    finding.rule,
                    f"{finding.detail} (reading back with {rpc.short}: "
                    + text_format.MessageToString(request, as_one_line=True)[:200]
                    + ")",
                ),
                outcome,
                via=rpc.short,
            )
        return outcome, decoded

    def record(
        self,
        planned: Planned,
        finding: Finding,
        outcome: Outcome | None = None,
        *,
        via: str = "",
    ) -> None:
        """Remember a broken rule caused by `planned` (seen in the answer of `via`, if given)."""
        status = _status(outcome) if outcome is not None else ""
        if via:
            status = f"read back with {via}: {status}"
        self.violations.append(
            Violation(
                rule=finding.rule,
                detail=finding.detail,
                method=planned.rpc.short,
                kind=planned.kind,
                seed=planned.seed,
                request=planned.shown,
                note=planned.note,
                headers=planned.headers.metadata,
                status=status,
            )
        )
