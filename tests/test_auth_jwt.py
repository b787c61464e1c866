"""JWT bearer tokens: signed by a configured key (JWKS or PEM), checked for issuer,
audience, expiry and not-before, their permissions read from a claim."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

from statekeeper.v1 import (
    events_pb2,
    events_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    snapshots_pb2,
    snapshots_pb2_grpc,
)
from statekeeper_server import compat
from statekeeper_server.app import Application
from statekeeper_server.auth.credentials import Credentials
from statekeeper_server.auth.jwt_tokens import (
    JwtAuthenticator,
    JwtRules,
    jwks_keys,
    read_verification_keys,
)
from statekeeper_server.errors import Unauthenticated
from tests.auth_support import (
    AUDIENCE,
    CALLS,
    ISSUER,
    SigningKey,
    call_metadata,
    claims,
    make_call,
    write_jwks,
)
from tests.harness import running_app
from tests.rpc_errors import error_info
from tests.test_events_store import started
from tests.test_snapshots_store import snapshot

# Access control is what these tests are about: each server has its own.
pytestmark = pytest.mark.own_access_control

ONE_CALL_PER_SERVICE_AND_EVERY_STREAM = [
    *{call.service: call for call in reversed(CALLS) if not call.streaming}.values(),
    *(call for call in CALLS if call.streaming),
]


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {
        "RS256": SigningKey.rsa("rsa-1"),
        "ES256": SigningKey.ec("ec-1"),
        "EdDSA": SigningKey.ed25519("ed-1"),
    }


@pytest.fixture
def jwks(tmp_path: Path, keys: dict[str, SigningKey]) -> Path:
    return write_jwks(tmp_path / "jwks.json", list(keys.values()))


@pytest.fixture
async def app(jwks: Path) -> AsyncIterator[Application]:
    async with running_app(
        "memory:",
        auth_jwt_keys=str(jwks),
        auth_jwt_issuer=ISSUER,
        auth_jwt_audience=AUDIENCE,
    ) as running:
        yield running


@pytest.fixture
async def channel(app: Application) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as opened:
        yield opened


async def save(channel: grpc.aio.Channel, token: str, namespace: str | None = "acme") -> None:
    stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
    await stub.SaveSnapshot(
        snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot("r")),
        metadata=call_metadata(token, namespace),
    )


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
async def test_a_jwt_signed_by_a_key_of_the_jwks_grants_its_permissions(
    channel: grpc.aio.Channel, keys: dict[str, SigningKey], algorithm: str
) -> None:
    token = keys[algorithm].sign(claims(["acme:write"]))
    await save(channel, token)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await save(channel, token, "globex")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_pem_public_keys_verify_jwts_as_a_jwks_does(
    tmp_path: Path, keys: dict[str, SigningKey]
) -> None:
    pem = tmp_path / "keys.pem"
    pem.write_bytes(b"".join(key.public_pem() for key in keys.values()))
    async with (
        running_app("memory:", auth_jwt_keys=str(pem)) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        for key in keys.values():
            await save(channel, key.sign(claims(["*:write"], issuer=None, audience=None)))


async def test_a_principal_with_one_namespace_in_its_claim_may_leave_the_header_out(
    channel: grpc.aio.Channel, keys: dict[str, SigningKey]
) -> None:
    await save(channel, keys["ES256"].sign(claims(["acme:write"])), namespace=None)


async def test_a_jwt_expired_within_the_leeway_is_still_accepted(
    channel: grpc.aio.Channel, keys: dict[str, SigningKey]
) -> None:
    await save(channel, keys["RS256"].sign(claims(["acme:write"], lifetime=-5)))


def forged(keys: dict[str, SigningKey]) -> str:
    """Signed by a key the server does not have, under the kid of one it has."""
    return SigningKey.ec("ec-1").sign(claims())


def hmac_signed(keys: dict[str, SigningKey]) -> str:
    return jwt.encode(claims(), "a shared secret of thirty-two bytes!", algorithm="HS256")


def unsigned(keys: dict[str, SigningKey]) -> str:
    return jwt.encode(claims(), None, algorithm="none") + "x"  # type: ignore[arg-type]


def without_expiry(keys: dict[str, SigningKey]) -> str:
    payload = claims()
    del payload["exp"]
    return keys["RS256"].sign(payload)


DENIALS: list[tuple[str, Callable[[dict[str, SigningKey]], str], str]] = [
    ("bad signature", forged, "INVALID_TOKEN"),
    ("wrong issuer", lambda k: k["RS256"].sign(claims(issuer="https://other")), "INVALID_TOKEN"),
    ("no issuer", lambda k: k["RS256"].sign(claims(issuer=None)), "INVALID_TOKEN"),
    ("wrong audience", lambda k: k["ES256"].sign(claims(audience="other")), "INVALID_TOKEN"),
    ("no audience", lambda k: k["ES256"].sign(claims(audience=None)), "INVALID_TOKEN"),
    ("expired", lambda k: k["EdDSA"].sign(claims(lifetime=-120)), "TOKEN_EXPIRED"),
    (
        "not yet valid",
        lambda k: k["EdDSA"].sign(claims(nbf=int(time.time()) + 120)),
        "TOKEN_NOT_YET_VALID",
    ),
    ("no expiry", without_expiry, "INVALID_TOKEN"),
    ("missing claim", lambda k: k["RS256"].sign(claims(None)), "INVALID_TOKEN"),
    ("claim not a list", lambda k: k["RS256"].sign(claims("acme:write")), "INVALID_TOKEN"),
    ("claim with bad role", lambda k: k["RS256"].sign(claims(["acme:owner"])), "INVALID_TOKEN"),
    ("claim not strings", lambda k: k["RS256"].sign(claims([{"acme": "write"}])), "INVALID_TOKEN"),
    ("symmetric algorithm", hmac_signed, "INVALID_TOKEN"),
    ("no signature", unsigned, "INVALID_TOKEN"),
    ("not a jwt", lambda k: "not.a.jwt", "INVALID_TOKEN"),
]


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [(make, reason) for _, make, reason in DENIALS],
    ids=[name for name, _, _ in DENIALS],
)
async def test_a_jwt_failing_a_check_is_unauthenticated_on_every_service(
    channel: grpc.aio.Channel,
    keys: dict[str, SigningKey],
    make_token: Callable[[dict[str, SigningKey]], str],
    reason: str,
) -> None:
    token = make_token(keys)
    for call in ONE_CALL_PER_SERVICE_AND_EVERY_STREAM:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await make_call(channel, call, call_metadata(token, "acme"))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, call.path
        assert error_info(caught.value).reason == reason, call.path


async def test_a_key_removed_from_the_file_no_longer_verifies_after_a_reload(
    app: Application, channel: grpc.aio.Channel, jwks: Path, keys: dict[str, SigningKey]
) -> None:
    token = keys["RS256"].sign(claims())
    await save(channel, token)
    write_jwks(jwks, [keys["ES256"]])
    await app.reload()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await save(channel, token)
    assert error_info(caught.value).reason == "INVALID_TOKEN"
    await save(channel, keys["ES256"].sign(claims()))


# -- streams ----------------------------------------------------------------------------


@pytest.fixture
async def strict_app(jwks: Path) -> AsyncIterator[Application]:
    async with running_app(
        "memory:",
        auth_jwt_keys=str(jwks),
        auth_jwt_issuer=ISSUER,
        auth_jwt_audience=AUDIENCE,
        auth_jwt_leeway=0,
    ) as running:
        yield running


async def stream_until_refused(stream: Any) -> tuple[list[Any], grpc.aio.AioRpcError]:
    """The messages of `stream` until it fails, and its failure."""
    received: list[Any] = []
    try:
        async with compat.timeout(30):
            async for message in stream:
                received.append(message)
    except grpc.aio.AioRpcError as error:
        return received, error
    raise AssertionError(f"the stream ended without an error after {received}")


async def test_a_replay_stream_ends_as_token_expired_when_its_jwt_expires(
    strict_app: Application, keys: dict[str, SigningKey]
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{strict_app.port}") as channel:
        stub = events_pb2_grpc.EventLogServiceStub(channel)
        writer = keys["RS256"].sign(claims())
        await stub.AppendEvent(
            events_pb2.AppendEventRequest(run_id="r", input=started()),
            metadata=call_metadata(writer, "acme"),
        )
        short_lived = keys["EdDSA"].sign(claims(["acme:read"], lifetime=2))
        received, error = await stream_until_refused(
            stub.ReplayEvents(
                events_pb2.ReplayEventsRequest(run_id="r", follow=True),
                metadata=call_metadata(short_lived, "acme"),
            )
        )
    assert any(message.HasField("caught_up") for message in received)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(error).reason == "TOKEN_EXPIRED"


async def test_a_job_watch_ends_as_token_expired_when_its_jwt_expires(
    strict_app: Application, keys: dict[str, SigningKey]
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{strict_app.port}") as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        short_lived = keys["ES256"].sign(claims(["acme:read"], lifetime=2))
        received, error = await stream_until_refused(
            stub.WatchJobs(jobs_pb2.WatchJobsRequest(), metadata=call_metadata(short_lived, "acme"))
        )
    assert received[0].HasField("started")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(error).reason == "TOKEN_EXPIRED"


# -- the authenticator itself -----------------------------------------------------------


def authenticator(keys: dict[str, SigningKey]) -> JwtAuthenticator:
    verification = jwks_keys({"keys": [key.jwk() for key in keys.values()]})
    return JwtAuthenticator(verification, JwtRules(ISSUER, AUDIENCE, "permissions", 30))


def credentials(token: str) -> Credentials:
    return Credentials(token, lambda: {})


def test_a_verified_jwt_is_remembered_until_new_keys_are_put_in_force(
    keys: dict[str, SigningKey],
) -> None:
    source = authenticator(keys)
    token = keys["RS256"].sign(claims())
    first = source.authenticate(credentials(token))
    assert first is not None
    assert source.authenticate(credentials(token)) is first
    source.replace_keys(jwks_keys({"keys": [keys["ES256"].jwk()]}))
    with pytest.raises(Unauthenticated):
        source.authenticate(credentials(token))


def test_a_principal_from_a_jwt_is_named_after_its_subject_and_expires_with_it(
    keys: dict[str, SigningKey],
) -> None:
    payload = claims(["acme:read", "*:read"], subject="worker-7")
    principal = authenticator(keys).authenticate(credentials(keys["EdDSA"].sign(payload)))
    assert principal is not None
    assert principal.name == "jwt:worker-7"
    assert sorted(map(str, principal.permissions)) == ["*:read", "acme:read"]
    assert principal.expires_at == payload["exp"] + 30


def test_a_bearer_token_that_is_not_a_jwt_is_left_to_other_sources(
    keys: dict[str, SigningKey],
) -> None:
    assert authenticator(keys).authenticate(credentials("sk_static-token")) is None


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "symmetric"),
        ({"keys": []}, "holds no key"),
        ({"keys": [{"kty": "RSA", "alg": "RS384", "n": "x", "e": "AQAB"}]}, "holds no key"),
        ({"not": "a jwks"}, "JWKS"),
    ],
)
def test_a_jwks_without_a_usable_public_key_is_refused(document: Any, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        jwks_keys(document)


def test_a_jwks_holding_a_private_key_is_refused(keys: dict[str, SigningKey]) -> None:
    private = json_private_jwk(keys["RS256"])
    with pytest.raises(ValueError, match="private key"):
        jwks_keys({"keys": [private]})


def test_a_pem_file_holding_a_private_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = SigningKey.ec()
    path = tmp_path / "private.pem"
    path.write_bytes(
        key.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="private key"):
        read_verification_keys(path)


def json_private_jwk(key: SigningKey) -> dict[str, Any]:
    import json

    from jwt.algorithms import RSAAlgorithm

    private: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.private))
    return private
