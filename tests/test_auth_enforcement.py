"""Access control end to end: every RPC is refused without the right credentials, role
and namespace, before anything reaches the store; allowed calls work as before."""

from __future__ import annotations

import datetime
import logging
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from statekeeper.v1 import (
    events_pb2,
    events_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    snapshots_pb2,
    snapshots_pb2_grpc,
)
from statekeeper_server.app import Application
from statekeeper_server.auth.interceptor import Access, requirement
from statekeeper_server.auth.roles import Role
from tests.auth_support import CALLS, Call, TokenSpec, call_metadata, make_call, write_tokens
from tests.harness import running_app
from tests.rpc_errors import error_info
from tests.test_events_store import custom, started
from tests.test_snapshots_store import snapshot

# Access control is what these tests are about: each server has its own.
pytestmark = pytest.mark.own_access_control

PAST = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
TOKENS: dict[str, TokenSpec] = {
    "acme-reader": ["acme:read"],
    "acme-writer": ["acme:write"],
    "acme-admin": ["acme:admin"],
    "acme-and-globex": ["acme:write", "globex:read"],
    "operator": ["*:admin"],
    "expired": (["*:admin"], PAST),
}


@pytest.fixture
def tokens_file(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "tokens.toml"
    return path, write_tokens(path, TOKENS)


@pytest.fixture
def tokens(tokens_file: tuple[Path, dict[str, str]]) -> dict[str, str]:
    return tokens_file[1]


@pytest.fixture
async def app(tokens_file: tuple[Path, dict[str, str]]) -> AsyncIterator[Application]:
    async with running_app("memory:", auth_tokens_file=str(tokens_file[0])) as running:
        yield running


@pytest.fixture
async def store_app(
    store_url: str, tokens_file: tuple[Path, dict[str, str]]
) -> AsyncIterator[Application]:
    async with running_app(store_url, auth_tokens_file=str(tokens_file[0])) as running:
        yield running


@pytest.fixture
async def channel(app: Application) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as opened:
        yield opened


@pytest.fixture
async def store_channel(store_app: Application) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{store_app.port}") as opened:
        yield opened


async def refusal(
    channel: grpc.aio.Channel, call: Call, metadata: tuple[object, ...]
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await make_call(channel, call, metadata)
    return caught.value


async def status_of(
    channel: grpc.aio.Channel, call: Call, metadata: tuple[object, ...]
) -> grpc.StatusCode:
    """The status `call` ends with (OK when it succeeds)."""
    try:
        await make_call(channel, call, metadata)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


# -- every RPC --------------------------------------------------------------------------


async def test_every_rpc_without_credentials_is_unauthenticated(
    channel: grpc.aio.Channel,
) -> None:
    for call in CALLS:
        error = await refusal(channel, call, call_metadata(namespace="acme"))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, call.path
        assert error_info(error).reason == "UNAUTHENTICATED", call.path
        assert "authorization: Bearer" in (error.details() or "")


async def test_every_rpc_with_an_unknown_token_is_unauthenticated_without_saying_more(
    channel: grpc.aio.Channel,
) -> None:
    for call in CALLS:
        for token in ["sk_not-a-token-this-server-made", "garbage"]:
            error = await refusal(channel, call, call_metadata(token, "acme"))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, call.path
            assert error_info(error).reason == "UNAUTHENTICATED"
            assert error.details() == "the bearer token is not valid"


async def test_every_rpc_with_an_expired_token_is_unauthenticated_as_token_expired(
    channel: grpc.aio.Channel, tokens: dict[str, str]
) -> None:
    for call in CALLS:
        error = await refusal(channel, call, call_metadata(tokens["expired"], "acme"))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, call.path
        assert error_info(error).reason == "TOKEN_EXPIRED", call.path


async def test_every_rpc_in_a_namespace_the_token_does_not_name_is_permission_denied(
    channel: grpc.aio.Channel, tokens: dict[str, str]
) -> None:
    # The request is empty, so invalid: the refusal comes before the request is checked.
    for call in CALLS:
        error = await refusal(channel, call, call_metadata(tokens["acme-admin"], "globex"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, call.path
        info = error_info(error)
        assert info.reason == "PERMISSION_DENIED"
        assert dict(info.metadata) == {"namespace": "globex", "required_role": call.role.label}


@pytest.mark.parametrize(
    ("holder", "denied_role"), [("acme-reader", Role.WRITE), ("acme-writer", Role.ADMIN)]
)
async def test_every_rpc_needing_a_higher_role_than_granted_is_permission_denied(
    channel: grpc.aio.Channel, tokens: dict[str, str], holder: str, denied_role: Role
) -> None:
    needing_more = [call for call in CALLS if call.role >= denied_role]
    assert needing_more
    for call in needing_more:
        error = await refusal(channel, call, call_metadata(tokens[holder], "acme"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, call.path
        assert error_info(error).metadata["required_role"] == call.role.label


async def test_every_rpc_within_the_granted_role_gets_past_access_control(
    channel: grpc.aio.Channel, tokens: dict[str, str]
) -> None:
    # An empty request is invalid for most RPCs: what matters is that the refusal, if
    # any, is the servicer's own and not access control's.
    for call in CALLS:
        code = await status_of(channel, call, call_metadata(tokens["acme-admin"], "acme"))
        assert code not in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
        ), call.path


async def test_an_authorization_header_of_another_scheme_is_unauthenticated(
    channel: grpc.aio.Channel, tokens: dict[str, str]
) -> None:
    stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.LoadSnapshot(
            snapshots_pb2.LoadSnapshotRequest(run_id="r"),
            metadata=(("authorization", f"Basic {tokens['operator']}"),),
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in (caught.value.details() or "")


# -- what tokens allow ------------------------------------------------------------------


async def test_a_read_token_can_replay_a_run_but_not_append_to_it(
    store_channel: grpc.aio.Channel, tokens: dict[str, str]
) -> None:
    stub = events_pb2_grpc.EventLogServiceStub(store_channel)
    writer = call_metadata(tokens["acme-writer"], "acme")
    reader = call_metadata(tokens["acme-reader"], "acme")
    await stub.AppendEvent(
        events_pb2.AppendEventRequest(run_id="r", input=started()), metadata=writer
    )
    await stub.AppendEvent(
        events_pb2.AppendEventRequest(run_id="r", input=custom()), metadata=writer
    )

    replay = stub.ReplayEvents(events_pb2.ReplayEventsRequest(run_id="r"), metadata=reader)
    seqs = [
        envelope.seq
        async for message in replay
        if message.HasField("batch")
        for envelope in message.batch.envelopes
    ]
    assert seqs == [1, 2]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AppendEvent(
            events_pb2.AppendEventRequest(run_id="r", input=custom()), metadata=reader
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).metadata["required_role"] == "write"


async def test_a_token_for_acme_can_neither_read_nor_write_globex_and_writes_nothing(
    store_channel: grpc.aio.Channel, tokens: dict[str, str]
) -> None:
    snapshots = snapshots_pb2_grpc.SnapshotServiceStub(store_channel)
    events = events_pb2_grpc.EventLogServiceStub(store_channel)
    jobs = jobs_pb2_grpc.JobServiceStub(store_channel)
    acme_in_globex = call_metadata(tokens["acme-admin"], "globex")
    attempts: list[Awaitable[object]] = [
        snapshots.SaveSnapshot(
            snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot("r")), metadata=acme_in_globex
        ),
        snapshots.LoadSnapshot(
            snapshots_pb2.LoadSnapshotRequest(run_id="r"), metadata=acme_in_globex
        ),
        events.AppendEvent(
            events_pb2.AppendEventRequest(run_id="r", input=started()), metadata=acme_in_globex
        ),
        events.ListRuns(events_pb2.ListRunsRequest(), metadata=acme_in_globex),
        jobs.EnqueueJob(
            jobs_pb2.EnqueueJobRequest(job=jobs_pb2.JobSpec(queue="q", kind="k")),
            metadata=acme_in_globex,
        ),
    ]
    for attempt in attempts:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await attempt
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    operator = call_metadata(tokens["operator"], "globex")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await snapshots.LoadSnapshot(
            snapshots_pb2.LoadSnapshotRequest(run_id="r"), metadata=operator
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    runs = await events.ListRuns(events_pb2.ListRunsRequest(), metadata=operator)
    assert list(runs.runs) == []
    listed = await jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=operator)
    assert list(listed.jobs) == []


async def test_a_principal_of_one_namespace_may_leave_the_namespace_header_out(
    store_channel: grpc.aio.Channel, tokens: dict[str, str]
) -> None:
    stub = snapshots_pb2_grpc.SnapshotServiceStub(store_channel)
    await stub.SaveSnapshot(
        snapshots_pb2.SaveSnapshotRequest(snapshot=snapshot("r")),
        metadata=call_metadata(tokens["acme-writer"]),
    )
    loaded = await stub.LoadSnapshot(
        snapshots_pb2.LoadSnapshotRequest(run_id="r"),
        metadata=call_metadata(tokens["operator"], "acme"),
    )
    assert loaded.snapshot.run_id == "r"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.LoadSnapshot(
            snapshots_pb2.LoadSnapshotRequest(run_id="r"),
            metadata=call_metadata(tokens["operator"], "default"),
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_principal_of_several_namespaces_must_name_one(
    channel: grpc.aio.Channel, tokens: dict[str, str]
) -> None:
    stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.LoadSnapshot(
            snapshots_pb2.LoadSnapshotRequest(run_id="r"),
            metadata=call_metadata(tokens["acme-and-globex"]),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).metadata["namespace"] == "default"
    assert "x-statekeeper-namespace" in (caught.value.details() or "")


async def test_an_invalid_namespace_header_is_still_invalid_argument(
    channel: grpc.aio.Channel, tokens: dict[str, str]
) -> None:
    stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.LoadSnapshot(
            snapshots_pb2.LoadSnapshotRequest(run_id="r"),
            metadata=call_metadata(tokens["operator"], "../etc"),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- open services ----------------------------------------------------------------------


async def test_health_answers_without_credentials(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest())  # type: ignore[attr-defined]
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def list_services(channel: grpc.aio.Channel, token: str | None = None) -> list[str]:
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
        metadata=call_metadata(token),
    )
    async for response in responses:
        return [service.name for service in response.list_services_response.service]
    return []


async def test_reflection_is_open_by_default(channel: grpc.aio.Channel) -> None:
    assert "statekeeper.v1.EventLogService" in await list_services(channel)


async def test_reflection_can_require_credentials(
    tokens_file: tuple[Path, dict[str, str]],
) -> None:
    path, tokens = tokens_file
    async with (
        running_app("memory:", auth_tokens_file=str(path), reflection="authenticated") as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await list_services(channel)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "statekeeper.v1.JobService" in await list_services(channel, tokens["acme-reader"])


async def test_reflection_can_be_turned_off(tokens_file: tuple[Path, dict[str, str]]) -> None:
    path, tokens = tokens_file
    async with (
        running_app("memory:", auth_tokens_file=str(path), reflection="off") as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await list_services(channel, tokens["operator"])
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


# -- audit ------------------------------------------------------------------------------


async def test_a_denied_call_is_audited_with_principal_namespace_method_and_peer(
    channel: grpc.aio.Channel, tokens: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.DeleteSnapshot(
            snapshots_pb2.DeleteSnapshotRequest(run_id="r"),
            metadata=call_metadata(tokens["acme-reader"], "acme"),
        )
    [line] = [r.getMessage() for r in caplog.records if r.name == "statekeeper.audit"]
    assert line.startswith(
        "denied /statekeeper.v1.SnapshotService/DeleteSnapshot PERMISSION_DENIED"
    )
    assert 'principal="token:acme-reader" namespace="acme" peer=ipv' in line


async def test_a_destructive_admin_call_is_audited_with_its_outcome(
    channel: grpc.aio.Channel, tokens: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    stub = events_pb2_grpc.EventLogServiceStub(channel)
    await stub.DeleteRun(
        events_pb2.DeleteRunRequest(run_id="r"), metadata=call_metadata(tokens["operator"], "acme")
    )
    [line] = [r.getMessage() for r in caplog.records if r.name == "statekeeper.audit"]
    assert line.startswith("admin call /statekeeper.v1.EventLogService/DeleteRun OK")
    assert 'principal="token:operator" namespace="acme"' in line


async def test_no_token_ever_reaches_the_log(
    channel: grpc.aio.Channel, tokens: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for token in [*tokens.values(), "sk_made-up-token"]:
        for namespace in ["acme", "globex"]:
            for call in CALLS:
                await status_of(channel, call, call_metadata(token, namespace))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "denied" in logged
    for token in [*tokens.values(), "sk_made-up-token"]:
        assert token not in logged


@pytest.mark.parametrize(
    ("method", "reflection_open", "expected"),
    [
        ("/grpc.health.v1.Health/Check", False, Access.OPEN),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True, Access.OPEN),
        (
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            False,
            Access.AUTHENTICATED,
        ),
        ("/other.v1.Service/Method", True, Access.AUTHENTICATED),
        ("/statekeeper.v1.EventLogService/TruncateRun", True, Role.ADMIN),
    ],
)
def test_only_health_and_open_reflection_need_no_credentials(
    method: str, reflection_open: bool, expected: Access | Role
) -> None:
    assert requirement(method, reflection_open) == expected
