"""The job queue's decisions that every backend shares: backoff, failures, states."""

from __future__ import annotations

import json

import pytest
from google.protobuf import struct_pb2

from statekeeper_server.errors import DataLoss
from statekeeper_server.stores.jobs import (
    AVAILABLE,
    DEAD,
    RUNNING,
    SCHEDULED,
    SUCCEEDED,
    JobRow,
    after_failure,
    backoff_us,
    job_from_row,
    reported_state,
)

BASE = 1_000_000
CAP = 60_000_000


def running_row(attempt: int, max_retries: int = 3) -> JobRow:
    return JobRow(
        seq=1,
        namespace="default",
        job_id="job-1",
        queue="default",
        kind="k",
        payload=b"",
        priority=2,
        state=RUNNING,
        attempt=attempt,
        max_retries=max_retries,
        run_after=0,
        create_time=0,
        update_time=0,
        finish_time=None,
        errors="[]",
        result=None,
        lease_id="lease-1",
        worker_id="w",
        lease_expire=10,
        idempotency_key=None,
        backoff_base=BASE,
        backoff_cap=CAP,
    )


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8])
def test_backoff_lies_between_half_and_all_of_the_exponential_step(attempt: int) -> None:
    step = min(CAP, BASE * 2 ** (attempt - 1))
    assert backoff_us(attempt, BASE, CAP, 0.0) == step // 2
    assert step // 2 <= backoff_us(attempt, BASE, CAP, 0.5) <= step
    assert backoff_us(attempt, BASE, CAP, 0.999999) <= step


def test_backoff_never_shrinks_from_one_attempt_to_the_next_below_the_cap() -> None:
    for attempt in range(1, 6):
        assert BASE * 2**attempt <= CAP
        worst_next = backoff_us(attempt + 1, BASE, CAP, 0.0)
        best_this = backoff_us(attempt, BASE, CAP, 0.999999)
        assert worst_next >= best_this


def test_backoff_stops_growing_at_the_cap() -> None:
    assert backoff_us(40, BASE, CAP, 0.999999) <= CAP
    assert backoff_us(1000, BASE, CAP, 0.0) == CAP // 2


def test_a_retryable_failure_with_attempts_left_waits_for_the_backoff() -> None:
    outcome = after_failure(
        running_row(attempt=2), 100, retryable=True, retry_delay_us=None, rand=0.0
    )
    assert outcome == after_failure(
        running_row(attempt=2), 100, retryable=True, retry_delay_us=BASE, rand=0.9
    )
    assert (outcome.state, outcome.run_after_us) == (SCHEDULED, 100 + BASE)


def test_max_retries_three_allows_four_attempts() -> None:
    fourth = after_failure(running_row(attempt=3), 0, retryable=True, retry_delay_us=0, rand=0.0)
    last = after_failure(running_row(attempt=4), 0, retryable=True, retry_delay_us=0, rand=0.0)
    assert fourth.state == AVAILABLE
    assert last.state == DEAD


def test_a_non_retryable_failure_is_dead_at_once() -> None:
    outcome = after_failure(
        running_row(attempt=1), 0, retryable=False, retry_delay_us=None, rand=0.0
    )
    assert outcome.state == DEAD


def test_a_scheduled_job_is_reported_available_once_its_time_has_come() -> None:
    assert reported_state(SCHEDULED, run_after_us=50, now_us=49) == SCHEDULED
    assert reported_state(SCHEDULED, run_after_us=50, now_us=50) == AVAILABLE
    assert reported_state(RUNNING, run_after_us=50, now_us=99) == RUNNING


def test_the_view_of_a_job_carries_every_stored_field() -> None:
    payload = struct_pb2.Struct()
    payload.update({"document": "doc-1"})
    error = {"attempt": 1, "message": "boom", "fail_time": 2_500_000, "worker_id": "w"}
    row = running_row(2)._replace(
        payload=payload.SerializeToString(),
        run_after=-1_500_001,
        create_time=1_000_001,
        update_time=3_000_000,
        errors=json.dumps([error]),
        idempotency_key="key-1",
    )
    job = job_from_row(row, 5)
    assert (job.job_id, job.queue, job.kind, job.state, job.attempt) == (
        "job-1",
        "default",
        "k",
        RUNNING,
        2,
    )
    assert (job.priority, job.max_retries, job.idempotency_key) == (2, 3, "key-1")
    assert job.payload == payload
    assert (job.run_after.seconds, job.run_after.nanos) == (-2, 499_999_000)
    assert (job.create_time.seconds, job.create_time.nanos) == (1, 1000)
    assert job.update_time.ToMicroseconds() == 3_000_000
    assert [
        (e.attempt, e.message, e.fail_time.ToMicroseconds(), e.worker_id) for e in job.errors
    ] == [(1, "boom", 2_500_000, "w")]
    assert job.retry_backoff_base.ToMicroseconds() == BASE
    assert job.retry_backoff_cap.ToMicroseconds() == CAP
    assert (job.lease.lease_id, job.lease.worker_id, job.lease.expire_time.ToMicroseconds()) == (
        "lease-1",
        "w",
        10,
    )
    assert not job.HasField("finish_time")
    assert not job.HasField("result")


def test_the_view_of_a_finished_job_has_its_result_and_no_lease() -> None:
    result = struct_pb2.Struct()
    result.update({"words": 120})
    row = running_row(1)._replace(
        state=SUCCEEDED, result=result.SerializeToString(), finish_time=4_000_000
    )
    job = job_from_row(row, 5)
    assert job.state == SUCCEEDED
    assert job.result == result
    assert job.finish_time.ToMicroseconds() == 4_000_000
    assert not job.HasField("lease")
    assert list(job.errors) == []
    assert job.HasField("payload")


@pytest.mark.parametrize(
    "corruption",
    [
        {"payload": b"\xff"},
        {"result": b"\xff"},
        {"errors": "["},
        {"errors": "{}"},
        {"errors": '[{"attempt": 1}]'},
        {"errors": "[1]"},
    ],
)
def test_a_job_stored_unreadable_is_data_loss_naming_it(corruption: dict[str, object]) -> None:
    row = running_row(1)._replace(**corruption)
    with pytest.raises(DataLoss) as raised:
        job_from_row(row, 5)
    assert raised.value.reason == "CORRUPT_JOB"
    assert "job-1" in raised.value.message
