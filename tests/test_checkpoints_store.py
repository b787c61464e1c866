"""Conformance of every backend's CheckpointStore: histories, parents, filters, retention."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from google.protobuf import struct_pb2

from statekeeper.v1 import checkpoints_pb2
from statekeeper_server.errors import Aborted, InvalidArgument, NotFound
from statekeeper_server.stores import Store
from statekeeper_server.stores.checkpoints import (
    CheckpointPage,
    RetentionOverride,
    RetentionPolicy,
    WorkflowFilter,
    metadata_conditions,
)
from statekeeper_server.timestamps import from_timestamp, now_us

NS = "default"
HOUR_US = 3600 * 1_000_000
KEEP_ALL = RetentionPolicy()
SERVER_RETENTION = RetentionOverride()
NO_FILTER = WorkflowFilter()


def workflow(run_id: str = "run-1", **fields: Any) -> checkpoints_pb2.WorkflowCheckpoint:
    values: dict[str, Any] = {"workflow_name": "wf", "step": 0, "next_node_id": "start"}
    values.update(fields)
    return checkpoints_pb2.WorkflowCheckpoint(run_id=run_id, **values)


def agent(agent_id: str = "agent-1", **fields: Any) -> checkpoints_pb2.AgentCheckpoint:
    values: dict[str, Any] = {"agent_state": checkpoints_pb2.AGENT_STATE_ACTIVE}
    values.update(fields)
    return checkpoints_pb2.AgentCheckpoint(agent_id=agent_id, **values)


def as_workflow(data: bytes) -> checkpoints_pb2.WorkflowCheckpoint:
    """A workflow checkpoint as the store returned it: its stored encoding."""
    return checkpoints_pb2.WorkflowCheckpoint.FromString(data)


def as_agent(data: bytes) -> checkpoints_pb2.AgentCheckpoint:
    """An agent checkpoint as the store returned it: its stored encoding."""
    return checkpoints_pb2.AgentCheckpoint.FromString(data)


def workflows(page: CheckpointPage) -> list[checkpoints_pb2.WorkflowCheckpoint]:
    return [as_workflow(data) for data in page.checkpoints]


def agents(page: CheckpointPage) -> list[checkpoints_pb2.AgentCheckpoint]:
    return [as_agent(data) for data in page.checkpoints]


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(value)
    return result


async def save(
    store: Store,
    checkpoint: checkpoints_pb2.WorkflowCheckpoint,
    *,
    expected_parent: str | None = None,
    retention: RetentionOverride = SERVER_RETENTION,
    defaults: RetentionPolicy = KEEP_ALL,
    at_us: int | None = None,
    namespace: str = NS,
) -> checkpoints_pb2.WorkflowCheckpoint:
    """Save a copy of `checkpoint` (a save stamps its message); the checkpoint as stored."""
    sent = checkpoints_pb2.WorkflowCheckpoint()
    sent.CopyFrom(checkpoint)
    saved = await store.checkpoints.save_workflow(
        namespace,
        sent,
        expected_parent=expected_parent,
        retention=retention,
        defaults=defaults,
        now_us=now_us() if at_us is None else at_us,
    )
    return as_workflow(saved.data)


async def persist(
    store: Store,
    checkpoint: checkpoints_pb2.AgentCheckpoint,
    *,
    retention: RetentionOverride = SERVER_RETENTION,
    at_us: int | None = None,
    namespace: str = NS,
) -> checkpoints_pb2.AgentCheckpoint:
    """Persist a copy of `checkpoint` (a save stamps its message); the checkpoint as stored."""
    sent = checkpoints_pb2.AgentCheckpoint()
    sent.CopyFrom(checkpoint)
    saved = await store.checkpoints.persist_agent(
        namespace,
        sent,
        retention=retention,
        defaults=KEEP_ALL,
        now_us=now_us() if at_us is None else at_us,
    )
    return as_agent(saved.data)


async def load(store: Store, run_id: str = "run-1") -> checkpoints_pb2.WorkflowCheckpoint:
    loaded = await store.checkpoints.load_workflow(NS, run_id, "", fallback_to_readable=False)
    return as_workflow(loaded.data)


async def history(
    store: Store, run_id: str = "run-1", where: WorkflowFilter = NO_FILTER
) -> list[str]:
    page = await store.checkpoints.list_workflow_history(
        NS, run_id, where, before="", page_size=1000, page_token=""
    )
    return [checkpoint.checkpoint_id for checkpoint in workflows(page)]


async def load_history(
    store: Store, run_id: str = "run-1"
) -> list[checkpoints_pb2.WorkflowCheckpoint]:
    page = await store.checkpoints.list_workflow_history(
        NS, run_id, WorkflowFilter(), before="", page_size=1000, page_token=""
    )
    return workflows(page)


async def agent_history(store: Store, agent_id: str = "agent-1") -> list[str]:
    page = await store.checkpoints.list_agent_history(
        NS, agent_id, before="", page_size=1000, page_token=""
    )
    return [checkpoint.checkpoint_id for checkpoint in agents(page)]


async def listed_agents(
    store: Store, prefix: str = "", *, page_size: int = 1000, namespace: str = NS
) -> list[list[str]]:
    """Every page of the newest-per-agent listing, each as its agents' ids."""
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await store.checkpoints.list_latest_agents(
            namespace, prefix, page_size=page_size, page_token=token
        )
        pages.append([c.agent_id for c in agents(page)])
        token = page.next_page_token
        if not token:
            return pages


