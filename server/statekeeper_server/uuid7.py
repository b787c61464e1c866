"""UUIDv7 (RFC 9562) from the standard library alone.

The server used to mint them with `uuid-utils`, whose 1.x API it needed
while LangGraph's dependencies (langsmith) pin it below 1.0; minting here
lets `statekeeper[server]` and LangGraph install together.
"""

from __future__ import annotations

import os
import time
import uuid

_RAND_A_BITS = 12
_RAND_B_BITS = 62


def uuid7(nanoseconds: int | None = None) -> uuid.UUID:
    """A UUIDv7 for the Unix time `nanoseconds` (now when None): the millisecond in the
    top 48 bits, so ids sort by time, and 74 random bits."""
    if nanoseconds is None:
        nanoseconds = time.time_ns()
    millis = nanoseconds // 1_000_000
    random_bits = int.from_bytes(os.urandom(10), "big")
    rand_a = (random_bits >> _RAND_B_BITS) & ((1 << _RAND_A_BITS) - 1)
    rand_b = random_bits & ((1 << _RAND_B_BITS) - 1)
    value = (
        (millis & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << _RAND_B_BITS | rand_b
    )
    return uuid.UUID(int=value)
