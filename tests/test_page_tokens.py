"""Page tokens: whatever a caller sends as `page_token` is a position or INVALID_ARGUMENT.

The unit tests forge tokens against `decode_page_token` itself; the
end-to-end tests send forged tokens to every list call of a real server on
every store, each forged with the digest of that call's own filters, so that
every check behind the digest is reached.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

import statekeeper
from statekeeper.v1 import (
    checkpoints_pb2,
    checkpoints_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    snapshots_pb2,
    snapshots_pb2_grpc,
)
from statekeeper_server.errors import InvalidArgument
from statekeeper_server.limits import MAX_PAGE_TOKEN_LENGTH
from statekeeper_server.stores import checkpoints, events, jobs, snapshots
from statekeeper_server.stores.paging import (
    MAX_POSITION,
    decode_page_token,
    encode_page_token,
    filters_digest,
)
from tests.harness import running_app
from tests.rpc_errors import bad_request_fields

FILTERS = {"list": "things", "queue": "emails"}


def raw_token(text: str) -> str:
    """A token holding `text` as its JSON, encoded as the server encodes its own."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def forged(position: str, filters: dict[str, object]) -> str:
    """A token with the right digest for `filters` and `position` as raw JSON text."""
    return raw_token(f'{{"f":{json.dumps(filters_digest(filters))},"p":{position}}}')


def refused(token: str, position_type: type[int] | type[str] = int) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, FILTERS, position_type)
    assert caught.value.field == "page_token"
    return caught.value


# -- the rules of a token --------------------------------------------------------------------


def test_a_token_gives_back_the_position_it_was_made_with() -> None:
    assert decode_page_token(encode_page_token(MAX_POSITION, FILTERS), FILTERS, int) == MAX_POSITION
    assert decode_page_token(encode_page_token("run-7", FILTERS), FILTERS, str) == "run-7"


def test_an_empty_token_is_the_first_page() -> None:
    assert decode_page_token("", FILTERS, int) is None


def test_a_token_longer_than_the_limit_is_refused_before_it_is_parsed() -> None:
    token = raw_token("[" * 5000 + "]" * 5000)
    assert len(token) > MAX_PAGE_TOKEN_LENGTH
    assert "at most" in refused(token).message


def test_a_deeply_nested_token_is_invalid_argument() -> None:
    depth = MAX_PAGE_TOKEN_LENGTH // 3
    token = raw_token("[" * depth + "]" * depth)
    assert len(token) <= MAX_PAGE_TOKEN_LENGTH
    refused(token)


@pytest.mark.parametrize("position", ['"12"', "[12]", "{}", "12.0", "1e999", "true", "null"])
def test_an_integer_position_of_another_type_is_invalid_argument(position: str) -> None:
    refused(forged(position, FILTERS), int)


@pytest.mark.parametrize("position", ["-1", str(MAX_POSITION + 1), str(10**30)])
def test_an_integer_position_out_of_range_is_invalid_argument(position: str) -> None:
    refused(forged(position, FILTERS), int)


@pytest.mark.parametrize("position", ["12", '["run-1"]', "null", json.dumps("r" * 129)])
def test_a_string_position_of_another_type_or_too_long_is_invalid_argument(
    position: str,
) -> None:
    refused(forged(position, FILTERS), str)


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        "é",
        raw_token("not json"),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        raw_token("[1, 2]"),
        raw_token('{"p": 1}'),
        raw_token(f'{{"p": 1, "f": "{filters_digest(FILTERS)}", "x": 0}}'),
    ],
)
def test_a_token_that_is_not_one_of_ours_is_invalid_argument(token: str) -> None:
    refused(token)


def test_a_token_made_for_other_filters_is_invalid_argument() -> None:
    token = encode_page_token(5, {**FILTERS, "queue": "reports"})
    assert "other filters" in refused(token).message


def test_a_token_carries_a_digest_of_its_filters_not_the_filters() -> None:
    long_filters = {"list": "things", "metadata": [["key", "string", "v" * 10_000]]}
    token = encode_page_token(MAX_POSITION, long_filters)
    assert len(token) < 100
    assert decode_page_token(token, long_filters, int) == MAX_POSITION


