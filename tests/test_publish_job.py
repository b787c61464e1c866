"""The built-in job `statekeeper.publish_event`: one event to a configured sink, with the
queue's retries, against the real NATS JetStream and Redis of the machine."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import json_format

import statekeeper
from statekeeper.events import custom_event
from statekeeper.jobs import PUBLISH_EVENT_KIND, job_spec
from statekeeper.v1 import events_pb2, jobs_pb2
from statekeeper_server.publish.messages import JSON_CONTENT_TYPE, PROTOBUF_CONTENT_TYPE
from tests.brokers import NATS_URL, REDIS_URL, gate, jetstream_stream, redis_keys
from tests.harness import running_app
from tests.rpc_errors import bad_request_fields
from tests.test_jobs_builtin import finished

RUN = "run-1"
STARTED = events_pb2.AgentEvent(run_started=events_pb2.RunStarted(session_id="session-1"))


async def test_a_job_publishes_its_event_once_to_a_jetstream_subject(store_url: str) -> None:
    async with (
        jetstream_stream() as stream,
        running_app(
            store_url,
            sink=[f"events={NATS_URL}?subject={stream.prefix}.{{namespace}}.{{run_id}}.{{kind}}"],
        ) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        job = await client.jobs.publish_event(
            "events", RUN, event=custom_event("billing.charged", {"usd": 3})
        )
        done = await finished(client, job.job_id)
        [message] = await stream.messages()
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert message.subject == f"{stream.prefix}.default.{RUN}.custom"
    envelope = events_pb2.EventEnvelope.FromString(message.data or b"")
    assert (envelope.run_id, envelope.event_id, envelope.seq) == (RUN, job.job_id, 0)
    assert envelope.event.custom.data["usd"] == 3
    assert message.headers is not None
    assert message.headers["Nats-Msg-Id"] == job.job_id
    assert message.headers["Content-Type"] == PROTOBUF_CONTENT_TYPE
    assert (message.headers["namespace"], message.headers["run_id"]) == ("default", RUN)
    assert done.result["event_id"] == job.job_id


async def test_a_job_publishes_a_stored_envelope_to_a_redis_stream_as_json(
    store_url: str,
) -> None:
    async with (
        redis_keys() as (redis, prefix),
        running_app(
            store_url, sink=[f"audit={REDIS_URL}?stream={prefix}:{{run_id}}&format=json&maxlen=50"]
        ) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        stored = await client.events.append(RUN, STARTED)
        job = await client.jobs.publish_event("audit", RUN, seq=1)
        done = await finished(client, job.job_id)
        [(_, fields)] = await redis.xrange(f"{prefix}:{RUN}")
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert fields[b"event_id"] == stored.event_id.encode()
    assert (fields[b"seq"], fields[b"run_id"], fields[b"namespace"]) == (b"1", b"run-1", b"default")
    assert fields[b"content_type"] == JSON_CONTENT_TYPE.encode()
    published = json_format.Parse(fields[b"data"], events_pb2.EventEnvelope())
    assert published == stored


async def test_a_job_whose_broker_is_down_is_retried_and_delivers_once_it_is_back() -> None:
    async with (
        redis_keys() as (redis, prefix),
        gate(REDIS_URL) as redis_gate,
        running_app(
            "memory:",
            job_sweep_interval=0.05,
            sink=[f"out=redis://127.0.0.1:{redis_gate.port}/0?stream={prefix}&timeout=0.5"],
        ) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        await redis_gate.close()
        job = await client.jobs.publish_event(
            "out", RUN, event=STARTED, retry_backoff_base=0.1, retry_backoff_cap=0.2
        )
        async for change in client.jobs.watch(job_ids=[job.job_id], after_change_id=0):
            if change.state == jobs_pb2.JOB_STATE_SCHEDULED:
                break
        assert await redis.xlen(prefix) == 0
        await redis_gate.open()
        done = await finished(client, job.job_id)
        entries = await redis.xrange(prefix)
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert done.attempt >= 2
    assert "sink out" in done.errors[0].message
    assert [fields[b"event_id"] for _, fields in entries] == [job.job_id.encode()]


async def test_a_message_the_broker_refuses_for_good_makes_the_job_dead_with_the_reason() -> None:
    async with (
        redis_keys() as (redis, prefix),
        running_app("memory:", sink=[f"out={REDIS_URL}?stream={prefix}"]) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        await redis.set(prefix, "not a stream")
        job = await client.jobs.publish_event("out", RUN, event=STARTED)
        dead = await finished(client, job.job_id)
    assert (dead.state, dead.attempt) == (jobs_pb2.JOB_STATE_DEAD, 1)
    assert "WRONGTYPE" in dead.errors[0].message


async def test_a_job_on_a_jetstream_stream_refusing_the_size_is_dead() -> None:
    async with (
        jetstream_stream(max_msg_size=64) as stream,
        running_app(
            "memory:", sink=[f"events={NATS_URL}?subject={stream.prefix}.{{run_id}}"]
        ) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        job = await client.jobs.publish_event(
            "events", RUN, event=custom_event("big", {"text": "x" * 500})
        )
        dead = await finished(client, job.job_id)
        assert await stream.messages() == []
    assert (dead.state, dead.attempt) == (jobs_pb2.JOB_STATE_DEAD, 1)
    assert "JetStream refused" in dead.errors[0].message


@pytest.fixture
async def client() -> AsyncIterator[statekeeper.AsyncClient]:
    async with (
        running_app("memory:", sink=[f"events={NATS_URL}"]) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as connected,
    ):
        yield connected


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"sink": "nowhere", "run_id": RUN, "seq": 1}, "job.payload.sink"),
        ({"run_id": RUN, "seq": 1}, "job.payload.sink"),
        ({"sink": "events", "seq": 1}, "job.payload.run_id"),
        ({"sink": "events", "run_id": RUN}, "job.payload.event"),
        ({"sink": "events", "run_id": RUN, "seq": 1.5}, "job.payload.seq"),
        ({"sink": "events", "run_id": RUN, "seq": 0}, "job.payload.seq"),
        ({"sink": "events", "run_id": RUN, "event": {"nonsense": 1}}, "job.payload.event"),
        ({"sink": "events", "run_id": RUN, "seq": 1, "topic": "x"}, "job.payload.topic"),
    ],
)
async def test_an_invalid_publish_payload_is_refused_at_enqueue_naming_the_field(
    client: statekeeper.AsyncClient, payload: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        await client.jobs.enqueue_many([job_spec(PUBLISH_EVENT_KIND, payload, queue="")])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(raised.value) == [field.replace("job.", "jobs[0].")]
