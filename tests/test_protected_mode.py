"""Safe by default: no serving beyond this host without authentication, unless told so;
auth settings that cannot work are refused with a message naming the flag."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from statekeeper_server.app import Application
from statekeeper_server.auth.exposure import ExposedWithoutAuth, is_local_address
from statekeeper_server.config import Settings
from tests.auth_support import write_tokens


@pytest.mark.parametrize(
    "listen",
    ["127.0.0.1:50051", "127.0.0.2:0", "localhost:50051", "[::1]:50051", "unix:/tmp/sk.sock"],
)
def test_loopback_addresses_and_unix_sockets_are_local(listen: str) -> None:
    assert is_local_address(listen)


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:50051", "[::]:50051", ":50051", "10.1.2.3:50051", "statekeeper:50051"]
)
def test_every_other_address_is_reachable_from_the_network(listen: str) -> None:
    assert not is_local_address(listen)


async def test_a_server_on_a_network_address_without_authentication_refuses_to_start() -> None:
    app = Application(Settings(listen="0.0.0.0:0", store="memory:", http_listen=""))  # type: ignore[call-arg]
    with pytest.raises(ExposedWithoutAuth, match="--insecure-no-auth"):
        await app.start()


async def test_insecure_no_auth_lets_a_server_serve_a_network_address() -> None:
    app = Application(
        Settings(  # type: ignore[call-arg]
            listen="0.0.0.0:0",
            store="memory:",
            insecure_no_auth=True,
            grace_period=0.1,
            http_listen="127.0.0.1:0",
        )
    )
    await app.start()
    assert app.port > 0
    await app.stop()


async def test_a_server_with_authentication_serves_a_network_address(tmp_path: Path) -> None:
    write_tokens(tmp_path / "tokens.toml", {"ci": ["acme:read"]})
    app = Application(
        Settings(  # type: ignore[call-arg]
            listen="0.0.0.0:0",
            store="memory:",
            auth_tokens_file=str(tmp_path / "tokens.toml"),
            grace_period=0.1,
            http_listen="127.0.0.1:0",
        )
    )
    await app.start()
    assert app.port > 0
    await app.stop()


def test_the_command_refuses_to_serve_a_network_address_without_authentication() -> None:
    process = subprocess.run(
        [sys.executable, "-m", "statekeeper_server", "serve", "--listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 1
    assert "refusing to listen on 0.0.0.0:0 without authentication" in process.stderr
    assert "--auth-tokens-file" in process.stderr


def test_the_flag_insecure_no_auth_takes_no_value() -> None:
    process = subprocess.run(
        [sys.executable, "-m", "statekeeper_server", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert "--insecure-no-auth " in process.stdout
    assert "--insecure-no-auth INSECURE_NO_AUTH" not in process.stdout


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"reflection": "authenticated"}, "--reflection=authenticated needs authentication"),
        ({"auth_jwt_issuer": "https://issuer"}, "--auth-jwt-issuer needs --auth-jwt-keys"),
        ({"auth_jwt_audience": "statekeeper"}, "--auth-jwt-audience needs --auth-jwt-keys"),
    ],
)
def test_auth_settings_that_cannot_work_are_refused(
    settings: dict[str, str], complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        Settings(**settings)  # type: ignore[arg-type]


def test_the_command_names_the_flag_of_a_setting_it_refuses() -> None:
    process = subprocess.run(
        [sys.executable, "-m", "statekeeper_server", "serve", "--auth-jwt-leeway", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 2
    assert process.stderr.startswith("statekeeper serve: --auth-jwt-leeway: ")
    assert "Traceback" not in process.stderr
