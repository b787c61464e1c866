"""Static tokens: `statekeeper token create`, the tokens file, and re-reading it while
serving (on SIGHUP and when it changes), keeping the previous version when a new one is bad."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import json
import logging
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest

from statekeeper.v1 import snapshots_pb2, snapshots_pb2_grpc
from statekeeper_server.auth.tokens import TOKEN_PREFIX, parse_expiry, parse_tokens
from statekeeper_server.cli import main
from statekeeper_server.compat import tomllib
from tests.auth_support import call_metadata, write_tokens
from tests.harness import ServerProcess, running_app
from tests.waiting import ENOUGH, POLL, until

# Access control is what these tests are about: each server has its own.
pytestmark = pytest.mark.own_access_control

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DIGEST = "ab" * 32


def create_token(*args: str) -> tuple[int, str, str]:
    """Run `statekeeper token create ARGS`: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["token", "create", *args])
    return status, out.getvalue(), err.getvalue()


def printed_parts(out: str) -> tuple[str, str]:
    """The token and the entry `token create` printed."""
    lines = out.splitlines()
    token = lines[1]
    entry = "\n".join(lines[lines.index("") + 2 :])
    return token, entry


async def load(port: int, token: str) -> grpc.StatusCode:
    """The status of a LoadSnapshot in namespace acme made with `token`."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
        try:
            await stub.LoadSnapshot(
                snapshots_pb2.LoadSnapshotRequest(run_id="r"),
                metadata=call_metadata(token, "acme"),
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def eventually(port: int, token: str, expected: grpc.StatusCode) -> None:
    """Return once a call with `token` ends with `expected`; fail if it never does."""
    for _ in range(int(ENOUGH / POLL)):
        if await load(port, token) == expected:
            return
        await asyncio.sleep(POLL)
    raise AssertionError(f"never: a call ending {expected.name}")


# -- token create -----------------------------------------------------------------------


def test_token_create_prints_a_new_token_and_an_entry_holding_only_its_digest() -> None:
    status, out, _ = create_token("--name", "ci", "--permission", "acme:write")
    assert status == 0
    token, entry = printed_parts(out)
    assert token.startswith(TOKEN_PREFIX)
    assert token not in entry
    [parsed] = parse_tokens(tomllib.loads(entry))
    assert parsed.principal.name == "token:ci"
    assert sorted(map(str, parsed.principal.permissions)) == ["acme:write"]


def test_token_create_makes_a_different_token_each_time() -> None:
    first = printed_parts(create_token("--name", "a", "--permission", "acme:read")[1])[0]
    second = printed_parts(create_token("--name", "a", "--permission", "acme:read")[1])[0]
    assert first != second


def test_token_create_prints_a_json_entry_with_its_expiry() -> None:
    status, out, _ = create_token(
        "--name", "ci", "--permission", "*:read", "--expires", "2099-01-02", "--format", "json"
    )
    assert status == 0
    entry = json.loads(printed_parts(out)[1])
    assert entry["expires"] == "2099-01-02T00:00:00Z"
    [parsed] = parse_tokens({"tokens": [entry]})
    assert parsed.principal.expires_at == datetime.datetime(2099, 1, 2, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--name", "ci"], "at least one --permission"),
        (["--name", "ci", "--permission", "acme:owner"], "unknown role"),
        (["--name", "../ci", "--permission", "acme:read"], "--name must be"),
        (["--name", "ci", "--permission", "acme:read", "--expires", "soon"], "duration"),
    ],
)
def test_token_create_refuses_what_the_file_would_refuse(args: list[str], complaint: str) -> None:
    status, out, err = create_token(*args)
    assert status == 2
    assert out == ""
    assert complaint in err


async def test_a_token_made_by_token_create_authenticates_once_its_entry_is_in_the_file(
    tmp_path: Path,
) -> None:
    _, out, _ = create_token("--name", "ci", "--permission", "acme:read")
    token, entry = printed_parts(out)
    path = tmp_path / "tokens.toml"
    path.write_text(entry + "\n")
    async with running_app("memory:", auth_tokens_file=str(path)) as app:
        assert await load(app.port, token) == grpc.StatusCode.NOT_FOUND


async def test_token_create_adds_its_entry_to_a_file_and_prints_only_the_token(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens.toml"
    tokens = []
    for name in ("ci", "ops"):
        status, out, _ = create_token(
            "--name", name, "--permission", "acme:read", "--add-to", str(path)
        )
        assert status == 0
        tokens.append(out.strip())
    assert [entry.principal.name for entry in parse_tokens(tomllib.loads(path.read_text()))] == [
        "token:ci",
        "token:ops",
    ]
    assert not any(token in path.read_text() for token in tokens)
    async with running_app("memory:", auth_tokens_file=str(path)) as app:
        for token in tokens:
            assert await load(app.port, token) == grpc.StatusCode.NOT_FOUND


def test_token_create_adds_to_a_json_tokens_file_as_json(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    for name in ("a", "b"):
        assert create_token("--name", name, "--permission", "*:read", "--add-to", str(path))[0] == 0
    names = [entry.principal.name for entry in parse_tokens(json.loads(path.read_text()))]
    assert names == ["token:a", "token:b"]


def test_token_create_leaves_a_file_it_cannot_read_as_a_tokens_file_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text("not = [valid")
    status, out, err = create_token("--name", "a", "--permission", "*:read", "--add-to", str(path))
    assert (status, out) == (2, "")
    assert "--add-to" in err
    assert path.read_text() == "not = [valid"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", NOW + datetime.timedelta(days=90)),
        ("1w2d12h", NOW + datetime.timedelta(days=9, hours=12)),
        ("30m", NOW + datetime.timedelta(minutes=30)),
        ("2026-12-31", datetime.datetime(2026, 12, 31, tzinfo=UTC)),
        ("2026-12-31T08:00:00+02:00", datetime.datetime(2026, 12, 31, 6, tzinfo=UTC)),
    ],
)
def test_an_expiry_is_a_duration_or_a_date(text: str, expected: datetime.datetime) -> None:
    assert parse_expiry(text, NOW) == expected


def test_an_expiry_in_the_past_is_refused() -> None:
    with pytest.raises(ValueError, match="not in the future"):
        parse_expiry("2020-01-01", NOW)


# -- the file ---------------------------------------------------------------------------


def entry(**fields: Any) -> dict[str, Any]:
    return {"name": "ci", "sha256": DIGEST, "permissions": ["acme:read"], **fields}


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ({"tokens": [entry(sha256="not-hex")]}, r"tokens\[0\] \(ci\): sha256 must be"),
        ({"tokens": [entry(permissions=[])]}, r"tokens\[0\] \(ci\): permissions must be"),
        ({"tokens": [entry(permissions=["acme"])]}, r"tokens\[0\] \(ci\): permission 'acme'"),
        ({"tokens": [entry(name="a b")]}, r"tokens\[0\] \(a b\): name must be"),
        ({"tokens": [entry(token="sk_x")]}, r"unknown key 'token'"),
        ({"tokens": [entry(expires="2026-01-01T00:00:00")]}, r"expires must be .* time zone"),
        (
            {"tokens": [entry(), entry(sha256="cd" * 32)]},
            r"tokens\[1\] \(ci\): another entry has the same name",
        ),
        (
            {"tokens": [entry(), entry(name="cd")]},
            r"tokens\[1\] \(cd\): another entry has the same sha256",
        ),
        ({"token": []}, r"must hold only a `tokens` list"),
    ],
)
def test_a_malformed_tokens_file_names_the_entry_and_what_is_wrong(
    document: Any, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_tokens(document)


async def test_a_json_tokens_file_works_as_a_toml_one(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    tokens = write_tokens(path, {"ci": ["acme:read"]})
    async with running_app("memory:", auth_tokens_file=str(path)) as app:
        assert await load(app.port, tokens["ci"]) == grpc.StatusCode.NOT_FOUND


def test_a_tokens_file_that_cannot_be_used_stops_the_start_saying_why(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text('[[tokens]]\nname = "ci"\nsha256 = "nope"\npermissions = ["acme:read"]\n')
    with pytest.raises(RuntimeError, match=r"--auth-tokens-file .*tokens\[0\] \(ci\): sha256"):
        ServerProcess("memory:", "--auth-tokens-file", str(path)).start()


# -- reloading --------------------------------------------------------------------------


async def test_a_token_added_to_the_file_is_accepted_once_the_file_changes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens.toml"
    old = write_tokens(path, {"old": ["acme:read"]})
    async with running_app("memory:", auth_tokens_file=str(path), auth_reload_interval=0.05) as app:
        new = write_tokens(path, {"new": ["acme:read"]})
        await eventually(app.port, new["new"], grpc.StatusCode.NOT_FOUND)
        assert await load(app.port, old["old"]) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_bad_tokens_file_keeps_the_previous_one_and_logs_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="statekeeper.auth")
    path = tmp_path / "tokens.toml"
    tokens = write_tokens(path, {"ci": ["acme:read"]})
    async with running_app("memory:", auth_tokens_file=str(path), auth_reload_interval=0.05) as app:
        path.write_text("[[tokens]\nname = ")
        await until(
            lambda: any("keeping the version in force" in r.message for r in caplog.records),
            "the bad file is refused",
        )
        assert await load(app.port, tokens["ci"]) == grpc.StatusCode.NOT_FOUND
        await app.reload()
        assert await load(app.port, tokens["ci"]) == grpc.StatusCode.NOT_FOUND
    [line, *_] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "--auth-tokens-file" in line
    assert "is not valid TOML" in line


async def test_a_token_removed_from_the_file_is_refused_after_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    tokens = write_tokens(path, {"ci": ["acme:read"]})
    async with running_app("memory:", auth_tokens_file=str(path), auth_reload_interval=3600) as app:
        assert await load(app.port, tokens["ci"]) == grpc.StatusCode.NOT_FOUND
        write_tokens(path, {"other": ["acme:read"]})
        await app.reload()
        assert await load(app.port, tokens["ci"]) == grpc.StatusCode.UNAUTHENTICATED


async def test_sighup_re_reads_the_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    write_tokens(path, {"old": ["acme:read"]})
    server = ServerProcess(
        "memory:", "--auth-tokens-file", str(path), "--auth-reload-interval", "3600"
    ).start()
    try:
        new = write_tokens(path, {"new": ["acme:read"]})
        assert await load(server.port, new["new"]) == grpc.StatusCode.UNAUTHENTICATED
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        await eventually(server.port, new["new"], grpc.StatusCode.NOT_FOUND)
    finally:
        server.stop()
