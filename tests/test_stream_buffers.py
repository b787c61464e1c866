"""The stream buffer budget: every stream's share, then borrowing what is free, never waiting."""

from __future__ import annotations

from statekeeper_server.stream_buffers import StreamBuffers

SHARE = 1_000
BUDGET = 10_000


def test_a_lone_stream_gets_its_share_and_then_the_whole_budget() -> None:
    buffers = StreamBuffers(BUDGET, SHARE)
    grant = buffers.open().grant(1_000_000)
    assert grant is not None
    assert (grant.own, grant.borrowed) == (SHARE, BUDGET)
    assert buffers.free == 0


def test_a_stream_gets_only_its_share_once_others_borrowed_the_whole_budget() -> None:
    buffers = StreamBuffers(BUDGET, SHARE)
    buffers.open().grant(1_000_000)
    grant = buffers.open().grant(1_000_000)
    assert grant is not None
    assert (grant.own, grant.borrowed) == (SHARE, 0)


def test_a_grant_takes_only_what_is_free_now() -> None:
    buffers = StreamBuffers(BUDGET, SHARE)
    buffers.open().grant(SHARE + BUDGET - 300)
    grant = buffers.open().grant(1_000_000)
    assert grant is not None
    assert grant.borrowed == 300


def test_a_second_page_of_a_stream_borrows_all_of_it_once_the_share_is_in_use() -> None:
    buffers = StreamBuffers(BUDGET, SHARE)
    stream = buffers.open()
    stream.grant(SHARE)
    second = stream.grant(4_000)
    assert second is not None
    assert (second.own, second.borrowed) == (0, 4_000)


def test_a_grant_under_its_minimum_takes_nothing() -> None:
    buffers = StreamBuffers(0, SHARE)
    stream = buffers.open()
    stream.grant(SHARE)
    assert stream.grant(SHARE, minimum=SHARE) is None
    assert buffers.held == SHARE


def test_settling_a_page_gives_back_what_it_does_not_use_borrowed_bytes_first() -> None:
    buffers = StreamBuffers(BUDGET, SHARE)
    stream = buffers.open()
    grant = stream.grant(5_000)
    assert grant is not None
    stream.settle(grant, 1_500)
    assert (grant.own, grant.borrowed) == (SHARE, 500)
    assert (buffers.borrowed, buffers.held) == (500, 1_500)


def test_a_record_larger_than_its_grant_is_charged_to_the_budget_even_past_its_end() -> None:
    buffers = StreamBuffers(BUDGET, SHARE)
    stream = buffers.open()
    grant = stream.grant(SHARE)
    assert grant is not None
    stream.settle(grant, 50_000)
    assert buffers.borrowed == 50_000 - SHARE
    assert buffers.free == 0
    stream.release(grant)
    assert (buffers.borrowed, buffers.held) == (0, 0)


def test_closing_a_stream_gives_back_everything_it_holds() -> None:
    buffers = StreamBuffers(BUDGET, SHARE)
    stream = buffers.open()
    stream.grant(3_000)
    stream.grant(3_000)
    stream.close()
    assert (buffers.borrowed, buffers.held, buffers.open_streams) == (0, 0, 0)


def test_a_grant_released_after_its_stream_closed_gives_back_nothing_twice() -> None:
    buffers = StreamBuffers(BUDGET, SHARE)
    stream = buffers.open()
    grant = stream.grant(3_000)
    assert grant is not None
    stream.close()
    stream.release(grant)
    assert (buffers.borrowed, buffers.held) == (0, 0)


def test_every_stream_that_ends_is_reported_once() -> None:
    ended: list[None] = []
    buffers = StreamBuffers(BUDGET, SHARE, on_stream_end=lambda: ended.append(None))
    stream = buffers.open()
    stream.close()
    stream.close()
    assert len(ended) == 1