def metadata_filter(value: dict[str, Any]) -> WorkflowFilter:
    return WorkflowFilter(metadata=metadata_conditions(struct(value), "metadata_filter"))


# -- the seeds' behaviour ------------------------------------------------------


async def test_workflow_checkpoint_round_trips_every_field(store: Store) -> None:
    original = workflow(
        step=3,
        next_node_id="tool",
        scope_snapshot=struct({"input": {"k": "v"}, "items": [1, "two", None]}),
        metadata=struct({"stage": "review"}),
    )
    saved = await save(store, original)

    loaded = await load(store)

    assert loaded == saved
    for output_only in ("checkpoint_id", "parent_checkpoint_id", "create_time"):
        loaded.ClearField(output_only)  # type: ignore[arg-type]
    assert loaded == original


async def test_delete_then_load_is_not_found(store: Store) -> None:
    await save(store, workflow())
    await save(store, workflow(step=1))

    assert await store.checkpoints.delete_workflow(NS, "run-1") == 2

    with pytest.raises(NotFound) as caught:
        await load(store)
    assert caught.value.reason == "NO_CHECKPOINT"


async def test_delete_of_a_run_without_checkpoints_deletes_nothing(store: Store) -> None:
    assert await store.checkpoints.delete_workflow(NS, "never-saved") == 0


async def test_load_of_a_run_without_checkpoints_is_not_found_naming_the_run(
    store: Store,
) -> None:
    with pytest.raises(NotFound) as caught:
        await load(store, "missing")
    assert caught.value.reason == "NO_CHECKPOINT"
    assert caught.value.metadata["run_id"] == "missing"


async def test_several_checkpoints_load_the_latest(store: Store) -> None:
    for step in range(3):
        await save(store, workflow(step=step, next_node_id=f"node-{step}"))

    loaded = await load(store)

    assert (loaded.step, loaded.next_node_id) == (2, "node-2")


async def test_load_after_500_checkpoints_returns_the_newest(store: Store) -> None:
    await asyncio.gather(*(save(store, workflow(run_id="other", step=i)) for i in range(50)))
    saved = [await save(store, workflow(step=step)) for step in range(500)]

    loaded = await load(store)

    assert loaded == saved[-1]
    assert loaded.step == 499


async def test_agent_checkpoint_round_trips_every_field(store: Store) -> None:
    original = agent(
        agent_state=checkpoints_pb2.AGENT_STATE_DRAINING,
        app_state=struct({"key": "value", "queue": [1, 2]}),
        metadata=checkpoints_pb2.AgentCheckpointMetadata(
            version=2, in_flight_tasks=5, reason="shutdown"
        ),
    )
    original.timestamp.seconds = 1_700_000_000
    original.metadata.custom.struct_value.update({"region": "eu"})
    saved = await persist(store, original)

    recovered = await store.checkpoints.recover_agent(NS, "agent-1", fallback_to_readable=False)

    assert as_agent(recovered.data) == saved
    assert recovered.skipped_checkpoint_ids == []
    saved.ClearField("checkpoint_id")
    saved.ClearField("create_time")
    assert saved == original


