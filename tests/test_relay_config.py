"""Relays declared at start (`--relay`): created unless they exist, refused with a clear
message when wrong or defined otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

import statekeeper
from statekeeper.v1 import events_pb2
from statekeeper_server.app import Application
from statekeeper_server.config import Settings
from statekeeper_server.publish.relay_config import RelayConfigError, parse_relay
from statekeeper_server.publish.sinks import Sinks, parse_sinks
from tests.brokers import REDIS_URL, redis_keys
from tests.harness import data_file, running_app
from tests.waiting import until_async

STARTED = events_pb2.AgentEvent(run_started=events_pb2.RunStarted(session_id="session-1"))
SINKS = Sinks(parse_sinks([f"audit={REDIS_URL}"], "protobuf"))


async def test_a_relay_declared_at_start_forwards_the_namespace(store_url: str) -> None:
    async with (
        redis_keys() as (redis, prefix),
        running_app(
            store_url,
            sink=[f"audit={REDIS_URL}?stream={prefix}"],
            relay=["agents=audit?namespace=acme&run_id_prefix=agent-&event_kinds=run_started"],
        ) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}", namespace="acme") as client,
    ):
        [relay] = [relay async for relay in client.relays.list()]
        await client.events.append("agent-1", STARTED)
        await client.events.append("tool-1", STARTED)

        async def forwarded() -> bool:
            return int(await redis.xlen(prefix)) == 1

        await until_async(forwarded, "the declared relay forwarded the agent's event")
    assert (relay.name, relay.sink, relay.run_id_prefix) == ("agents", "audit", "agent-")
    assert list(relay.event_kinds) == ["run_started"]


async def test_a_relay_declared_again_at_restart_keeps_its_position(tmp_path: Path) -> None:
    async with redis_keys() as (redis, prefix):
        settings = {"sink": [f"audit={REDIS_URL}?stream={prefix}"], "relay": ["all=audit"]}
        for run_id in ("run-1", "run-2"):
            async with (
                running_app(data_file(tmp_path), **settings) as app,
                statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
            ):
                await client.events.append(run_id, STARTED)

                async def caught_up() -> bool:
                    return (await client.relays.get("all")).status.lag_events == 0

                await until_async(caught_up, "the relay caught up")
        entries = await redis.xrange(prefix)
    assert [fields[b"run_id"] for _, fields in entries] == [b"run-1", b"run-2"]


async def test_a_relay_defined_otherwise_under_its_name_stops_the_start(tmp_path: Path) -> None:
    url = data_file(tmp_path)
    sinks = [f"audit={REDIS_URL}"]
    async with running_app(url, sink=sinks, relay=["all=audit"]):
        pass
    app = Application(
        Settings(
            listen="127.0.0.1:0",
            store=url,
            http_listen="",
            sink=sinks,
            relay=["all=audit?run_id_prefix=x"],
        )
    )
    with pytest.raises(RelayConfigError, match="relay all of default: relay all exists"):
        await app.start()


@pytest.mark.parametrize(
    ("definition", "complaint"),
    [
        ("audit", "must be NAME=SINK"),
        ("../x=audit", "relay ../x: name: must be"),
        ("all=kafka", "relay all: sink: names no sink of the server; sinks: audit"),
        ("all=audit?topic=x", "unknown option 'topic'"),
        ("all=audit?event_kinds=custom,tool_called", "event_kinds[1]: must be one of"),
        ("all=audit?namespace=*", "relay all: namespace: must be"),
    ],
)
def test_a_wrong_relay_definition_is_refused_naming_the_relay(
    definition: str, complaint: str
) -> None:
    with pytest.raises(RelayConfigError) as raised:
        parse_relay(definition, SINKS)
    assert complaint in str(raised.value)
