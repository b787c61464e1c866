"""Thread checkpoint expiry on every backend, with the clock in the test's hands."""

from __future__ import annotations

from statekeeper_server.stores import Store
from statekeeper_server.stores.thread_checkpoints import (
    Blob,
    CheckpointKey,
    ListQuery,
    NewCheckpoint,
    NewWrite,
)

SECOND = 1_000_000
old = Blob("b", b"old")
new = Blob("b", b"new")
NOW = 1_700_000_000 * SECOND


def checkpoint(thread_id: str, checkpoint_id: str, *, ttl_us: int = 0) -> NewCheckpoint:
    return NewCheckpoint(
        thread_id=thread_id,
        checkpoint_ns="",
        checkpoint_id=checkpoint_id,
        parent_id="",
        checkpoint=Blob("b", checkpoint_id.encode()),
        metadata=Blob("b", b""),
        metadata_json="{}",
        run_id=None,
        channel_versions={"c": checkpoint_id},
        new_values={("c", checkpoint_id): Blob("b", b"value")},
        ttl_us=ttl_us,
    )


def everything(thread_id: str = "") -> ListQuery:
    return ListQuery(
        thread_id=thread_id,
        checkpoint_ns=None,
        before="",
        metadata=(),
        page_size=100,
        remaining=None,
        after=None,
    )


async def listed(store: Store, now_us: int, thread_id: str = "") -> list[str]:
    page, _ = await store.threads.list_checkpoints("ns", everything(thread_id), now_us)
    return [c.checkpoint_id for c in page]


async def test_a_thread_is_not_read_once_its_ttl_after_the_newest_save_has_passed(
    store: Store,
) -> None:
    await store.threads.put_checkpoint("ns", checkpoint("t-1", "cp-1", ttl_us=SECOND), NOW)
    await store.threads.put_checkpoint("ns", checkpoint("t-1", "cp-2", ttl_us=10 * SECOND), NOW)
    await store.threads.put_checkpoint("ns", checkpoint("t-2", "cp-3"), NOW)

    later = NOW + 10 * SECOND
    assert await listed(store, later - 1) == ["cp-3", "cp-2", "cp-1"]
    assert await listed(store, later) == ["cp-3"]
    got = await store.threads.get_checkpoint("ns", "t-2", "", "", later)
    assert got.checkpoint_id == "cp-3"


async def test_writes_into_an_expired_thread_start_it_afresh(store: Store) -> None:
    await store.threads.put_checkpoint("ns", checkpoint("t-1", "cp-1", ttl_us=SECOND), NOW)
    key = CheckpointKey(checkpoint_id="cp-1", thread_id="t-1", checkpoint_ns="")
    await store.threads.put_writes("ns", key, "task", "", [NewWrite("c", 0, old)], NOW)

    later = NOW + 2 * SECOND
    await store.threads.put_writes("ns", key, "task", "", [NewWrite("c", 1, new)], later)
    await store.threads.put_checkpoint("ns", checkpoint("t-1", "cp-1"), later)

    got = await store.threads.get_checkpoint("ns", "t-1", "", "cp-1", later)
    assert [w.value.data for w in got.pending_writes] == [b"new"]


async def test_a_save_into_an_expired_thread_starts_it_afresh(store: Store) -> None:
    await store.threads.put_checkpoint("ns", checkpoint("t-1", "cp-1", ttl_us=SECOND), NOW)

    await store.threads.put_checkpoint("ns", checkpoint("t-1", "cp-2"), NOW + 2 * SECOND)

    assert await listed(store, NOW + 100 * SECOND, "t-1") == ["cp-2"]


async def test_the_sweep_deletes_expired_threads_and_keeps_the_others(store: Store) -> None:
    await store.threads.put_checkpoint("ns", checkpoint("t-1", "cp-1", ttl_us=SECOND), NOW)
    await store.threads.put_checkpoint("ns", checkpoint("t-1", "cp-2", ttl_us=SECOND), NOW)
    await store.threads.put_checkpoint("ns", checkpoint("t-2", "cp-3", ttl_us=60 * SECOND), NOW)

    assert await store.threads.sweep(NOW + 2 * SECOND) == 2
    # Nothing of the swept thread is left to reappear, whatever the clock says.
    assert await listed(store, 0) == ["cp-3"]
    assert await store.threads.sweep(NOW + 2 * SECOND) == 0


async def test_a_copied_thread_expires_by_its_own_clock(store: Store) -> None:
    await store.threads.put_checkpoint("ns", checkpoint("t-1", "cp-1", ttl_us=10 * SECOND), NOW)

    await store.threads.copy_thread("ns", "t-1", "t-2", NOW + 5 * SECOND)

    assert await listed(store, NOW + 12 * SECOND) == ["cp-1"]
    page, _ = await store.threads.list_checkpoints("ns", everything("t-2"), NOW + 12 * SECOND)
    assert [c.thread_id for c in page] == ["t-2"]