async def test_agent_timestamp_defaults_to_the_create_time(store: Store) -> None:
    saved = await persist(store, agent())
    assert saved.timestamp == saved.create_time


async def test_recover_of_an_agent_without_checkpoints_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound) as caught:
        await store.checkpoints.recover_agent(NS, "agent-1", fallback_to_readable=False)
    assert caught.value.reason == "NO_CHECKPOINT"
    assert caught.value.metadata["agent_id"] == "agent-1"


async def test_several_agent_checkpoints_recover_the_latest(store: Store) -> None:
    await persist(store, agent(agent_state=checkpoints_pb2.AGENT_STATE_READY))
    await persist(store, agent(app_state=struct({"version": 2})))

    recovered = await store.checkpoints.recover_agent(NS, "agent-1", fallback_to_readable=False)

    assert as_agent(recovered.data).agent_state == checkpoints_pb2.AGENT_STATE_ACTIVE
    assert dict(as_agent(recovered.data).app_state) == {"version": 2}


async def test_agent_recovery_after_500_checkpoints_returns_the_newest(store: Store) -> None:
    saved = [await persist(store, agent(app_state=struct({"n": n}))) for n in range(500)]

    recovered = await store.checkpoints.recover_agent(NS, "agent-1", fallback_to_readable=False)

    assert as_agent(recovered.data) == saved[-1]


async def test_delete_agent_then_recover_is_not_found(store: Store) -> None:
    await persist(store, agent())
    assert await store.checkpoints.delete_agent(NS, "agent-1") == 1
    with pytest.raises(NotFound):
        await store.checkpoints.recover_agent(NS, "agent-1", fallback_to_readable=False)


# -- identity and order ----------------------------------------------------------


async def test_each_save_links_to_the_previous_newest_as_parent(store: Store) -> None:
    first = await save(store, workflow())
    second = await save(store, workflow(step=1))

    assert first.parent_checkpoint_id == ""
    assert second.parent_checkpoint_id == first.checkpoint_id


async def test_checkpoint_ids_sort_in_save_order(store: Store) -> None:
    saved = [await save(store, workflow(step=step)) for step in range(20)]
    ids = [checkpoint.checkpoint_id for checkpoint in saved]
    assert ids == sorted(ids)
    assert len(set(ids)) == 20


async def test_saves_in_the_same_microsecond_keep_their_order(store: Store) -> None:
    instant = now_us()
    saved = [await save(store, workflow(step=step), at_us=instant) for step in range(5)]

    assert (await load(store)).step == 4
    assert await history(store) == [c.checkpoint_id for c in reversed(saved)]


async def test_create_time_never_goes_back_within_a_run(store: Store) -> None:
    instant = now_us()
    await save(store, workflow(), at_us=instant)
    later = await save(store, workflow(step=1), at_us=instant - HOUR_US)

    assert from_timestamp(later.create_time) == instant
    assert (await load(store)).step == 1


async def test_load_of_a_named_checkpoint_returns_it(store: Store) -> None:
    first = await save(store, workflow(step=1))
    await save(store, workflow(step=2))

    loaded = await store.checkpoints.load_workflow(
        NS, "run-1", first.checkpoint_id, fallback_to_readable=False
    )

    assert as_workflow(loaded.data) == first


async def test_load_of_an_unknown_checkpoint_id_is_not_found_naming_it(store: Store) -> None:
    await save(store, workflow())
    with pytest.raises(NotFound) as caught:
        await store.checkpoints.load_workflow(NS, "run-1", "nope", fallback_to_readable=False)
    assert caught.value.reason == "NO_CHECKPOINT"
    assert caught.value.metadata["checkpoint_id"] == "nope"


async def test_namespaces_keep_separate_histories(store: Store) -> None:
    await save(store, workflow(step=1), namespace="tenant-a")
    with pytest.raises(NotFound):
        await load(store)


