"""The fuzz suite, bounded for CI: every RPC of every service, on every store.

A fresh `statekeeper serve` per store gets a few thousand generated and
mutated requests (see tests/fuzz/README.md for the rules checked and for
long runs). A failure prints the run seed and, per broken rule, the method,
the request seed, the request and the status; `python -m tests.fuzz
--replay SEED` sends one request again. Set STATEKEEPER_FUZZ_SEED to repeat
a run, STATEKEEPER_FUZZ_BUDGET to change its length.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from random import Random

import grpc
import pytest
from google.protobuf import any_pb2, descriptor_pool
from google.rpc import error_details_pb2, status_pb2

from tests.fuzz.calls import Outcome
from tests.fuzz.catalog import all_rpcs
from tests.fuzz.checks import STATUS_DETAILS_KEY, check_log, check_status
from tests.fuzz.generator import RequestBuilder
from tests.fuzz.plan import plan_request
from tests.fuzz.pool import Pool
from tests.fuzz.report import summary, violations_text
from tests.fuzz.runner import FuzzConfig, run_fuzz

BUDGET = int(os.environ.get("STATEKEEPER_FUZZ_BUDGET", "3000"))
PROTOS = Path(__file__).resolve().parent.parent / "protos"


def run_seed() -> int:
    """The seed of this run: STATEKEEPER_FUZZ_SEED, or a fresh one (printed on failure)."""
    given = os.environ.get("STATEKEEPER_FUZZ_SEED")
    return int(given) if given else secrets.randbits(32)


async def test_fuzzed_requests_break_no_rule_of_the_service(store_url: str) -> None:
    seed = run_seed()
    report = await run_fuzz(FuzzConfig(store_url, budget=BUDGET, seed=seed))
    print(summary(report))
    assert report.requests == BUDGET
    assert not report.violations, (
        f"fuzz run seed {seed} (STATEKEEPER_FUZZ_SEED={seed} repeats it)\n"
        + violations_text(report.violations)
    )


def test_every_method_of_every_proto_service_is_fuzzed() -> None:
    pool = descriptor_pool.Default()
    declared = {
        f"/{service.full_name}/{method.name}"
        for proto in sorted(PROTOS.glob("statekeeper/v1/*.proto"))
        for service in pool.FindFileByName(str(proto.relative_to(PROTOS))).services_by_name.values()
        for method in service.methods
    }
    assert declared == {rpc.path for rpc in all_rpcs()}


def test_a_request_seed_builds_the_same_request_again() -> None:
    def requests() -> list[bytes]:
        builder = RequestBuilder(Pool(), Random(0))
        return [
            plan_request(seed, all_rpcs(), builder, ("fz0-0", "fz0-0-b")).payload
            for seed in range(300)
        ]

    assert requests() == requests()


def failed(code: grpc.StatusCode, message: str, reason: str = "") -> Outcome:
    """A failed call as the client sees it, with an ErrorInfo when `reason` is given."""
    status = status_pb2.Status(code=code.value[0], message=message)
    if reason:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="statekeeper.dev"))
        status.details.append(detail)
    trailing = ((STATUS_DETAILS_KEY, status.SerializeToString()),)
    return Outcome(code=code, details=message, trailing=trailing)


@pytest.mark.parametrize(
    ("outcome", "rule"),
    [
        (
            failed(grpc.StatusCode.INVALID_ARGUMENT, "run_id: is required"),
            "error without ErrorInfo",
        ),
        (failed(grpc.StatusCode.INTERNAL, "internal error", "INTERNAL"), "status INTERNAL"),
        (
            failed(grpc.StatusCode.UNAVAILABLE, "the store failed", "STORE_UNAVAILABLE"),
            "UNAVAILABLE while the store is up",
        ),
        (
            failed(grpc.StatusCode.UNKNOWN, "Unexpected <class 'KeyError'>", "X"),
            "message reveals python class name",
        ),
        (
            failed(grpc.StatusCode.INVALID_ARGUMENT, "too many SQL variables", "BAD"),
            "message reveals SQL",
        ),
    ],
)
def test_the_checks_catch_each_kind_of_bad_status(outcome: Outcome, rule: str) -> None:
    assert rule in [finding.rule for finding in check_status(outcome)]


def test_the_checks_accept_a_refusal_with_its_error_info() -> None:
    outcome = failed(grpc.StatusCode.INVALID_ARGUMENT, "run_id: is required", "INVALID_ARGUMENT")
    assert check_status(outcome) == []


def test_the_checks_catch_tracebacks_and_caller_text_in_the_server_log() -> None:
    log = [
        "2026-01-01T00:00:00 ERROR statekeeper.calls: failed\n",
        "Traceback (most recent call last):\n",
        '  File "x.py", line 1, in f\n',
        "ValueError: boom\n",
        "2026-01-01T00:00:00 INFO statekeeper.calls: run \x1b[31m: no such run\n",
        "FZ-INJECTED-LOG-LINE ERROR forged\n",
    ]
    assert {finding.rule for finding in check_log(log)} == {
        "server log holds a traceback",
        "server log holds raw control characters",
        "caller text forged a server log line",
    }
