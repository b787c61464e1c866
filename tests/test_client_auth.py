"""The client's token against the real server's static tokens, over plaintext and TLS."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import statekeeper
from statekeeper.events import custom_event
from statekeeper.v1 import events_pb2, snapshots_pb2
from tests.certificates import CertificateAuthority
from tests.harness import running_app

# Access control is what these tests are about: each server has its own.
pytestmark = pytest.mark.own_access_control

TOKEN = "sk_writer-of-acme"
OTHER_TOKEN = "sk_someone-else"


SHORT_LIVED_TOKEN = "sk_acme-for-two-seconds"


def entry(name: str, token: str, expires: datetime.datetime | None = None) -> dict[str, object]:
    """A tokens-file entry letting `token` write namespace acme (until `expires`)."""
    fields: dict[str, object] = {
        "name": name,
        "sha256": hashlib.sha256(token.encode()).hexdigest(),
        "permissions": ["acme:write"],
    }
    if expires is not None:
        fields["expires"] = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    return fields


@pytest.fixture
def tokens_file(tmp_path: Path) -> str:
    """A tokens file in which TOKEN may write namespace acme, and SHORT_LIVED_TOKEN
    may for two seconds from now."""
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
    entries = [entry("acme-writer", TOKEN), entry("acme-briefly", SHORT_LIVED_TOKEN, soon)]
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": entries}))
    return str(path)


def snapshot() -> snapshots_pb2.Snapshot:
    return snapshots_pb2.Snapshot(
        run_id="run-1", session_id="session-1", status=snapshots_pb2.RUN_STATUS_RUNNING
    )


async def test_a_client_with_a_listed_token_is_served(tokens_file: str) -> None:
    async with (
        running_app("memory:", auth_tokens_file=tokens_file) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}", namespace="acme", token=TOKEN) as client,
    ):
        saved = await client.snapshots.save(snapshot())
        assert await client.snapshots.load("run-1") == saved


async def test_a_client_without_a_token_is_unauthenticated(tokens_file: str) -> None:
    async with (
        running_app("memory:", auth_tokens_file=tokens_file) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}", namespace="acme") as client,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.snapshots.load("run-1")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_token_from_the_environment_is_used(
    tokens_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATEKEEPER_TOKEN", TOKEN)
    async with running_app("memory:", auth_tokens_file=tokens_file) as app:
        monkeypatch.setenv("STATEKEEPER_TARGET", f"127.0.0.1:{app.port}")
        async with statekeeper.AsyncClient(namespace="acme") as client:
            saved = await client.snapshots.save(snapshot())
    assert saved.version == 1


async def test_a_callable_token_is_asked_for_each_call(tokens_file: str) -> None:
    tokens: Iterator[str] = iter([TOKEN, OTHER_TOKEN])
    async with (
        running_app("memory:", auth_tokens_file=tokens_file) as app,
        statekeeper.AsyncClient(
            f"127.0.0.1:{app.port}", namespace="acme", token=lambda: next(tokens)
        ) as client,
    ):
        await client.snapshots.save(snapshot())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.snapshots.load("run-1")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_token_travels_over_tls(tokens_file: str, tmp_path: Path) -> None:
    ca = CertificateAuthority()
    cert, key = ca.issue_server().write(tmp_path, "server")
    async with (
        running_app(
            "memory:", auth_tokens_file=tokens_file, tls_cert=str(cert), tls_key=str(key)
        ) as app,
        statekeeper.AsyncClient(
            f"127.0.0.1:{app.port}", namespace="acme", token=TOKEN, root_certificates=ca.cert_pem
        ) as client,
    ):
        saved = await client.snapshots.save(snapshot())
    assert saved.version == 1


async def test_a_follower_whose_token_expires_resumes_with_a_fresh_one(tokens_file: str) -> None:
    tokens = iter([SHORT_LIVED_TOKEN, TOKEN])
    resumed = asyncio.Event()

    def fresh_token() -> str:
        token = next(tokens, TOKEN)
        if token == TOKEN:
            resumed.set()
        return token

    async with running_app("memory:", auth_tokens_file=tokens_file) as app:
        target = f"127.0.0.1:{app.port}"
        async with (
            statekeeper.AsyncClient(target, namespace="acme", token=TOKEN) as writer,
            statekeeper.AsyncClient(target, namespace="acme", token=fresh_token) as follower,
        ):
            await writer.events.append("run-1", custom_event("step"))

            async def finish_once_resumed() -> None:
                await asyncio.wait_for(resumed.wait(), 30)
                completed = events_pb2.AgentEvent(run_completed=events_pb2.RunCompleted())
                await writer.events.append("run-1", completed)

            finishing = asyncio.create_task(finish_once_resumed())
            seqs = [envelope.seq async for envelope in follower.events.replay("run-1")]
            await finishing
    assert seqs == [1, 2]
