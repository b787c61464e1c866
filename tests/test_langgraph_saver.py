"""StatekeeperSaver beyond the conformance suite: its blocking methods, and the bytes it
keeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint

import statekeeper
from statekeeper.langgraph import StatekeeperSaver
from tests.harness import running_app


@pytest.fixture
async def saver(store_url: str) -> AsyncIterator[StatekeeperSaver]:
    async with (
        running_app(store_url) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        yield StatekeeperSaver(client)


def root(thread_id: str) -> dict[str, dict[str, str]]:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}


async def test_the_blocking_methods_work_from_another_thread(saver: StatekeeperSaver) -> None:
    checkpoint = create_checkpoint(empty_checkpoint(), None, 1)
    checkpoint["channel_values"] = {"data": b"\x00\xffbytes"}
    checkpoint["channel_versions"] = {"data": saver.get_next_version(None, None)}

    def use() -> tuple[object, list[str]]:
        config = saver.put(
            root("t-1"),
            checkpoint,
            {"source": "input", "step": 1},
            dict(checkpoint["channel_versions"]),
        )
        saver.put_writes(config, [("data", b"w")], "task-1")
        got = saver.get_tuple(config)
        listed = [t.config["configurable"]["checkpoint_id"] for t in saver.list(root("t-1"))]
        saver.delete_thread("t-1")
        return got, listed

    got, listed = await asyncio.to_thread(use)

    assert got is not None
    assert got.checkpoint["channel_values"] == {"data": b"\x00\xffbytes"}
    assert got.pending_writes == [("task-1", "data", b"w")]
    assert listed == [checkpoint["id"]]
    assert await saver.aget_tuple(root("t-1")) is None


async def test_a_blocking_method_on_the_savers_own_loop_is_refused(
    saver: StatekeeperSaver,
) -> None:
    with pytest.raises(RuntimeError, match="async methods"):
        saver.get_tuple(root("t-1"))


async def test_versions_sort_as_text_in_the_order_they_were_made(
    saver: StatekeeperSaver,
) -> None:
    versions = [saver.get_next_version(None, None)]
    for _ in range(20):
        versions.append(saver.get_next_version(versions[-1], None))
    assert versions == sorted(versions)


async def test_metadata_too_long_to_filter_on_in_the_server_is_filtered_in_the_saver(
    saver: StatekeeperSaver,
) -> None:
    long_note = "n" * 100_000
    for step, note in enumerate([long_note, "short"]):
        checkpoint = create_checkpoint(empty_checkpoint(), None, step)
        await saver.aput(root("t-1"), checkpoint, {"note": note, "step": step}, {})

    found = [t.metadata["step"] async for t in saver.alist(None, filter={"note": long_note})]

    assert found == [0]


async def test_channel_versions_come_back_as_they_were_saved_strings_or_not(
    saver: StatekeeperSaver,
) -> None:
    saved = {}
    for thread, versions in (("t-1", {"a": "00001.5", "b": "00002.5"}), ("t-2", {"a": 1})):
        checkpoint = create_checkpoint(empty_checkpoint(), None, 1)
        checkpoint["channel_values"] = {"a": "x"}
        checkpoint["channel_versions"] = dict(versions)
        await saver.aput(root(thread), checkpoint, {}, dict(versions))
        saved[thread] = versions

    for thread, versions in saved.items():
        got = await saver.aget_tuple(root(thread))
        assert got is not None
        assert got.checkpoint["channel_versions"] == versions
        assert got.checkpoint["channel_values"] == {"a": "x"}


async def test_a_channel_version_without_a_value_stores_no_value(
    saver: StatekeeperSaver,
) -> None:
    checkpoint = create_checkpoint(empty_checkpoint(), None, 1)
    checkpoint["channel_values"] = {"kept": [1]}
    checkpoint["channel_versions"] = {"kept": "1", "cleared": "1"}
    await saver.aput(root("t-1"), checkpoint, {}, {"kept": "1", "cleared": "1"})

    stored = await saver.client.threads.get_checkpoint("t-1")
    got = await saver.aget_tuple(root("t-1"))

    assert stored is not None
    assert [v.channel for v in stored.channel_values] == ["kept"]
    assert got is not None
    assert got.checkpoint["channel_values"] == {"kept": [1]}
    assert got.checkpoint["channel_versions"] == {"kept": "1", "cleared": "1"}


async def test_small_scalars_ride_in_the_checkpoint_and_other_values_are_stored_once(
    saver: StatekeeperSaver,
) -> None:
    values = {"none": None, "flag": True, "n": 7, "x": 0.5, "short": "s" * 64, "long": "l" * 65}
    versions = {channel: "1" for channel in [*values, "list"]}
    first = create_checkpoint(empty_checkpoint(), None, 1)
    first["channel_values"] = {**values, "list": [1]}
    first["channel_versions"] = dict(versions)
    config = await saver.aput(root("t-1"), first, {}, dict(versions))
    second = create_checkpoint(first, None, 2)
    second["channel_values"] = {**values, "list": [1]}
    await saver.aput(config, second, {}, {})

    stored = await saver.client.threads.get_checkpoint("t-1", second["id"])
    got = await saver.aget_tuple(root("t-1"))

    assert stored is not None
    assert sorted(v.channel for v in stored.channel_values) == ["list", "long"]
    assert got is not None
    assert got.checkpoint["id"] == second["id"]
    assert got.checkpoint["channel_values"] == {**values, "list": [1]}
