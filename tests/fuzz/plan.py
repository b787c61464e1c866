"""One fuzz request, decided entirely by its seed.

`plan_request` draws from `random.Random(seed)` which RPC to call, which
kind of mutation to apply, the valid-looking request and its mutation. The
only other input is the pool of ids earlier responses revealed (drawn from
by a second generator, so the shape of the request does not depend on it):
rerun a seed with an empty pool and the same request comes out, with fresh
ids where remembered ones were.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cache, cached_property
from random import Random

from google.protobuf import text_format
from google.protobuf.message import DecodeError, Message

from statekeeper_server.limits import DEFAULT_MAX_REQUEST_BYTES, TRANSPORT_SLACK_BYTES
from tests.fuzz.catalog import Rpc
from tests.fuzz.generator import RequestBuilder
from tests.fuzz.mutations import (
    METADATA,
    NAMESPACE_HEADER,
    RAW,
    STRUCTURED,
    VALID,
    Headers,
    MutationInput,
    applicable_kinds,
    namespace_headers,
)

KIND_WEIGHTS: dict[str, int] = {
    VALID: 22,
    "boundary-scalars": 8,
    "hostile-strings": 8,
    "unknown-enums": 4,
    "non-finite": 6,
    "time-range": 6,
    "deep-json": 7,
    "wide-json": 3,
    "forged-token": 8,
    "oversized-repeated": 2,
    "raw-random": 4,
    "raw-truncated": 4,
    "raw-bad-utf8": 5,
    "raw-wire-type": 4,
    METADATA: 7,
}
"""How often each kind of request is sent, relative to the others."""
TRANSPORT_LIMIT_BYTES = DEFAULT_MAX_REQUEST_BYTES + TRANSPORT_SLACK_BYTES
"""Requests above this size may be refused by gRPC itself, without an ErrorInfo."""
SHOWN_CHARS = 600


@dataclass(frozen=True)
class Planned:
    """A request ready to send, and everything needed to report it."""

    seed: int
    rpc: Rpc
    kind: str
    payload: bytes
    headers: Headers
    note: str
    message: Message | None
    """The request as a message; None when its bytes are not a valid encoding."""

    @cached_property
    def shown(self) -> str:
        """The request for a report: text format, or the start of its bytes in hex."""
        text = f"bytes[{len(self.payload)}] {self.payload[:300].hex()}"
        if self.message is not None:
            with contextlib.suppress(DecodeError, RecursionError):  # too deep to print
                text = text_format.MessageToString(self.message, as_one_line=True)
        if len(text) > SHOWN_CHARS:
            text = text[:SHOWN_CHARS] + f"... ({len(text)} chars)"
        return text

    @property
    def beyond_transport_limit(self) -> bool:
        """Whether gRPC may refuse the request for its size before the service sees it."""
        return len(self.payload) > TRANSPORT_LIMIT_BYTES


DESTRUCTIVE_VERBS = ("Delete", "Truncate")
"""RPCs that remove records are sent less often, so namespaces hold enough to page through."""


def rpc_weight(rpc: Rpc) -> float:
    """How often `rpc` is picked, relative to the others."""
    return 0.3 if rpc.name.startswith(DESTRUCTIVE_VERBS) else 1.0


@cache
def _kinds(rpc: Rpc) -> list[str]:
    kinds = applicable_kinds(rpc)
    missing = set(kinds) - set(KIND_WEIGHTS)
    assert not missing, f"no weight for {missing}"
    return kinds


def plan_request(
    seed: int, rpcs: tuple[Rpc, ...], builder: RequestBuilder, owned: tuple[str, str]
) -> Planned:
    """The request of `seed`: an RPC, a kind, a request and its mutation.

    `owned` are the two namespaces this request may name; the first is used
    unless the header itself is mutated.
    """
    rng = Random(seed)
    rpc = rng.choices(rpcs, weights=[rpc_weight(rpc) for rpc in rpcs])[0]
    kinds = _kinds(rpc)
    kind = rng.choices(kinds, weights=[KIND_WEIGHTS[kind] for kind in kinds])[0]
    request = builder.build(rpc, rng)
    headers = Headers(((NAMESPACE_HEADER, owned[0]),), "", False)
    given = MutationInput(rpc, builder, rng)
    if kind == METADATA:
        headers = namespace_headers(rng, owned)
        return Planned(seed, rpc, kind, request.SerializeToString(), headers, headers.note, request)
    if kind in STRUCTURED:
        note = STRUCTURED[kind](request, given)
        assert note is not None, f"{kind} applies to {rpc.short}"
        return Planned(seed, rpc, kind, request.SerializeToString(), headers, note, request)
    if kind in RAW:
        made = RAW[kind](request, given)
        if made is None:
            kind, made = "raw-random", RAW["raw-random"](request, given)
        assert made is not None
        payload, note = made
        return Planned(seed, rpc, kind, payload, headers, note, None)
    return Planned(seed, rpc, VALID, request.SerializeToString(), headers, "", request)