# -- every list call of a real server -------------------------------------------------------

ListCall = Callable[[str], Awaitable[object]]
FORGED_POSITIONS = {
    int: ['"7"', "[1]", "1e999", "7.5", str(10**30), "-5", "true", "null"],
    str: ["7", '["run-7"]', "1e999", json.dumps("r" * 200), "true", "null"],
}
"""Positions of the wrong type or out of range, for calls that page by integer or by key."""


@pytest.fixture
async def channel(store_url: str) -> AsyncIterator[grpc.aio.Channel]:
    async with (
        running_app(store_url) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        yield client.channel


def list_calls(
    channel: grpc.aio.Channel,
) -> dict[str, tuple[ListCall, dict[str, object], type[int] | type[str]]]:
    """Every list call, by name: a call sending a page token, the filters it binds and
    the type of its positions."""
    snapshot_stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
    event_stub = events_pb2_grpc.EventLogServiceStub(channel)
    job_stub = jobs_pb2_grpc.JobServiceStub(channel)
    checkpoint_stub = checkpoints_pb2_grpc.CheckpointServiceStub(channel)
    no_filter = checkpoints.WorkflowFilter()
    return {
        "ListSnapshots": (
            lambda token: snapshot_stub.ListSnapshots(
                snapshots_pb2.ListSnapshotsRequest(page_token=token)
            ),
            snapshots.list_filters(snapshots.SnapshotFilter()),
            str,
        ),
        "ListRuns": (
            lambda token: event_stub.ListRuns(events_pb2.ListRunsRequest(page_token=token)),
            events.RUNS_FILTERS,
            str,
        ),
        "ListJobs": (
            lambda token: job_stub.ListJobs(jobs_pb2.ListJobsRequest(page_token=token)),
            jobs.list_filters(jobs.JobFilter()),
            int,
        ),
        "GetQueueStats": (
            lambda token: job_stub.GetQueueStats(jobs_pb2.GetQueueStatsRequest(page_token=token)),
            jobs.stats_filters(""),
            str,
        ),
        "ListWorkflowCheckpoints of a run": (
            lambda token: checkpoint_stub.ListWorkflowCheckpoints(
                checkpoints_pb2.ListWorkflowCheckpointsRequest(run_id="run-1", page_token=token)
            ),
            checkpoints.workflow_history_filters("run-1", "", no_filter),
            int,
        ),
        "ListWorkflowCheckpoints of every run": (
            lambda token: checkpoint_stub.ListWorkflowCheckpoints(
                checkpoints_pb2.ListWorkflowCheckpointsRequest(page_token=token)
            ),
            checkpoints.latest_workflows_filters(no_filter),
            str,
        ),
        "ListAgentCheckpoints": (
            lambda token: checkpoint_stub.ListAgentCheckpoints(
                checkpoints_pb2.ListAgentCheckpointsRequest(agent_id="agent-1", page_token=token)
            ),
            checkpoints.agent_history_filters("agent-1", ""),
            int,
        ),
        "ListAgents": (
            lambda token: checkpoint_stub.ListAgents(
                checkpoints_pb2.ListAgentsRequest(page_token=token)
            ),
            checkpoints.latest_agents_filters(""),
            str,
        ),
    }


async def test_a_forged_page_token_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    for name, (call, filters, position_type) in list_calls(channel).items():
        tokens = [forged(position, filters) for position in FORGED_POSITIONS[position_type]]
        tokens += [raw_token("[" * 5000 + "]" * 5000), raw_token("[" * 150 + "]" * 150), "%%%"]
        for token in tokens:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(token)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, token)
            assert bad_request_fields(caught.value) == ["page_token"], (name, token)


async def test_a_token_of_another_list_call_is_invalid_argument(
    channel: grpc.aio.Channel,
) -> None:
    calls = list_calls(channel)
    for name, (call, _, _) in calls.items():
        for other, (_, filters, _) in calls.items():
            if other == name:
                continue
            for position in (7, "run-7"):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call(encode_page_token(position, filters))
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, other)
                assert bad_request_fields(caught.value) == ["page_token"]
