"""Conformance of every backend's SnapshotStore."""

from __future__ import annotations

import asyncio

import pytest

from statekeeper.v1 import snapshots_pb2
from statekeeper_server.errors import Aborted, InvalidArgument, NotFound
from statekeeper_server.stores import Store
from statekeeper_server.stores.snapshots import SnapshotFilter

NS = "default"


def snapshot(run_id: str = "run-1", **fields: object) -> snapshots_pb2.Snapshot:
    values: dict[str, object] = {
        "session_id": "session-1",
        "status": snapshots_pb2.RUN_STATUS_RUNNING,
        "iteration": 1,
    }
    values.update(fields)
    return snapshots_pb2.Snapshot(run_id=run_id, **values)  # type: ignore[arg-type]


def decoded(data: bytes) -> snapshots_pb2.Snapshot:
    """A snapshot as the store returned it: its stored encoding."""
    return snapshots_pb2.Snapshot.FromString(data)


async def test_save_then_load_round_trips_every_field(store: Store) -> None:
    original = snapshot(
        iteration=7,
        current_state=snapshots_pb2.TURN_STATE_EXECUTING_TOOLS,
        assistant_msg_id="msg-9",
        output_recovery_count=2,
    )
    original.request.model = "gpt-test"
    original.request.messages.add(role=snapshots_pb2.MESSAGE_ROLE_USER).content.add(text="hi")
    original.total_usage.input_tokens = 12
    original.timestamp.seconds = 1_700_000_000

    sent = snapshots_pb2.Snapshot()
    sent.CopyFrom(original)
    await store.snapshots.save(NS, sent, None)
    loaded = decoded(await store.snapshots.load(NS, "run-1"))

    loaded.ClearField("version")
    loaded.ClearField("update_time")
    assert loaded == original


async def test_first_save_is_version_one_and_each_save_adds_one(store: Store) -> None:
    versions = [decoded(await store.snapshots.save(NS, snapshot(), None)).version for _ in range(3)]
    assert versions == [1, 2, 3]


async def test_save_sets_update_time(store: Store) -> None:
    saved = decoded(await store.snapshots.save(NS, snapshot(), None))
    assert saved.update_time.seconds > 0


async def test_load_of_missing_run_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound) as caught:
        await store.snapshots.load(NS, "nope")
    assert caught.value.reason == "SNAPSHOT_NOT_FOUND"


async def test_expected_version_matching_current_succeeds(store: Store) -> None:
    await store.snapshots.save(NS, snapshot(), None)
    saved = decoded(await store.snapshots.save(NS, snapshot(iteration=2), 1))
    assert saved.version == 2


async def test_expected_version_mismatch_is_aborted_with_current_version(store: Store) -> None:
    await store.snapshots.save(NS, snapshot(), None)
    with pytest.raises(Aborted) as caught:
        await store.snapshots.save(NS, snapshot(iteration=2), 5)
    assert caught.value.reason == "VERSION_MISMATCH"
    assert caught.value.metadata["current_version"] == "1"
    assert decoded(await store.snapshots.load(NS, "run-1")).iteration == 1


async def test_expected_version_zero_requires_a_new_run(store: Store) -> None:
    await store.snapshots.save(NS, snapshot(), 0)
    with pytest.raises(Aborted):
        await store.snapshots.save(NS, snapshot(), 0)


async def test_concurrent_compare_and_set_has_exactly_one_winner(store: Store) -> None:
    await store.snapshots.save(NS, snapshot(), None)
    results = await asyncio.gather(
        *(store.snapshots.save(NS, snapshot(iteration=i), 1) for i in range(10)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, Aborted) for r in results if isinstance(r, Exception))


async def test_delete_removes_the_snapshot_and_reports_it(store: Store) -> None:
    await store.snapshots.save(NS, snapshot(), None)
    assert await store.snapshots.delete(NS, "run-1") is True
    with pytest.raises(NotFound):
        await store.snapshots.load(NS, "run-1")


async def test_delete_of_missing_snapshot_succeeds_with_false(store: Store) -> None:
    assert await store.snapshots.delete(NS, "never-saved") is False


async def test_namespaces_are_isolated(store: Store) -> None:
    await store.snapshots.save("tenant-a", snapshot(iteration=1), None)
    await store.snapshots.save("tenant-b", snapshot(iteration=2), None)
    assert decoded(await store.snapshots.load("tenant-a", "run-1")).iteration == 1
    assert decoded(await store.snapshots.load("tenant-b", "run-1")).iteration == 2
    with pytest.raises(NotFound):
        await store.snapshots.load("tenant-c", "run-1")


async def test_list_pages_through_everything_in_run_id_order(store: Store) -> None:
    run_ids = [f"run-{i:03d}" for i in range(25)]
    for run_id in reversed(run_ids):
        await store.snapshots.save(NS, snapshot(run_id), None)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await store.snapshots.list(NS, SnapshotFilter(), 10, token)
        seen.extend(decoded(s).run_id for s in page.snapshots)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == run_ids
    assert pages == 3


async def test_list_filters_by_session_and_status(store: Store) -> None:
    await store.snapshots.save(NS, snapshot("a", session_id="s1"), None)
    await store.snapshots.save(NS, snapshot("b", session_id="s2"), None)
    await store.snapshots.save(
        NS, snapshot("c", session_id="s1", status=snapshots_pb2.RUN_STATUS_COMPLETED), None
    )
    by_session = await store.snapshots.list(NS, SnapshotFilter(session_id="s1"), 50, "")
    by_both = await store.snapshots.list(
        NS, SnapshotFilter(session_id="s1", status=snapshots_pb2.RUN_STATUS_COMPLETED), 50, ""
    )
    assert [decoded(s).run_id for s in by_session.snapshots] == ["a", "c"]
    assert [decoded(s).run_id for s in by_both.snapshots] == ["c"]


async def test_list_rejects_a_token_made_for_other_filters(store: Store) -> None:
    for run_id in ("a", "b", "c"):
        await store.snapshots.save(NS, snapshot(run_id), None)
    page = await store.snapshots.list(NS, SnapshotFilter(), 1, "")
    with pytest.raises(InvalidArgument) as caught:
        await store.snapshots.list(NS, SnapshotFilter(session_id="x"), 1, page.next_page_token)
    assert caught.value.field == "page_token"


async def test_list_rejects_a_forged_token(store: Store) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await store.snapshots.list(NS, SnapshotFilter(), 1, "not-a-token!")
    assert caught.value.field == "page_token"