# -- history and paging -------------------------------------------------------------


async def test_history_lists_newest_first(store: Store) -> None:
    saved = [await save(store, workflow(step=step)) for step in range(4)]
    assert await history(store) == [c.checkpoint_id for c in reversed(saved)]


async def test_history_of_an_unknown_run_is_empty(store: Store) -> None:
    assert await history(store, "missing") == []


async def test_history_before_a_checkpoint_lists_only_older_ones(store: Store) -> None:
    saved = [await save(store, workflow(step=step)) for step in range(6)]

    page = await store.checkpoints.list_workflow_history(
        NS, "run-1", WorkflowFilter(), before=saved[3].checkpoint_id, page_size=2, page_token=""
    )

    assert [c.step for c in workflows(page)] == [2, 1]
    following = await store.checkpoints.list_workflow_history(
        NS,
        "run-1",
        WorkflowFilter(),
        before=saved[3].checkpoint_id,
        page_size=2,
        page_token=page.next_page_token,
    )
    assert [c.step for c in workflows(following)] == [0]
    assert following.next_page_token == ""


async def test_history_before_an_unknown_checkpoint_is_not_found(store: Store) -> None:
    await save(store, workflow())
    with pytest.raises(NotFound) as caught:
        await store.checkpoints.list_workflow_history(
            NS, "run-1", WorkflowFilter(), before="gone", page_size=10, page_token=""
        )
    assert caught.value.metadata["checkpoint_id"] == "gone"


async def test_history_pages_cover_every_checkpoint_once(store: Store) -> None:
    for step in range(25):
        await save(store, workflow(step=step))
    steps: list[int] = []
    token = ""
    while True:
        page = await store.checkpoints.list_workflow_history(
            NS, "run-1", WorkflowFilter(), before="", page_size=7, page_token=token
        )
        steps.extend(c.step for c in workflows(page))
        token = page.next_page_token
        if not token:
            break
    assert steps == list(range(24, -1, -1))


async def test_page_token_used_with_other_filters_is_invalid(store: Store) -> None:
    for step in range(3):
        await save(store, workflow(step=step))
    page = await store.checkpoints.list_workflow_history(
        NS, "run-1", WorkflowFilter(), before="", page_size=1, page_token=""
    )
    with pytest.raises(InvalidArgument) as caught:
        await store.checkpoints.list_workflow_history(
            NS,
            "run-1",
            WorkflowFilter(workflow_name="other"),
            before="",
            page_size=1,
            page_token=page.next_page_token,
        )
    assert caught.value.field == "page_token"


async def test_agent_history_lists_newest_first_and_pages_with_before(store: Store) -> None:
    saved = [await persist(store, agent(app_state=struct({"n": n}))) for n in range(5)]

    page = await store.checkpoints.list_agent_history(
        NS, "agent-1", before=saved[4].checkpoint_id, page_size=3, page_token=""
    )
    following = await store.checkpoints.list_agent_history(
        NS,
        "agent-1",
        before=saved[4].checkpoint_id,
        page_size=3,
        page_token=page.next_page_token,
    )

    listed = [*agents(page), *agents(following)]
    assert [c.app_state["n"] for c in listed] == [3, 2, 1, 0]
    assert following.next_page_token == ""


async def test_latest_per_run_lists_each_runs_newest_in_run_id_order(store: Store) -> None:
    for run_id in ("run-c", "run-a", "run-b"):
        for step in range(3):
            await save(store, workflow(run_id=run_id, step=step))

    page = await store.checkpoints.list_latest_workflows(
        NS, WorkflowFilter(), page_size=2, page_token=""
    )
    following = await store.checkpoints.list_latest_workflows(
        NS, WorkflowFilter(), page_size=2, page_token=page.next_page_token
    )

    listed = [*workflows(page), *workflows(following)]
    assert [(c.run_id, c.step) for c in listed] == [("run-a", 2), ("run-b", 2), ("run-c", 2)]
    assert following.next_page_token == ""


