"""TLS and mutual TLS on the gRPC port: who can connect, rotation, unusable files."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import statekeeper
from statekeeper.v1 import snapshots_pb2
from statekeeper_server.config import Settings
from statekeeper_server.tls import TlsError, TlsFiles, read_certificate_configuration
from tests.certificates import CertificateAuthority
from tests.harness import ServerProcess, running_app

SERVING = health_pb2.HealthCheckResponse.SERVING


class Pki:
    """A server CA and its server certificate, and a client CA, as files in one folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.server_ca = CertificateAuthority("server CA")
        self.client_ca = CertificateAuthority("client CA")
        self.cert, self.key = self.server_ca.issue_server().write(directory, "server")
        self.client_ca_path = self.client_ca.write(directory, "client-ca")

    def settings(self, *, mutual: bool = False) -> dict[str, object]:
        """The settings of a server using these files (requiring client certificates
        signed by the client CA with `mutual`)."""
        tls: dict[str, object] = {"tls_cert": str(self.cert), "tls_key": str(self.key)}
        if mutual:
            tls["tls_client_ca"] = str(self.client_ca_path)
        return tls


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def trusting(
    ca: CertificateAuthority, client: CertificateAuthority | None = None
) -> grpc.ChannelCredentials:
    """Channel credentials trusting `ca`, with a certificate issued by `client` if given."""
    issued = client.issue_client("alice") if client is not None else None
    return grpc.ssl_channel_credentials(
        ca.cert_pem,
        issued.key_pem if issued else None,
        issued.cert_pem if issued else None,
    )


async def health(port: int, credentials: grpc.ChannelCredentials | None) -> int:
    """The server's overall health over a new connection (plaintext without credentials)."""
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials)
    )
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    return reply.status


