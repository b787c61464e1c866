"""Mutual TLS alone authenticates: a certificate's subject CN or SAN maps to permissions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from pydantic import ValidationError

from statekeeper.v1 import snapshots_pb2, snapshots_pb2_grpc
from statekeeper_server.app import Application
from statekeeper_server.auth.mtls import parse_certificate_permissions
from statekeeper_server.config import Settings
from tests.auth_support import call_metadata, write_tokens
from tests.certificates import CertificateAuthority, Issued
from tests.harness import running_app
from tests.rpc_errors import error_info
from tests.test_snapshots_store import snapshot

# Access control is what these tests are about: each server has its own.
pytestmark = pytest.mark.own_access_control

PERMISSIONS = {
    "worker.acme.internal": ["acme:write"],
    "spiffe://acme/dashboard": ["acme:read"],
    "ops@acme.example": ["*:admin"],
}


@dataclass
class Pki:
    """A CA that signs both the server's certificate and the clients'."""

    ca: CertificateAuthority
    server_files: dict[str, str]
    permissions_file: Path
    tokens: dict[str, str]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority()
    cert, key = ca.issue_server().write(tmp_path, "server")
    permissions = tmp_path / "mtls.json"
    permissions.write_text(json.dumps(PERMISSIONS))
    tokens_file = tmp_path / "tokens.toml"
    tokens = write_tokens(tokens_file, {"globex-writer": ["globex:write"]})
    return Pki(
        ca=ca,
        server_files={
            "tls_cert": str(cert),
            "tls_key": str(key),
            "tls_client_ca": str(ca.write(tmp_path)),
            "auth_mtls_permissions": str(permissions),
            "auth_tokens_file": str(tokens_file),
        },
        permissions_file=permissions,
        tokens=tokens,
    )


@pytest.fixture
async def app(pki: Pki, store_url: str) -> AsyncIterator[Application]:
    async with running_app(store_url, **pki.server_files) as running:
        yield running


def channel_as(app: Application, pki: Pki, client: Issued) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_pem,
        private_key=client.key_pem,
        certificate_chain=client.cert_pem,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{app.port}", credentials)


async def save(channel: grpc.aio.Channel, namespace: str | None, token: str | None = None) -> None:
    stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
    await stub.SaveSnapshot(
        snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot("r")),
        metadata=call_metadata(token, namespace),
    )


async def test_a_certificate_whose_common_name_is_mapped_gets_its_permissions(
    app: Application, pki: Pki
) -> None:
    async with channel_as(app, pki, pki.ca.issue_client("worker.acme.internal")) as channel:
        await save(channel, "acme")
        await save(channel, None)  # one namespace: the header may be left out
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await save(channel, "globex")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    "names",
    [{"uris": ["spiffe://acme/dashboard"]}, {"emails": ["ops@acme.example"]}],
    ids=["uri", "email"],
)
async def test_a_certificate_whose_alternative_name_is_mapped_gets_its_permissions(
    app: Application, pki: Pki, names: dict[str, list[str]]
) -> None:
    client = pki.ca.issue_client("unmapped-cn", **names)  # type: ignore[arg-type]
    granted = PERMISSIONS[next(iter(names.values()))[0]]
    async with channel_as(app, pki, client) as channel:
        stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
        reply = await stub.ListSnapshots(
            snapshots_pb2.ListSnapshotsRequest(), metadata=call_metadata(namespace="acme")
        )
        assert list(reply.snapshots) == []
        if granted == ["acme:read"]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await save(channel, "acme")
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        else:
            await save(channel, "globex")


async def test_a_certificate_with_no_mapped_name_is_unauthenticated(
    app: Application, pki: Pki
) -> None:
    client = pki.ca.issue_client("stranger", dns_names=["stranger.example"])
    async with channel_as(app, pki, client) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await save(channel, "acme")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(caught.value).reason == "UNAUTHENTICATED"
    assert "certificate" in (caught.value.details() or "")


async def test_a_bearer_token_on_a_mutual_tls_connection_decides_alone(
    app: Application, pki: Pki
) -> None:
    async with channel_as(app, pki, pki.ca.issue_client("worker.acme.internal")) as channel:
        await save(channel, "globex", pki.tokens["globex-writer"])
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await save(channel, "acme", pki.tokens["globex-writer"])
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await save(channel, "acme", "sk_unknown")
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_certificate_name_added_to_the_file_is_granted_after_a_reload(
    app: Application, pki: Pki
) -> None:
    client = pki.ca.issue_client("late.acme.internal")
    async with channel_as(app, pki, client) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await save(channel, "acme")
        pki.permissions_file.write_text(
            json.dumps({**PERMISSIONS, "late.acme.internal": ["acme:write"]})
        )
        await app.reload()
        await save(channel, "acme")


def test_certificate_permissions_without_client_certificates_are_refused() -> None:
    with pytest.raises(ValidationError, match="--auth-mtls-permissions needs --tls-client-ca"):
        Settings(auth_mtls_permissions="mtls.toml")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ({"worker": "acme:write"}, "must be a list"),
        ({"worker": ["acme:owner"]}, "unknown role"),
        (["worker"], "must map"),
    ],
)
def test_a_malformed_certificate_permissions_file_says_what_is_wrong(
    document: object, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_certificate_permissions(document)
