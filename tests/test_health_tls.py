"""`statekeeper health` against a TLS or mutual-TLS port."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.certificates import CertificateAuthority
from tests.harness import running_app


@dataclass
class Outcome:
    """What `statekeeper health` did: exit status and what it wrote."""

    returncode: int
    out: str
    err: str


async def health(port: int, *flags: str) -> Outcome:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "statekeeper_server", "health"),
        *("--target", f"127.0.0.1:{port}", "--timeout", "10", *flags),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return Outcome(process.returncode, out.decode(), err.decode())


class Files:
    """A server CA with a server certificate, a client CA and a client certificate."""

    def __init__(self, directory: Path, server_hosts: tuple[str, ...] = ("127.0.0.1",)) -> None:
        server_ca, client_ca = CertificateAuthority("server CA"), CertificateAuthority("client CA")
        self.server_ca = str(server_ca.write(directory, "server-ca"))
        self.client_ca = str(client_ca.write(directory, "client-ca"))
        cert, key = server_ca.issue_server(server_hosts).write(directory, "server")
        self.server = {"tls_cert": str(cert), "tls_key": str(key)}
        cert, key = client_ca.issue_client("probe").write(directory, "probe")
        self.client = ("--tls-cert", str(cert), "--tls-key", str(key))


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


async def test_health_speaks_tls_trusting_the_given_ca(files: Files) -> None:
    async with running_app("memory:", **files.server) as app:
        outcome = await health(app.port, "--tls-ca", files.server_ca)
    assert (outcome.returncode, outcome.out.strip()) == (0, "SERVING")


async def test_plaintext_health_fails_against_a_tls_port(files: Files) -> None:
    async with running_app("memory:", **files.server) as app:
        outcome = await health(app.port)
    assert outcome.returncode == 1
    assert outcome.err.startswith("UNAVAILABLE")


async def test_health_with_a_client_certificate_passes_mutual_tls(files: Files) -> None:
    async with running_app("memory:", **files.server, tls_client_ca=files.client_ca) as app:
        outcome = await health(app.port, "--tls-ca", files.server_ca, *files.client)
    assert (outcome.returncode, outcome.out.strip()) == (0, "SERVING")


async def test_health_without_a_client_certificate_fails_mutual_tls(files: Files) -> None:
    async with running_app("memory:", **files.server, tls_client_ca=files.client_ca) as app:
        outcome = await health(app.port, "--tls-ca", files.server_ca)
    assert outcome.returncode == 1
    assert outcome.err.startswith("UNAVAILABLE")


async def test_health_checks_the_certificate_for_the_server_name_given(tmp_path: Path) -> None:
    named = Files(tmp_path, server_hosts=("statekeeper.internal",))
    async with running_app("memory:", **named.server) as app:
        by_address = await health(app.port, "--tls-ca", named.server_ca)
        by_name = await health(
            app.port, "--tls-ca", named.server_ca, "--tls-server-name", "statekeeper.internal"
        )
    assert by_address.returncode == 1
    assert (by_name.returncode, by_name.out.strip()) == (0, "SERVING")


async def test_a_client_certificate_without_its_key_is_a_usage_error(files: Files) -> None:
    outcome = await health(1, "--tls-cert", files.client[1])
    assert outcome.returncode == 2
    assert "--tls-cert and --tls-key go together" in outcome.err


async def test_a_ca_file_that_cannot_be_read_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.crt"
    outcome = await health(1, "--tls-ca", str(missing))
    assert outcome.returncode == 2
    assert f"cannot read {missing}: No such file or directory" in outcome.err
    assert "Traceback" not in outcome.err
