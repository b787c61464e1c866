"""The per-run tail of newest commits that woken followers share."""

from __future__ import annotations

from statekeeper_server.stores.events import RunState
from statekeeper_server.stores.recent_commits import (
    MAX_TAIL_BYTES,
    MAX_TAIL_ENVELOPES,
    RecentCommits,
)

KEY = ("events", "default", "run-1")


def run(last_seq: int, create_us: int = 1) -> RunState:
    return RunState("run-1", "s", 1, last_seq, False, create_us, create_us)


def test_a_follower_at_the_commits_start_gets_its_page() -> None:
    recent = RecentCommits()
    recent.publish(KEY, 2, run(4), [b"three", b"four"])
    page = recent.page_after(KEY, 2, 100)
    assert page is not None
    assert (page.envelopes, page.through_seq, page.run) == ([b"three", b"four"], 4, run(4))


def test_a_follower_inside_the_tail_gets_the_rest_of_it() -> None:
    recent = RecentCommits()
    recent.publish(KEY, 2, run(4), [b"three", b"four"])
    page = recent.page_after(KEY, 3, 100)
    assert page is not None
    assert (page.envelopes, page.through_seq) == ([b"four"], 4)


def test_a_follower_at_the_newest_seq_gets_an_empty_page() -> None:
    recent = RecentCommits()
    recent.publish(KEY, 2, run(4), [b"three", b"four"])
    page = recent.page_after(KEY, 4, 100)
    assert page is not None
    assert (page.envelopes, page.through_seq, page.run) == ([], 4, run(4))


def test_a_follower_before_the_tail_or_of_another_run_gets_nothing() -> None:
    recent = RecentCommits()
    recent.publish(KEY, 2, run(4), [b"three", b"four"])
    assert recent.page_after(KEY, 1, 100) is None
    assert recent.page_after(KEY, 5, 100) is None
    assert recent.page_after(("events", "default", "run-2"), 2, 100) is None


def test_a_page_stops_at_the_limit_and_says_how_far_it_got() -> None:
    recent = RecentCommits()
    recent.publish(KEY, 2, run(4), [b"three", b"four"])
    page = recent.page_after(KEY, 2, 1)
    assert page is not None
    assert (page.envelopes, page.through_seq, page.run) == ([b"three"], 3, run(4))


def test_consecutive_commits_extend_the_tail() -> None:
    recent = RecentCommits()
    recent.publish(KEY, 2, run(4), [b"three", b"four"])
    recent.publish(KEY, 4, run(5), [b"five"])
    page = recent.page_after(KEY, 2, 100)
    assert page is not None
    assert (page.envelopes, page.run) == ([b"three", b"four", b"five"], run(5))


def test_a_commit_after_a_gap_starts_a_new_tail() -> None:
    recent = RecentCommits()
    recent.publish(KEY, 2, run(4), [b"three", b"four"])
    recent.publish(KEY, 6, run(7), [b"seven"])
    assert recent.page_after(KEY, 4, 100) is None
    assert recent.page_after(KEY, 6, 100) is not None


def test_an_older_commit_published_late_is_ignored() -> None:
    recent = RecentCommits()
    recent.publish(KEY, 4, run(5), [b"five"])
    recent.publish(KEY, 2, run(4), [b"three", b"four"])
    assert recent.page_after(KEY, 2, 100) is None
    page = recent.page_after(KEY, 4, 100)
    assert page is not None
    assert page.run == run(5)


def test_a_recreated_run_replaces_the_old_runs_tail() -> None:
    recent = RecentCommits()
    recent.publish(KEY, 4, run(5, create_us=1), [b"five"])
    recent.publish(KEY, 0, run(1, create_us=2), [b"one"])
    page = recent.page_after(KEY, 0, 100)
    assert page is not None
    assert page.run == run(1, create_us=2)


def test_forget_drops_the_runs_tail() -> None:
    recent = RecentCommits()
    recent.publish(KEY, 0, run(1), [b"one"])
    recent.forget(KEY)
    assert recent.page_after(KEY, 0, 100) is None


def test_the_oldest_runs_go_first_once_the_budget_is_spent() -> None:
    recent = RecentCommits(budget_bytes=10)
    keys = [("events", "default", f"run-{n}") for n in range(3)]
    for key in keys:
        recent.publish(key, 0, run(1), [b"x" * 4])
    assert recent.page_after(keys[0], 0, 100) is None
    assert recent.page_after(keys[1], 0, 100) is not None
    assert recent.page_after(keys[2], 0, 100) is not None


def test_a_long_tail_drops_its_oldest_envelopes() -> None:
    recent = RecentCommits()
    half = b"x" * (MAX_TAIL_BYTES // 2)
    recent.publish(KEY, 0, run(2), [half, half])
    recent.publish(KEY, 2, run(3), [b"y"])
    assert recent.page_after(KEY, 0, 100) is None
    page = recent.page_after(KEY, 1, 100)
    assert page is not None
    assert page.envelopes == [half, b"y"]


def test_a_commit_larger_than_a_tail_keeps_only_its_newest_envelopes() -> None:
    recent = RecentCommits()
    recent.publish(KEY, 0, run(2), [b"x" * MAX_TAIL_BYTES, b"y"])
    page = recent.page_after(KEY, 1, 100)
    assert page is not None
    assert page.envelopes == [b"y"]


def test_a_tail_keeps_at_most_its_number_of_envelopes() -> None:
    recent = RecentCommits()
    for seq in range(MAX_TAIL_ENVELOPES + 5):
        recent.publish(KEY, seq, run(seq + 1), [b"e"])
    assert recent.page_after(KEY, 4, 1000) is None
    page = recent.page_after(KEY, 5, 1000)
    assert page is not None
    assert len(page.envelopes) == MAX_TAIL_ENVELOPES


def test_the_budget_counts_a_tail_once_however_often_it_grew() -> None:
    recent = RecentCommits(budget_bytes=10)
    for seq in range(10):
        recent.publish(KEY, seq, run(seq + 1), [b"e"])
    page = recent.page_after(KEY, 0, 1000)
    assert page is not None
    assert len(page.envelopes) == 10
