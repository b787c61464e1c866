"""PostgreSQL going away and coming back: UNAVAILABLE meanwhile, recovery by itself after.

The database is reached through a loopback TCP proxy that the tests take
down (refusing connections and resetting open ones) and bring back.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from statekeeper.v1 import snapshots_pb2, snapshots_pb2_grpc
from statekeeper_server.errors import Unavailable
from statekeeper_server.notifier import Notifier
from statekeeper_server.stores import Store, open_store
from tests.harness import running_app
from tests.postgres_harness import TcpProxy, open_engine, schema_url
from tests.test_store_faults import assert_plain

NS = "default"
SNAPSHOT = snapshots_pb2.Snapshot(
    run_id="run-1", session_id="session-1", status=snapshots_pb2.RUN_STATUS_RUNNING
)
WAKE_TIMEOUT = 10.0
"""Generous bound on waiting for something that must happen (never a speed assertion)."""


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    async with TcpProxy().running() as started:
        yield started


@pytest.fixture
def proxied_url(postgres_url: str, proxy: TcpProxy) -> str:
    schema = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(postgres_url).query))["schema"]
    return schema_url(schema, port=proxy.port) + "&connect_timeout=2"


@pytest.fixture
async def proxied_store(proxied_url: str) -> AsyncIterator[Store]:
    opened = await open_store(proxied_url)
    try:
        yield opened
    finally:
        await opened.close()


async def test_calls_fail_with_unavailable_while_the_database_is_unreachable(
    proxied_store: Store, proxy: TcpProxy
) -> None:
    await proxied_store.snapshots.save(NS, SNAPSHOT, None)
    await proxy.stop()
    for call in (
        proxied_store.snapshots.load(NS, "run-1"),
        proxied_store.snapshots.save(NS, SNAPSHOT, None),
        proxied_store.ping(),
    ):
        with pytest.raises(Unavailable) as raised:
            await call
        assert raised.value.reason == "STORE_UNAVAILABLE"
        assert_plain(raised.value.message)


async def test_the_store_serves_again_by_itself_when_the_database_returns(
    proxied_store: Store, proxy: TcpProxy
) -> None:
    await proxied_store.snapshots.save(NS, SNAPSHOT, None)
    await proxy.stop()
    with pytest.raises(Unavailable):
        await proxied_store.ping()
    await proxy.start()
    await proxied_store.ping()
    loaded = snapshots_pb2.Snapshot.FromString(await proxied_store.snapshots.load(NS, "run-1"))
    assert loaded.version == 1
    saved = snapshots_pb2.Snapshot.FromString(await proxied_store.snapshots.save(NS, SNAPSHOT, 1))
    assert saved.version == 2


async def test_after_an_outage_every_watcher_is_woken_and_wake_ups_flow_again(
    postgres_url: str, proxied_url: str, proxy: TcpProxy
) -> None:
    notifier = Notifier()
    async with open_engine(proxied_url, None, notifier), open_engine(postgres_url) as direct:
        during_outage = notifier.watch(("events", NS, "run-1"))
        await proxy.stop()
        await proxy.start()
        await asyncio.wait_for(during_outage.wait(), WAKE_TIMEOUT)
        after = notifier.watch(("events", NS, "run-2"))
        async with direct.transaction() as tx:
            await tx.notify(("events", NS, "run-2"))
        await asyncio.wait_for(after.wait(), WAKE_TIMEOUT)


async def next_status(watch: AsyncIterable[health_pb2.HealthCheckResponse], wanted: int) -> None:
    """Read the health stream until it reports `wanted`."""
    async for reply in watch:
        if reply.status == wanted:
            return
    raise AssertionError("the health stream ended")


async def test_the_server_reports_not_serving_and_unavailable_then_recovers(
    proxied_url: str, proxy: TcpProxy
) -> None:
    async with (
        running_app(proxied_url, health_check_interval=0.05) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        snapshots = snapshots_pb2_grpc.SnapshotServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest())  # type: ignore[attr-defined]
        await asyncio.wait_for(
            next_status(watch, health_pb2.HealthCheckResponse.SERVING), WAKE_TIMEOUT
        )
        await proxy.stop()
        await asyncio.wait_for(
            next_status(watch, health_pb2.HealthCheckResponse.NOT_SERVING), WAKE_TIMEOUT
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await snapshots.SaveSnapshot(snapshots_pb2.SaveSnapshotRequest(snapshot=SNAPSHOT))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(raised.value) == "STORE_UNAVAILABLE"
        assert_plain(raised.value.details() or "")
        await proxy.start()
        await asyncio.wait_for(
            next_status(watch, health_pb2.HealthCheckResponse.SERVING), WAKE_TIMEOUT
        )
        reply = await snapshots.SaveSnapshot(snapshots_pb2.SaveSnapshotRequest(snapshot=SNAPSHOT))
        assert reply.snapshot.version == 1
        watch.cancel()


def error_reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return str(info.reason)


async def test_health_turns_not_serving_when_the_database_goes_silent(
    proxied_url: str, proxy: TcpProxy
) -> None:
    # Neither a new connection nor a statement gives up by itself before the check must.
    patient_url = proxied_url.replace("connect_timeout=2", "connect_timeout=60")
    async with (
        running_app(patient_url, health_check_interval=0.05) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest())  # type: ignore[attr-defined]
        await asyncio.wait_for(
            next_status(watch, health_pb2.HealthCheckResponse.SERVING), WAKE_TIMEOUT
        )
        proxy.silence()
        await asyncio.wait_for(
            next_status(watch, health_pb2.HealthCheckResponse.NOT_SERVING), WAKE_TIMEOUT
        )
        proxy.resume()
        await asyncio.wait_for(
            next_status(watch, health_pb2.HealthCheckResponse.SERVING), WAKE_TIMEOUT
        )
        watch.cancel()