async def test_latest_per_run_filters_by_workflow_name(store: Store) -> None:
    await save(store, workflow(run_id="run-1", workflow_name="ingest"))
    await save(store, workflow(run_id="run-2", workflow_name="review"))
    await save(store, workflow(run_id="run-3", workflow_name="ingest"))

    page = await store.checkpoints.list_latest_workflows(
        NS, WorkflowFilter(workflow_name="ingest"), page_size=10, page_token=""
    )

    assert [c.run_id for c in workflows(page)] == ["run-1", "run-3"]


async def test_latest_per_run_filters_on_the_newest_checkpoint_only(store: Store) -> None:
    await save(store, workflow(run_id="run-1", metadata=struct({"stage": "draft"})))
    await save(store, workflow(run_id="run-1", metadata=struct({"stage": "final"})))

    drafts = await store.checkpoints.list_latest_workflows(
        NS, metadata_filter({"stage": "draft"}), page_size=10, page_token=""
    )
    finals = await store.checkpoints.list_latest_workflows(
        NS, metadata_filter({"stage": "final"}), page_size=10, page_token=""
    )

    assert drafts.checkpoints == []
    assert [c.run_id for c in workflows(finals)] == ["run-1"]


async def test_latest_per_agent_lists_each_agents_newest_in_agent_id_order(
    store: Store,
) -> None:
    for agent_id in ("agent-c", "agent-a", "agent-b"):
        for n in range(3):
            await persist(store, agent(agent_id, app_state=struct({"n": n})))

    page = await store.checkpoints.list_latest_agents(NS, "", page_size=2, page_token="")
    following = await store.checkpoints.list_latest_agents(
        NS, "", page_size=2, page_token=page.next_page_token
    )

    listed = [*agents(page), *agents(following)]
    assert [(c.agent_id, c.app_state["n"]) for c in listed] == [
        ("agent-a", 2),
        ("agent-b", 2),
        ("agent-c", 2),
    ]
    assert following.next_page_token == ""


async def test_latest_per_agent_returns_the_newest_checkpoint_as_stored(store: Store) -> None:
    await persist(store, agent("agent-1", app_state=struct({"n": 1})))
    newest = await persist(store, agent("agent-1", app_state=struct({"n": 2})))

    page = await store.checkpoints.list_latest_agents(NS, "", page_size=10, page_token="")

    assert agents(page) == [newest]


async def test_latest_per_agent_of_a_namespace_without_agents_is_one_empty_page(
    store: Store,
) -> None:
    assert await listed_agents(store) == [[]]


async def test_latest_per_agent_lists_only_ids_starting_with_the_prefix(store: Store) -> None:
    for agent_id in ("agent", "agent-1", "agent-10", "agent-2", "agenta", "agent.", "b", "a"):
        await persist(store, agent(agent_id))

    assert await listed_agents(store, "agent-1") == [["agent-1", "agent-10"]]
    assert await listed_agents(store, "agent") == [
        ["agent", "agent-1", "agent-10", "agent-2", "agent.", "agenta"]
    ]
    assert await listed_agents(store, "z") == [[]]


async def test_latest_per_agent_with_a_prefix_pages_only_over_matches(store: Store) -> None:
    for n in range(7):
        await persist(store, agent(f"worker-{n}"))
        await persist(store, agent(f"other-{n}"))

    pages = await listed_agents(store, "worker-", page_size=3)

    assert pages == [
        ["worker-0", "worker-1", "worker-2"],
        ["worker-3", "worker-4", "worker-5"],
        ["worker-6"],
    ]


async def test_latest_per_agent_leaves_out_deleted_agents(store: Store) -> None:
    for agent_id in ("agent-1", "agent-2", "agent-3"):
        await persist(store, agent(agent_id))

    await store.checkpoints.delete_agent(NS, "agent-2")

    assert await listed_agents(store) == [["agent-1", "agent-3"]]


async def test_latest_per_agent_keeps_namespaces_apart(store: Store) -> None:
    await persist(store, agent("agent-1"))
    await persist(store, agent("agent-2"), namespace="other")

    assert await listed_agents(store) == [["agent-1"]]
    assert await listed_agents(store, namespace="other") == [["agent-2"]]


