"""The HTTP side port (`--http-listen`) of real servers, over real HTTP: /metrics (formats
and access control), /livez, /readyz (draining, store outage), and turning it off."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

import statekeeper
from statekeeper.events import custom_event
from statekeeper.v1 import events_pb2, events_pb2_grpc
from statekeeper_server.app import Application
from statekeeper_server.auth.exposure import ExposedWithoutAuth
from statekeeper_server.auth.permissions import Permission, Principal
from statekeeper_server.auth.roles import Capability, Role
from statekeeper_server.config import Settings
from tests.auth_support import AUDIENCE, ISSUER, SigningKey, claims, write_jwks, write_tokens
from tests.harness import ServerProcess, running_app
from tests.metrics_scrape import Metrics, get_metrics, http_get, scrape
from tests.private_postgres import private_postgres
from tests.test_events_store import custom
from tests.waiting import until_async

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@pytest.fixture
async def app() -> AsyncIterator[Application]:
    async with running_app("memory:") as running:
        yield running


# -- probes -----------------------------------------------------------------------------


async def test_livez_answers_200_while_the_process_runs(app: Application) -> None:
    answer = await http_get(app.http_port, "/livez")
    assert (answer.status, answer.body) == (200, "ok\n")


async def test_readyz_answers_200_while_the_server_serves(app: Application) -> None:
    answer = await http_get(app.http_port, "/readyz")
    assert (answer.status, answer.body) == (200, "ready\n")


async def test_ready_is_1_in_the_metrics_while_the_server_serves(app: Application) -> None:
    assert (await scrape(app.http_port)).value("statekeeper_ready") == 1


async def test_unknown_paths_are_404(app: Application) -> None:
    assert (await http_get(app.http_port, "/metrics/extra")).status == 404
    assert (await http_get(app.http_port, "/no/such/page")).status == 404


async def test_only_get_and_head_are_allowed(app: Application) -> None:
    assert (await http_get(app.http_port, "/livez", method="HEAD")).status == 200
    refused = await http_get(app.http_port, "/livez", method="POST")
    assert refused.status == 405
    assert refused.headers["allow"] == "GET,HEAD"


# -- /metrics formats -------------------------------------------------------------------


async def test_metrics_are_prometheus_text_by_default(app: Application) -> None:
    answer = await get_metrics(app.http_port)
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert Metrics(answer.body).value("statekeeper_build_info") == 1


async def test_metrics_are_openmetrics_when_the_scraper_asks_for_it(app: Application) -> None:
    answer = await get_metrics(app.http_port, headers={"Accept": OPENMETRICS})
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.body.endswith("# EOF\n")


# -- readiness follows draining and the store -------------------------------------------


async def test_readyz_is_503_while_the_server_drains_after_sigterm(tmp_path: Path) -> None:
    server = ServerProcess("memory:", "--grace-period", "60").start()
    try:
        async with statekeeper.AsyncClient(server.target) as client:
            # A replay its reader does not read holds the drain open: its messages wait
            # for room in the connection's flow-control windows.
            event = custom_event("big", {"pad": "x" * 60_000})
            for _ in range(10):
                await client.events.append_many("run-1", [event] * 30)
            stub = events_pb2_grpc.EventLogServiceStub(client.channel)
            stalled: Any = stub.ReplayEvents(events_pb2.ReplayEventsRequest(run_id="run-1"))
            assert await stalled.read() is not grpc.aio.EOF
            assert (await http_get(server.http_port, "/readyz")).status == 200
            assert server.process is not None
            server.process.terminate()
            answers: list[Any] = []

            async def not_ready() -> bool:
                answers.append(await http_get(server.http_port, "/readyz"))
                return bool(answers[-1].status == 503)

            await until_async(not_ready, "/readyz answers 503 while draining")
            assert answers[-1].body == "not ready: draining for shutdown\n"
            assert (await scrape(server.http_port)).value("statekeeper_ready") == 0
            assert (await http_get(server.http_port, "/livez")).status == 200
            stalled.cancel()
        assert await asyncio.to_thread(server.process.wait, 30) == 0
    finally:
        server.stop()


async def test_readyz_is_503_once_the_postgres_store_stops_answering() -> None:
    with private_postgres() as postgres:
        url = postgres.url("sk_ready") + "&connect_timeout=2"
        async with running_app(url, health_check_interval=0.1) as app:
            assert (await http_get(app.http_port, "/readyz")).status == 200
            postgres.stop()
            answers: list[Any] = []

            async def not_ready() -> bool:
                answers.append(await http_get(app.http_port, "/readyz"))
                return bool(answers[-1].status == 503)

            await until_async(not_ready, "/readyz answers 503 with the store down")
            assert answers[-1].body == "not ready: the store does not answer\n"
            assert (await scrape(app.http_port)).value("statekeeper_ready") == 0


# -- /metrics access control ------------------------------------------------------------


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, str]:
    return write_tokens(
        tmp_path / "tokens.toml",
        {"scraper": ["*:metrics"], "writer": ["*:write"], "admin": ["*:admin"]},
    )


@pytest.fixture
async def guarded(tmp_path: Path, tokens: dict[str, str]) -> AsyncIterator[Application]:
    async with running_app("memory:", auth_tokens_file=str(tmp_path / "tokens.toml")) as app:
        yield app


@pytest.mark.own_access_control
async def test_metrics_without_a_token_are_401_when_access_control_is_on(
    guarded: Application,
) -> None:
    answer = await http_get(guarded.http_port, "/metrics")
    assert answer.status == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert "statekeeper_" not in answer.body


@pytest.mark.own_access_control
async def test_metrics_with_an_unknown_token_are_401(guarded: Application) -> None:
    answer = await get_metrics(guarded.http_port, "sk_not-a-token")
    assert (answer.status, answer.body) == (401, "the bearer token is not valid\n")


@pytest.mark.own_access_control
async def test_metrics_with_a_token_lacking_the_permission_are_403(
    guarded: Application, tokens: dict[str, str]
) -> None:
    answer = await get_metrics(guarded.http_port, tokens["writer"])
    assert answer.status == 403
    assert "*:metrics" in answer.body


@pytest.mark.own_access_control
@pytest.mark.parametrize("holder", ["scraper", "admin"])
async def test_metrics_answer_a_token_granting_metrics_or_admin(
    guarded: Application, tokens: dict[str, str], holder: str
) -> None:
    metrics = await scrape(guarded.http_port, tokens[holder])
    assert metrics.value("statekeeper_build_info") == 1


@pytest.mark.own_access_control
async def test_probes_stay_open_when_access_control_is_on(guarded: Application) -> None:
    assert (await http_get(guarded.http_port, "/livez")).status == 200
    assert (await http_get(guarded.http_port, "/readyz")).status == 200


@pytest.mark.own_access_control
async def test_metrics_public_serves_metrics_without_a_token(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    async with running_app(
        "memory:", auth_tokens_file=str(tmp_path / "tokens.toml"), metrics_public=True
    ) as app:
        answer = await http_get(app.http_port, "/metrics")
    assert answer.status == 200


@pytest.mark.own_access_control
async def test_a_metrics_token_makes_no_grpc_call(
    guarded: Application, tokens: dict[str, str]
) -> None:
    async with statekeeper.AsyncClient(f"127.0.0.1:{guarded.port}") as client:
        stub = events_pb2_grpc.EventLogServiceStub(client.channel)
        metadata = (("authorization", f"Bearer {tokens['scraper']}"),)
        for namespace in ((), (("x-statekeeper-namespace", "acme"),)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListEvents(
                    events_pb2.ListEventsRequest(run_id="run-1"), metadata=metadata + namespace
                )
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.own_access_control
async def test_a_jwt_granting_metrics_may_scrape(tmp_path: Path) -> None:
    key = SigningKey.ec("k1")
    write_jwks(tmp_path / "jwks.json", [key])
    async with running_app(
        "memory:",
        auth_jwt_keys=str(tmp_path / "jwks.json"),
        auth_jwt_issuer=ISSUER,
        auth_jwt_audience=AUDIENCE,
    ) as app:
        allowed = await get_metrics(app.http_port, key.sign(claims(["*:metrics"])))
        refused = await get_metrics(app.http_port, key.sign(claims(["acme:read"])))
    assert (allowed.status, refused.status) == (200, 403)


def test_metrics_is_a_permission_of_the_whole_server_only() -> None:
    assert Permission.parse("*:metrics") == Permission("*", Capability.METRICS)
    with pytest.raises(ValueError, match=r"write \*:metrics"):
        Permission.parse("acme:metrics")


@pytest.mark.parametrize(
    ("permissions", "may_scrape"),
    [(["*:metrics"], True), (["*:admin"], True), (["acme:admin"], False), (["*:write"], False)],
)
def test_only_metrics_or_admin_everywhere_grants_scraping(
    permissions: list[str], may_scrape: bool
) -> None:
    assert Principal.of("p", permissions).holds(Capability.METRICS) is may_scrape


def test_the_metrics_permission_grants_no_role() -> None:
    principal = Principal.of("p", ["*:metrics"])
    assert not principal.has_roles
    assert not any(principal.allows("acme", role) for role in Role)


def test_the_metrics_permission_leaves_a_sole_namespace_alone() -> None:
    assert Principal.of("p", ["acme:write", "*:metrics"]).sole_namespace == "acme"


# -- where it listens, and turning it off -----------------------------------------------


async def test_an_empty_http_listen_turns_the_side_port_off() -> None:
    async with running_app("memory:", http_listen="") as app:
        assert app.http_port == 0
        assert app.http_address == ""


async def test_a_server_without_the_side_port_counts_no_calls(app: Application) -> None:
    labels = {"grpc_method": "AppendEvent", "grpc_code": "OK"}
    before = await scrape(app.http_port)
    async with (
        running_app("memory:", http_listen="") as dark,
        statekeeper.AsyncClient(f"127.0.0.1:{dark.port}") as client,
    ):
        stub = events_pb2_grpc.EventLogServiceStub(client.channel)
        await stub.AppendEvent(events_pb2.AppendEventRequest(run_id="run-1", input=custom()))
    after = await scrape(app.http_port)
    assert after.value("grpc_server_handled_total", **labels) == before.value(
        "grpc_server_handled_total", **labels
    )


def test_serve_with_an_empty_http_listen_opens_no_side_port() -> None:
    server = ServerProcess("memory:", "--http-listen", "").start()
    try:
        assert server.http_port == 0
        assert not any("HTTP side port" in line for line in server.startup_log)
    finally:
        server.stop()


def test_serve_prints_the_side_port_it_bound() -> None:
    server = ServerProcess("memory:").start()
    try:
        assert server.http_port > 0
        assert f"HTTP side port listening on 127.0.0.1:{server.http_port}\n" in server.startup_log
    finally:
        server.stop()


async def test_a_side_port_already_in_use_stops_the_start_naming_the_flag() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = Application(
            Settings(listen="127.0.0.1:0", store="memory:", http_listen=f"127.0.0.1:{port}")  # type: ignore[call-arg]
        )
        with pytest.raises(OSError, match=f"cannot listen on --http-listen 127.0.0.1:{port}"):
            await app.start()
        assert app.http_port == 0
    with socket.socket() as grpc_port:
        grpc_port.bind(("127.0.0.1", app.port))  # the gRPC port was released


def test_an_http_listen_that_is_not_host_and_port_is_refused() -> None:
    with pytest.raises(ValidationError, match="must be HOST:PORT"):
        Settings(http_listen="9464")  # type: ignore[call-arg]


@pytest.mark.own_access_control
async def test_a_network_side_port_serving_metrics_to_anyone_refuses_to_start() -> None:
    app = Application(Settings(store="memory:", listen="127.0.0.1:0", http_listen="0.0.0.0:0"))  # type: ignore[call-arg]
    with pytest.raises(ExposedWithoutAuth, match=r"--http-listen 0\.0\.0\.0:0"):
        await app.start()


@pytest.mark.own_access_control
async def test_a_network_side_port_with_public_metrics_refuses_to_start(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        store="memory:",
        listen="127.0.0.1:0",
        http_listen="0.0.0.0:0",
        auth_tokens_file=str(tmp_path / "tokens.toml"),
        metrics_public=True,
    )
    with pytest.raises(ExposedWithoutAuth, match="--metrics-public"):
        await Application(settings).start()


@pytest.mark.own_access_control
@pytest.mark.parametrize("opening", ["auth", "insecure_no_auth"])
async def test_a_network_side_port_serves_with_auth_or_insecure_no_auth(
    tmp_path: Path, tokens: dict[str, str], opening: str
) -> None:
    given: dict[str, Any] = (
        {"auth_tokens_file": str(tmp_path / "tokens.toml")}
        if opening == "auth"
        else {"insecure_no_auth": True}
    )
    async with running_app("memory:", http_listen="0.0.0.0:0", **given) as app:
        assert (await http_get(app.http_port, "/livez")).status == 200


@pytest.mark.own_access_control
def test_serve_names_the_flag_when_it_refuses_a_network_side_port() -> None:
    process = subprocess.run(
        [
            *(sys.executable, "-m", "statekeeper_server", "serve", "--store", "memory:"),
            *("--listen", "127.0.0.1:0", "--http-listen", "0.0.0.0:0"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 1
    assert "refusing to serve /metrics on --http-listen 0.0.0.0:0" in process.stderr