async def refused(port: int, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """The status a call gets over a new connection the server does not accept."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health(port, credentials)
    return caught.value.code()


def snapshot() -> snapshots_pb2.Snapshot:
    return snapshots_pb2.Snapshot(
        run_id="run-1", session_id="session-1", status=snapshots_pb2.RUN_STATUS_RUNNING
    )


async def test_a_tls_port_serves_a_client_that_trusts_its_ca(pki: Pki) -> None:
    async with (
        running_app("memory:", **pki.settings()) as app,
        statekeeper.AsyncClient(
            f"127.0.0.1:{app.port}", root_certificates=pki.server_ca.cert_pem
        ) as client,
    ):
        saved = await client.snapshots.save(snapshot())
        assert await client.snapshots.load("run-1") == saved


async def test_a_tls_port_refuses_a_plaintext_client(pki: Pki) -> None:
    async with running_app("memory:", **pki.settings()) as app:
        assert await refused(app.port, None) == grpc.StatusCode.UNAVAILABLE


async def test_a_client_that_does_not_trust_the_servers_ca_cannot_connect(pki: Pki) -> None:
    async with running_app("memory:", **pki.settings()) as app:
        stranger = CertificateAuthority("another CA")
        assert await refused(app.port, trusting(stranger)) == grpc.StatusCode.UNAVAILABLE


async def test_without_a_client_ca_a_tls_port_accepts_clients_without_certificates(
    pki: Pki,
) -> None:
    async with running_app("memory:", **pki.settings()) as app:
        assert await health(app.port, trusting(pki.server_ca)) == SERVING


async def test_mutual_tls_refuses_a_client_without_a_certificate(pki: Pki) -> None:
    async with running_app("memory:", **pki.settings(mutual=True)) as app:
        assert await refused(app.port, trusting(pki.server_ca)) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_refuses_a_certificate_signed_by_another_ca(pki: Pki) -> None:
    async with running_app("memory:", **pki.settings(mutual=True)) as app:
        stranger = CertificateAuthority("another CA")
        credentials = trusting(pki.server_ca, client=stranger)
        assert await refused(app.port, credentials) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_accepts_a_certificate_signed_by_the_client_ca(pki: Pki) -> None:
    cert, key = pki.client_ca.issue_client("alice").write(pki.directory, "alice")
    async with (
        running_app("memory:", **pki.settings(mutual=True)) as app,
        statekeeper.AsyncClient(
            f"127.0.0.1:{app.port}",
            root_certificates=pki.server_ca.write(pki.directory, "server-ca"),
            client_cert=cert,
            client_key=key,
        ) as client,
    ):
        saved = await client.snapshots.save(snapshot())
        assert await client.snapshots.load("run-1") == saved


async def test_after_reload_new_connections_get_the_rotated_certificate(pki: Pki) -> None:
    async with running_app("memory:", **pki.settings()) as app:
        assert await health(app.port, trusting(pki.server_ca)) == SERVING
        successor = CertificateAuthority("next server CA")
        successor.issue_server().write(pki.directory, "server")
        await app.reload()
        assert await health(app.port, trusting(successor)) == SERVING
        assert await refused(app.port, trusting(pki.server_ca)) == grpc.StatusCode.UNAVAILABLE


async def test_files_changed_without_a_reload_are_not_used(pki: Pki) -> None:
    async with running_app("memory:", **pki.settings()) as app:
        CertificateAuthority("next server CA").issue_server().write(pki.directory, "server")
        assert await health(app.port, trusting(pki.server_ca)) == SERVING


async def test_after_reload_client_certificates_must_be_signed_by_the_new_client_ca(
    pki: Pki,
) -> None:
    async with running_app("memory:", **pki.settings(mutual=True)) as app:
        successor = CertificateAuthority("next client CA")
        successor.write(pki.directory, "client-ca")
        await app.reload()
        assert await health(app.port, trusting(pki.server_ca, client=successor)) == SERVING
        previous = trusting(pki.server_ca, client=pki.client_ca)
        assert await refused(app.port, previous) == grpc.StatusCode.UNAVAILABLE


async def test_a_reload_with_a_key_that_does_not_match_keeps_the_certificate_in_use(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_app("memory:", **pki.settings()) as app:
        successor = CertificateAuthority("next server CA")
        pki.key.write_bytes(successor.issue_server().key_pem)
        await app.reload()
        assert await health(app.port, trusting(pki.server_ca)) == SERVING
    assert "keeping the TLS files in use" in caplog.text
    assert "is not the key of the certificate" in caplog.text


def test_no_tls_settings_mean_a_plaintext_port() -> None:
    assert TlsFiles.from_settings(Settings(store="memory:")) is None


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"tls_cert": "server.crt"}, "--tls-cert needs --tls-key"),
        ({"tls_key": "server.key"}, "--tls-key needs --tls-cert"),
        ({"tls_client_ca": "ca.crt"}, "--tls-client-ca needs --tls-cert and --tls-key"),
    ],
)
def test_incomplete_tls_settings_are_refused(given: dict[str, str], message: str) -> None:
    with pytest.raises(TlsError, match=message):
        TlsFiles.from_settings(Settings(store="memory:", **given))  # type: ignore[arg-type]


def files(pki: Pki, **changes: Path) -> TlsFiles:
    return TlsFiles(
        **{"cert": pki.cert, "key": pki.key, "client_ca": pki.client_ca_path, **changes}
    )


def test_files_that_can_serve_are_read(pki: Pki) -> None:
    read_certificate_configuration(files(pki))


def test_a_missing_file_is_named_with_its_flag(pki: Pki) -> None:
    missing = pki.directory / "missing.crt"
    with pytest.raises(TlsError, match=f"cannot read --tls-cert {missing}: No such file"):
        read_certificate_configuration(files(pki, cert=missing))


def test_an_unreadable_file_is_named_with_its_flag(pki: Pki) -> None:
    with pytest.raises(TlsError, match=f"cannot read --tls-key {pki.directory}"):
        read_certificate_configuration(files(pki, key=pki.directory))


@pytest.mark.parametrize("flag", ["cert", "client_ca"])
def test_a_certificate_file_without_a_pem_certificate_is_refused(pki: Pki, flag: str) -> None:
    junk = pki.directory / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    option = "--tls-" + flag.replace("_", "-")
    with pytest.raises(TlsError, match=f"{option} {junk} holds no PEM certificate"):
        read_certificate_configuration(files(pki, **{flag: junk}))


def test_a_key_file_without_a_usable_key_is_refused(pki: Pki) -> None:
    with pytest.raises(TlsError, match=f"--tls-key {pki.cert} holds no usable private key"):
        read_certificate_configuration(files(pki, key=pki.cert))


def test_a_key_that_is_not_the_certificates_is_refused(pki: Pki) -> None:
    _, other_key = pki.server_ca.issue_server().write(pki.directory, "other")
    with pytest.raises(TlsError, match="is not the key of the certificate in --tls-cert"):
        read_certificate_configuration(files(pki, key=other_key))


def test_serve_with_unusable_tls_files_exits_with_a_message_and_no_traceback(
    pki: Pki,
) -> None:
    missing = pki.directory / "missing.key"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "statekeeper_server", "serve"),
            *("--store", "memory:", "--listen", "127.0.0.1:0"),
            *("--tls-cert", str(pki.cert), "--tls-key", str(missing)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"cannot start: cannot read --tls-key {missing}: No such file" in result.stderr
    assert "Traceback" not in result.stderr


async def test_sighup_gives_new_connections_the_rotated_certificate(pki: Pki) -> None:
    server = ServerProcess("memory:", "--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    server.start()
    try:
        assert await health(server.port, trusting(pki.server_ca)) == SERVING
        successor = CertificateAuthority("next server CA")
        successor.issue_server().write(pki.directory, "server")
        assert await refused(server.port, trusting(successor)) == grpc.StatusCode.UNAVAILABLE
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        # The reload runs beside the calls: wait (bounded) until a new connection sees it.
        for _ in range(100):
            with contextlib.suppress(grpc.aio.AioRpcError):
                if await health(server.port, trusting(successor)) == SERVING:
                    break
            await asyncio.sleep(0.1)
        assert await health(server.port, trusting(successor)) == SERVING
    finally:
        server.stop()