async def test_latest_per_agent_token_used_with_another_prefix_is_invalid(store: Store) -> None:
    for n in range(3):
        await persist(store, agent(f"agent-{n}"))
    page = await store.checkpoints.list_latest_agents(NS, "agent-", page_size=1, page_token="")

    with pytest.raises(InvalidArgument) as caught:
        await store.checkpoints.list_latest_agents(
            NS, "agent-1", page_size=1, page_token=page.next_page_token
        )
    assert caught.value.field == "page_token"


async def test_latest_per_agent_token_of_the_newest_per_run_listing_is_invalid(
    store: Store,
) -> None:
    for n in range(3):
        await save(store, workflow(run_id=f"run-{n}"))
    page = await store.checkpoints.list_latest_workflows(
        NS, WorkflowFilter(), page_size=1, page_token=""
    )

    with pytest.raises(InvalidArgument) as caught:
        await store.checkpoints.list_latest_agents(
            NS, "", page_size=1, page_token=page.next_page_token
        )
    assert caught.value.field == "page_token"


# -- metadata filters ---------------------------------------------------------------


async def filtered_steps(store: Store, value: dict[str, Any]) -> list[int]:
    page = await store.checkpoints.list_workflow_history(
        NS, "run-1", metadata_filter(value), before="", page_size=100, page_token=""
    )
    return sorted(c.step for c in workflows(page))


@pytest.fixture
async def tagged(store: Store) -> Store:
    """A run whose checkpoints carry metadata values of every JSON kind."""
    values: list[dict[str, Any]] = [
        {"stage": "review", "attempt": 1, "final": False},
        {"stage": "review", "attempt": 2.5, "final": True},
        {"stage": "1", "attempt": "1", "final": 1, "owner": None},
        {"stage": "done", "attempt": 3, "final": True, "nested": {"a": 1}},
    ]
    for step, metadata in enumerate(values):
        await save(store, workflow(step=step, metadata=struct(metadata)))
    return store


async def test_metadata_filter_matches_strings_exactly(tagged: Store) -> None:
    assert await filtered_steps(tagged, {"stage": "review"}) == [0, 1]


async def test_metadata_filter_matches_numbers_whatever_their_form(tagged: Store) -> None:
    assert await filtered_steps(tagged, {"attempt": 1}) == [0]
    assert await filtered_steps(tagged, {"attempt": 2.5}) == [1]
    assert await filtered_steps(tagged, {"attempt": 3.0}) == [3]


async def test_metadata_filter_never_matches_across_types(tagged: Store) -> None:
    assert await filtered_steps(tagged, {"attempt": "1"}) == [2]
    assert await filtered_steps(tagged, {"stage": 1}) == []
    assert await filtered_steps(tagged, {"final": True}) == [1, 3]
    assert await filtered_steps(tagged, {"final": 1}) == [2]


async def test_metadata_filter_matches_null_only_where_the_key_holds_null(tagged: Store) -> None:
    assert await filtered_steps(tagged, {"owner": None}) == [2]


async def test_metadata_filter_requires_every_pair(tagged: Store) -> None:
    assert await filtered_steps(tagged, {"stage": "review", "final": True}) == [1]
    assert await filtered_steps(tagged, {"stage": "review", "missing": "x"}) == []


async def test_a_metadata_filter_on_a_non_finite_number_matches_nothing_with_a_name_filter(
    tagged: Store,
) -> None:
    where = WorkflowFilter(
        workflow_name="wf", metadata=metadata_filter({"attempt": math.inf}).metadata
    )
    page = await tagged.checkpoints.list_workflow_history(
        NS, "run-1", where, before="", page_size=100, page_token=""
    )
    latest = await tagged.checkpoints.list_latest_workflows(NS, where, page_size=100, page_token="")
    assert (page.checkpoints, latest.checkpoints) == ([], [])


async def test_metadata_filter_pages_exactly_over_matches(tagged: Store) -> None:
    for step in range(4, 14):
        await save(tagged, workflow(step=step, metadata=struct({"even": step % 2 == 0})))
    steps: list[int] = []
    token = ""
    while True:
        page = await tagged.checkpoints.list_workflow_history(
            NS, "run-1", metadata_filter({"even": True}), before="", page_size=2, page_token=token
        )
        assert len(page.checkpoints) == 2 or not page.next_page_token
        steps.extend(c.step for c in workflows(page))
        token = page.next_page_token
        if not token:
            break
    assert steps == [12, 10, 8, 6, 4]


