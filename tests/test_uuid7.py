"""The server's UUIDv7: RFC 9562 layout, its time readable back, and time order."""

from __future__ import annotations

from statekeeper_server.uuid7 import uuid7

NOW_NS = 1_733_300_000_123_456_789


def test_a_uuid7_has_version_7_and_the_rfc_variant() -> None:
    minted = uuid7(NOW_NS)
    assert minted.version == 7
    assert minted.variant == "specified in RFC 4122"


def test_a_uuid7_carries_its_millisecond_in_the_top_48_bits() -> None:
    assert uuid7(NOW_NS).int >> 80 == NOW_NS // 1_000_000


def test_uuid7s_of_later_milliseconds_sort_after_earlier_ones_as_text() -> None:
    earlier = [str(uuid7(NOW_NS + n * 1_000_000)) for n in range(200)]
    assert earlier == sorted(earlier)


def test_uuid7s_of_one_millisecond_differ() -> None:
    assert len({uuid7(NOW_NS) for _ in range(1000)}) == 1000
