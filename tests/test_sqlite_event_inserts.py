"""How the embedded store writes many events of a run in few statements."""

from __future__ import annotations

import pytest

from statekeeper_server.stores.sqlite.events import MAX_ROWS_PER_INSERT, _row_chunks


@pytest.mark.parametrize("count", [1, 2, 3, 100, 255, 256, 257, 1000])
def test_row_chunks_cover_every_row_in_powers_of_two(count: int) -> None:
    chunks = _row_chunks(count)
    assert sum(chunks) == count
    assert all(size & (size - 1) == 0 and size <= MAX_ROWS_PER_INSERT for size in chunks)
    assert chunks == sorted(chunks, reverse=True)


def test_a_batch_of_a_hundred_takes_three_statements() -> None:
    assert _row_chunks(100) == [64, 32, 4]
