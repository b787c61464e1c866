"""The job queue's decisions that every backend shares: backoff, failures, states."""

from __future__ import annotations

import pytest

from statekeeper_server.stores.jobs import (
    AVAILABLE,
    DEAD,
    RUNNING,
    SCHEDULED,
    JobRow,
    after_failure,
    backoff_us,
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