def test_metadata_filter_with_an_object_value_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as caught:
        metadata_conditions(struct({"nested": {"a": 1}}), "metadata_filter")
    assert caught.value.field == "metadata_filter.nested"


async def test_metadata_that_json_cannot_carry_is_invalid(store: Store) -> None:
    checkpoint = workflow()
    checkpoint.metadata["ratio"] = float("nan")
    with pytest.raises(InvalidArgument) as caught:
        await save(store, checkpoint)
    assert caught.value.field == "checkpoint.metadata"


async def test_metadata_holding_nul_is_invalid(store: Store) -> None:
    checkpoint = workflow(metadata=struct({"outer": {"a\x00b": 1}}))
    with pytest.raises(InvalidArgument) as caught:
        await save(store, checkpoint)
    assert caught.value.field == "checkpoint.metadata"
    assert await history(store) == []


# -- parent compare-and-set ---------------------------------------------------------


async def test_expected_parent_matching_the_newest_succeeds(store: Store) -> None:
    first = await save(store, workflow())
    second = await save(store, workflow(step=1), expected_parent=first.checkpoint_id)
    assert second.parent_checkpoint_id == first.checkpoint_id


async def test_expected_parent_mismatch_is_aborted_with_the_actual_parent(store: Store) -> None:
    first = await save(store, workflow())
    second = await save(store, workflow(step=1))

    with pytest.raises(Aborted) as caught:
        await save(store, workflow(step=2), expected_parent=first.checkpoint_id)

    assert caught.value.reason == "PARENT_MISMATCH"
    assert caught.value.metadata["actual_parent"] == second.checkpoint_id
    assert (await load(store)).step == 1


async def test_empty_expected_parent_requires_a_run_without_checkpoints(store: Store) -> None:
    first = await save(store, workflow(), expected_parent="")
    with pytest.raises(Aborted) as caught:
        await save(store, workflow(step=1), expected_parent="")
    assert caught.value.metadata["actual_parent"] == first.checkpoint_id


async def test_expected_parent_on_a_run_without_checkpoints_reports_none(store: Store) -> None:
    with pytest.raises(Aborted) as caught:
        await save(store, workflow(), expected_parent="some-checkpoint")
    assert caught.value.metadata["actual_parent"] == ""


async def test_two_writers_racing_on_one_parent_cannot_both_win(store: Store) -> None:
    first = await save(store, workflow())

    outcomes = await asyncio.gather(
        save(store, workflow(step=1), expected_parent=first.checkpoint_id),
        save(store, workflow(step=2), expected_parent=first.checkpoint_id),
        return_exceptions=True,
    )

    winners = [o for o in outcomes if isinstance(o, checkpoints_pb2.WorkflowCheckpoint)]
    losers = [o for o in outcomes if isinstance(o, Aborted)]
    assert (len(winners), len(losers)) == (1, 1)
    assert losers[0].metadata["actual_parent"] == winners[0].checkpoint_id
    assert await history(store) == [winners[0].checkpoint_id, first.checkpoint_id]


# -- retention ----------------------------------------------------------------------


async def test_keep_last_on_save_drops_the_oldest_and_reports_them(store: Store) -> None:
    saved = [await save(store, workflow(step=step)) for step in range(4)]

    result = await store.checkpoints.save_workflow(
        NS,
        workflow(step=4),
        expected_parent=None,
        retention=RetentionOverride(keep_last=2),
        defaults=KEEP_ALL,
        now_us=now_us(),
    )

    assert result.dropped_count == 3
    assert await history(store) == [result.checkpoint.checkpoint_id, saved[3].checkpoint_id]


async def test_server_keep_last_applies_when_the_save_names_none(store: Store) -> None:
    for step in range(5):
        await save(store, workflow(step=step), defaults=RetentionPolicy(keep_last=3))
    assert len(await history(store)) == 3


