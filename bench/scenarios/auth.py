"""What access control costs a call: unary AppendEvent with no auth, a static token and a JWT.

Three statekeeper servers, each on a fresh store of the same kind, run side
by side and take the `append` scenario's load (64 callers, each appending to
its own run) in turn. The measurements are interleaved round after round,
each round starting with another server, so all three see the same
disturbances from the rest of the machine; the best round of each counts.
The note gives the ratio of every round, the server's CPU time per call
(the median of the rounds: steadier than rates on a shared machine), and
what the access check alone costs, timed in this process.

- no auth: nothing configured, so the server has no auth layer at
  all, and the calls carry no token (the figure without access control);
- static token: `--auth-tokens-file` of TOKENS_IN_FILE entries; every call
  sends one of them (its digest is compared with every entry's all the same);
- JWT: `--auth-jwt-keys` with an RS256 key made for this run, and an issuer
  and audience to check; every call sends the same JWT, which the server
  verifies once and then finds in its cache until the token expires.

Target: each rate with authentication at least 0.95x the rate without.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench import payloads
from bench.harness import Bench, Measurement
from bench.load import Metadata, unary_load
from bench.report import Row, Target
from bench.scenarios.common import (
    APPEND_EVENT,
    Compared,
    interleaved,
    rate_and_cpu_rows,
    store_label,
)
from bench.scenarios.events import CALLERS, CHANNELS, callers_by_process, start_runs
from statekeeper_server.auth.tokens import new_token, render_entry, token_entry

ROUNDS = {"full": 5, "quick": 4, "smoke": 1}
"""Interleaved rounds (each measures all three servers once), per mode."""
TOKENS_IN_FILE = 10
"""Entries of the tokens file: a small deployment's callers."""
PERMISSIONS = ["default:write"]
"""What every token of the benchmark may do (enough to append)."""
JWT_ISSUER = "https://issuer.bench.invalid"
JWT_AUDIENCE = "statekeeper-bench"
JWT_LIFETIME = 3600
"""Seconds the run's JWT is valid: longer than any run, so it never expires during one."""
TARGET = 0.95
"""Least rate with authentication, as a share of the rate without."""
CPU_TARGET = 1.05
"""Most server CPU per call with authentication, as a multiple of the CPU per call without."""


@dataclass(frozen=True)
class Variant:
    """One of the servers compared: its access-control settings and what its callers send."""

    label: str
    settings: dict[str, str]
    """Settings fields (`auth_tokens_file`, ...) and their values."""
    metadata: Metadata

    @property
    def flags(self) -> list[str]:
        """The settings as `statekeeper serve` flags."""
        return [
            part
            for name, value in self.settings.items()
            for part in ("--" + name.replace("_", "-"), value)
        ]


def variants(directory: Path) -> list[Variant]:
    """No auth, a static token, a JWT: settings and tokens, their files written into
    `directory`."""
    tokens = [new_token() for _ in range(TOKENS_IN_FILE)]
    tokens_file = directory / "tokens.toml"
    entries = [
        render_entry(token_entry(f"caller-{index}", token, PERMISSIONS, None), "toml")
        for index, token in enumerate(tokens)
    ]
    tokens_file.write_text("\n\n".join(entries) + "\n")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys_file = directory / "jwt-keys.pem"
    keys_file.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    now = int(time.time())
    signed = jwt.encode(
        {
            "sub": "bench",
            "iss": JWT_ISSUER,
            "aud": JWT_AUDIENCE,
            "iat": now,
            "exp": now + JWT_LIFETIME,
            "permissions": PERMISSIONS,
        },
        key,
        algorithm="RS256",
    )
    return [
        Variant("no auth", {}, None),
        Variant(
            f"a static token (file of {TOKENS_IN_FILE})",
            {"auth_tokens_file": str(tokens_file)},
            bearer(tokens[-1]),
        ),
        Variant(
            "a JWT (RS256, verified once, then cached)",
            {
                "auth_jwt_keys": str(keys_file),
                "auth_jwt_issuer": JWT_ISSUER,
                "auth_jwt_audience": JWT_AUDIENCE,
            },
            bearer(signed),
        ),
    ]


def bearer(token: str) -> Metadata:
    """The metadata of a call sending `token`."""
    return (("authorization", f"Bearer {token}"),)


# -- the check alone, in this process ---------------------------------------------------


class _Call:
    """What the access check reads of a call: its metadata and its peer (no TLS)."""

    def __init__(self, metadata: Metadata) -> None:
        # A real call carries more than the token; the check scans all of it.
        self._metadata = (*(metadata or ()), ("user-agent", "grpc-python-asyncio/1"))

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"


CHECKS = 20_000
"""Access checks timed in a row, to measure what one costs."""


def check_seconds(variant: Variant) -> float:
    """Seconds the server's access check of one AppendEvent takes with `variant`'s
    settings and token (authentication, namespace, role), timed in this process: the
    best of three runs of CHECKS checks."""
    from statekeeper_server.auth.control import AccessControl
    from statekeeper_server.auth.interceptor import Gate, requirement
    from statekeeper_server.config import Settings

    control = asyncio.run(AccessControl.load(Settings(store="memory:", **variant.settings)))
    assert control is not None, "no access control configured"
    gate = Gate(control.credentials, control.audit)
    need = requirement(APPEND_EVENT, reflection_open=True)
    call: Any = _Call(variant.metadata)
    gate.admit(APPEND_EVENT, need, call)  # a JWT is verified here, then found in the cache
    fastest = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        for _ in range(CHECKS):
            gate.admit(APPEND_EVENT, need, call)
        fastest = min(fastest, (time.perf_counter() - began) / CHECKS)
    return fastest


# -- the scenario -----------------------------------------------------------------------


def auth(bench: Bench, store: str, with_peers: bool) -> list[Row]:
    """AppendEvent by 64 callers on servers with no auth, a static token and a JWT."""
    name = f"AppendEvent, {CALLERS} callers"
    runs = [payloads.run_id(i) for i in range(CALLERS)]
    requests = [payloads.append_request(run).SerializeToString() for run in runs]
    per_process = callers_by_process(bench, requests, CALLERS)
    rounds = ROUNDS[bench.mode.name]
    with (
        tempfile.TemporaryDirectory(prefix="statekeeper-bench-auth-") as directory,
        contextlib.ExitStack() as stack,
    ):
        kinds = variants(Path(directory))
        started = [stack.enter_context(bench.statekeeper(store, *kind.flags)) for kind in kinds]
        for kind, server in zip(kinds, started, strict=True):
            bench.generators.run(
                start_runs, target=server.target, runs=runs, metadata=kind.metadata
            )

        def appends(index: int) -> Measurement:
            kind, server = kinds[index], started[index]
            return bench.measure(
                unary_load,
                server,
                f"{name}, {kind.label} {store_label(store)}",
                per_process=per_process,
                target=server.target,
                path=APPEND_EVENT,
                channels=CHANNELS,
                metadata=kind.metadata,
            )

        results = interleaved(rounds, len(kinds), appends)
        checks = [check_seconds(kind) for kind in kinds[1:]]
    return rate_and_cpu_rows(
        f"{name}, no auth {store_label(store)}",
        "no auth",
        [
            Compared(
                kind.label,
                targets=[Target(TARGET, on_ratio=True)],
                cpu_targets=[Target(CPU_TARGET, at_least=False, on_ratio=True)],
                cpu_note=f"the access check alone takes {check * 1e6:.1f} us (timed in process)",
            )
            for kind, check in zip(kinds[1:], checks, strict=True)
        ],
        results,
        rounds,
    )
