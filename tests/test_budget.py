"""How many records a page, a batch or a stream message holds: the rules every list shares."""

from __future__ import annotations

from collections.abc import Iterator

from statekeeper.v1 import events_pb2
from statekeeper_server.stores.budget import fill_page, framed_size, split_by_size


def test_a_framed_size_is_what_the_record_takes_in_a_repeated_field() -> None:
    for size in (0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152):
        envelope = events_pb2.EventEnvelope(event_id="x" * size) if size else None
        record = envelope.SerializeToString() if envelope else b""
        batch = events_pb2.EventBatch(envelopes=[events_pb2.EventEnvelope.FromString(record)])
        assert framed_size(len(record)) == batch.ByteSize()


def test_a_page_holds_records_while_their_framed_sizes_fit() -> None:
    records = [b"x" * 10] * 5
    page, more = fill_page(records, len, max_count=100, max_bytes=3 * framed_size(10))
    assert (len(page), more) == (3, True)


def test_a_page_holds_every_record_that_fits_and_says_none_is_left() -> None:
    page, more = fill_page([b"x" * 10] * 3, len, max_count=100, max_bytes=1000)
    assert (len(page), more) == (3, False)


def test_a_page_always_holds_its_first_record_however_large() -> None:
    page, more = fill_page([b"x" * 100, b"y"], len, max_count=10, max_bytes=10)
    assert (page, more) == ([b"x" * 100], True)


def test_a_page_holds_at_most_its_count_of_records() -> None:
    page, more = fill_page([b"x"] * 10, len, max_count=4, max_bytes=10_000)
    assert (len(page), more) == (4, True)


def test_a_page_reads_at_most_one_record_past_what_it_holds() -> None:
    read: list[int] = []

    def records() -> Iterator[bytes]:
        for index in range(100):
            read.append(index)
            yield b"x" * 10

    page, _ = fill_page(records(), len, max_count=100, max_bytes=2 * framed_size(10))
    assert len(page) == 2
    assert read == [0, 1, 2]


def test_split_closes_a_run_before_a_record_would_take_it_past_the_budget() -> None:
    sizes = [3, 3, 3, 10, 1]
    runs = list(split_by_size([b"x" * n for n in sizes], len, 2 * framed_size(3)))
    assert [[len(record) for record in run] for run in runs] == [[3, 3], [3], [10], [1]]
    assert list(split_by_size([], len, 6)) == []