async def test_a_save_can_keep_everything_despite_the_server_default(store: Store) -> None:
    for step in range(5):
        await save(
            store,
            workflow(step=step),
            retention=RetentionOverride(keep_last=0),
            defaults=RetentionPolicy(keep_last=1),
        )
    assert len(await history(store)) == 5


async def test_ttl_drops_checkpoints_older_than_it_on_save(store: Store) -> None:
    start = now_us()
    await save(store, workflow(step=0), at_us=start)
    await save(store, workflow(step=1), at_us=start + HOUR_US // 2)
    latest = await save(
        store,
        workflow(step=2),
        retention=RetentionOverride(ttl_us=HOUR_US),
        at_us=start + HOUR_US + 1,
    )
    assert [c.step for c in await load_history(store)] == [2, 1]
    assert latest.step == 2


async def test_retention_never_drops_the_newest_checkpoint(store: Store) -> None:
    start = now_us()
    only = await save(store, workflow(), at_us=start)

    dropped = await store.checkpoints.sweep(RetentionPolicy(keep_last=1, ttl_us=1), start + HOUR_US)

    assert dropped == 0
    assert await load(store) == only


async def test_sweep_drops_expired_checkpoints_of_every_run_and_agent(store: Store) -> None:
    start = now_us()
    for run_id in ("run-1", "run-2"):
        await save(store, workflow(run_id=run_id, step=0), at_us=start)
        await save(store, workflow(run_id=run_id, step=1), at_us=start + 10)
    await persist(store, agent(), at_us=start)
    await persist(store, agent(), at_us=start + 10)

    dropped = await store.checkpoints.sweep(RetentionPolicy(ttl_us=HOUR_US), start + 2 * HOUR_US)

    assert dropped == 3
    assert [c.step for c in await load_history(store, "run-1")] == [1]
    assert [c.step for c in await load_history(store, "run-2")] == [1]
    assert len(await agent_history(store)) == 1


async def test_sweep_keeps_checkpoints_younger_than_the_ttl(store: Store) -> None:
    start = now_us()
    await save(store, workflow(step=0), at_us=start)
    await save(store, workflow(step=1), at_us=start + 10)

    assert await store.checkpoints.sweep(RetentionPolicy(ttl_us=HOUR_US), start + 100) == 0
    assert len(await history(store)) == 2


async def test_sweep_applies_a_lowered_keep_last(store: Store) -> None:
    for step in range(6):
        await save(store, workflow(step=step))
    for n in range(4):
        await persist(store, agent(app_state=struct({"n": n})))

    dropped = await store.checkpoints.sweep(RetentionPolicy(keep_last=2), now_us())

    assert dropped == 4 + 2
    assert [c.step for c in await load_history(store)] == [5, 4]
    assert len(await agent_history(store)) == 2


async def test_sweep_follows_the_retention_named_by_the_newest_save(store: Store) -> None:
    for step in range(4):
        await save(store, workflow(step=step), retention=RetentionOverride(keep_last=0))

    dropped = await store.checkpoints.sweep(RetentionPolicy(keep_last=1), now_us())

    assert dropped == 0
    assert len(await history(store)) == 4


async def test_sweep_over_many_runs_reaches_every_one(store: Store) -> None:
    start = now_us()
    run_ids = [f"run-{i:03d}" for i in range(300)]
    for run_id in run_ids:
        await save(store, workflow(run_id=run_id), at_us=start)
        await save(store, workflow(run_id=run_id, step=1), at_us=start + 1)

    dropped = await store.checkpoints.sweep(RetentionPolicy(keep_last=1), start + 2)

    assert dropped == 300


async def test_agent_keep_last_on_persist_drops_the_oldest(store: Store) -> None:
    for n in range(3):
        await persist(store, agent(app_state=struct({"n": n})))
    saved = await store.checkpoints.persist_agent(
        NS,
        agent(app_state=struct({"n": 3})),
        retention=RetentionOverride(keep_last=1),
        defaults=KEEP_ALL,
        now_us=now_us(),
    )
    assert saved.dropped_count == 3
    assert await agent_history(store) == [saved.checkpoint.checkpoint_id]
