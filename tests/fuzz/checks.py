"""The rules every call, every response and the server's log must keep.

On every call: never UNKNOWN, INTERNAL or DATA_LOSS; UNAVAILABLE only with
reason SERVER_STOPPING; every error status carries a `google.rpc.ErrorInfo`
and a message that reveals no internals (SQL, class names, module and file
paths, tracebacks); every response decodes with the generated classes at
the default recursion limit; a call naming two namespaces, or an invalid
one, never succeeds. On the log: no traceback, no raw control character,
no line forged by a newline in caller text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

from tests.fuzz.calls import CALL_TIMEOUT, Outcome
from tests.fuzz.catalog import Rpc
from tests.fuzz.hygiene import RAW_CONTROL, leaks
from tests.fuzz.values import INJECTED_LOG_LINE

FORBIDDEN_CODES = frozenset(
    {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}
)
STATUS_DETAILS_KEY = "grpc-status-details-bin"
SERVER_STOPPING = "SERVER_STOPPING"
TRACEBACK = "Traceback (most recent call last)"


@dataclass(frozen=True)
class Finding:
    """One broken rule: which, and the evidence."""

    rule: str
    detail: str = ""


@dataclass(frozen=True)
class ErrorDetails:
    """The rich details of an error status."""

    info: error_details_pb2.ErrorInfo | None
    descriptions: tuple[str, ...]
    """Field violation descriptions of a BadRequest, if any."""
    problem: str = ""
    """Why the details could not be read, if they could not."""


def error_details(outcome: Outcome) -> ErrorDetails:
    """The ErrorInfo and BadRequest descriptions sent with an error status."""
    raw = next((value for key, value in outcome.trailing if key == STATUS_DETAILS_KEY), None)
    if raw is None:
        return ErrorDetails(None, ())
    try:
        status = status_pb2.Status.FromString(raw if isinstance(raw, bytes) else raw.encode())
    except DecodeError as error:
        return ErrorDetails(None, (), f"status details undecodable: {error}")
    if status.code != outcome.code.value[0]:
        return ErrorDetails(None, (), f"status details say code {status.code}")
    info: error_details_pb2.ErrorInfo | None = None
    descriptions: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            descriptions.extend(v.description for v in bad.field_violations)
    return ErrorDetails(info, tuple(descriptions))


def decode_responses(rpc: Rpc, outcome: Outcome) -> tuple[list[Message], list[Finding]]:
    """The responses decoded with the generated class, and those that would not decode."""
    decoded, findings = [], []
    for index, data in enumerate(outcome.responses):
        try:
            decoded.append(rpc.response.FromString(data))
        except DecodeError as error:
            findings.append(
                Finding(
                    "response undecodable by a standard client",
                    f"message {index} ({len(data)} bytes): {error}",
                )
            )
    return decoded, findings


def check_status(
    outcome: Outcome, *, must_refuse: bool = False, beyond_transport_limit: bool = False
) -> list[Finding]:
    """The rules on a call's status, whatever the RPC."""
    if outcome.refused_locally:
        return []
    code = outcome.code
    if code == grpc.StatusCode.OK:
        if must_refuse:
            return [Finding("accepted an ambiguous or invalid namespace header")]
        return []
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return [Finding(f"no answer within {CALL_TIMEOUT:.0f} s", outcome.details)]
    findings = []
    details = error_details(outcome)
    reason = details.info.reason if details.info is not None else ""
    if code in FORBIDDEN_CODES:
        findings.append(Finding(f"status {code.name}", outcome.details))
    if code == grpc.StatusCode.UNAVAILABLE and reason != SERVER_STOPPING:
        evidence = f"{reason or 'no reason'}: {outcome.details}"
        findings.append(Finding("UNAVAILABLE while the store is up", evidence))
    if "larger than max" in outcome.details and code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if not beyond_transport_limit:
            findings.append(Finding("message larger than gRPC accepts", outcome.details))
    elif not reason:
        findings.append(
            Finding("error without ErrorInfo", details.problem or f"{code.name}: {outcome.details}")
        )
    for text in (outcome.details, *details.descriptions):
        for leak in leaks(text):
            findings.append(Finding(f"message reveals {leak.split(' (')[0]}", text[:300]))
    return findings


def check_log(lines: Iterable[str]) -> list[Finding]:
    """The rules on what the server wrote to stderr; one finding per distinct problem."""
    findings: dict[str, Finding] = {}
    pending_traceback = False
    for line in lines:
        text = line[:-1] if line.endswith("\n") else line
        if TRACEBACK in text:
            pending_traceback = True
            continue
        if pending_traceback and text and not text[0].isspace():
            # The first unindented line after a traceback names the exception.
            pending_traceback = False
            summary = text.removeprefix("[server] ")
            findings.setdefault(
                "traceback " + summary[:120],
                Finding("server log holds a traceback", summary[:300]),
            )
        if RAW_CONTROL.search(text):
            findings.setdefault(
                "control " + RAW_CONTROL.sub("?", text)[:80],
                Finding("server log holds raw control characters", repr(text[:300])),
            )
        if text.startswith(INJECTED_LOG_LINE):
            findings.setdefault(
                "forged " + text[:80],
                Finding("caller text forged a server log line", repr(text[:300])),
            )
    if pending_traceback:
        findings.setdefault("traceback", Finding("server log holds a traceback", "(cut off)"))
    return list(findings.values())
