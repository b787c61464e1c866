"""ThreadCheckpointService end to end: a real server on each backend, through the client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

import statekeeper
from statekeeper.threads import ThreadsClient, TypedValue
from statekeeper.v1 import thread_checkpoints_pb2 as pb
from statekeeper.v1 import thread_checkpoints_pb2_grpc as pb_grpc
from statekeeper_server.limits import MAX_FILTER_KEYS, MAX_THREAD_BLOB_BYTES, MIB
from statekeeper_server.stores.thread_checkpoints import ListQuery
from tests.harness import running_app
from tests.rpc_errors import bad_request_fields, error_info
from tests.waiting import until_async

CHECKPOINT: TypedValue = ("msgpack", b"\x81\xa2id\x00\xff")
METADATA: TypedValue = ("json", b'{"step": 1}')


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[statekeeper.AsyncClient]:
    async with (
        running_app(store_url) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as connected,
    ):
        yield connected


@pytest.fixture
def threads(client: statekeeper.AsyncClient) -> ThreadsClient:
    return client.threads


@pytest.fixture
def stub(client: statekeeper.AsyncClient) -> pb_grpc.ThreadCheckpointServiceAsyncStub:
    return pb_grpc.ThreadCheckpointServiceStub(client.channel)


async def put(threads: ThreadsClient, thread_id: str, checkpoint_id: str, **kwargs: Any) -> None:
    await threads.put_checkpoint(thread_id, checkpoint_id, CHECKPOINT, METADATA, **kwargs)


async def ids(listing: AsyncIterator[pb.ThreadCheckpoint]) -> list[str]:
    return [c.checkpoint_id async for c in listing]


async def not_found(call: Awaitable[object]) -> bool:
    """Whether `call` fails with NOT_FOUND."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code() == grpc.StatusCode.NOT_FOUND
    return False


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# -- round trips ---------------------------------------------------------------------


async def test_a_checkpoint_round_trips_its_bytes_exactly(threads: ThreadsClient) -> None:
    every_byte = bytes(range(256)) * 3
    await threads.put_checkpoint(
        "t-1",
        "cp-1",
        ("msgpack", every_byte),
        ("json", b"\x00meta"),
        checkpoint_ns="parent:1|child:2",
        parent_checkpoint_id="cp-0",
        metadata_fields={"source": "loop", "step": 3},
        channel_versions={"messages": "00001.5", "empty": "00001.7"},
        new_channel_values={
            ("messages", "00001.5"): ("pickle", every_byte[::-1]),
            ("empty", "00001.7"): ("empty", b""),
        },
    )

    got = await threads.get_checkpoint("t-1", "cp-1", checkpoint_ns="parent:1|child:2")

    assert got is not None
    assert (got.checkpoint.type, got.checkpoint.data) == ("msgpack", every_byte)
    assert (got.metadata.type, got.metadata.data) == ("json", b"\x00meta")
    assert got.parent_checkpoint_id == "cp-0"
    assert [(v.channel, v.version) for v in got.channel_versions] == [
        ("empty", "00001.7"),
        ("messages", "00001.5"),
    ]
    assert {(v.channel, v.version, v.value.type, v.value.data) for v in got.channel_values} == {
        ("messages", "00001.5", "pickle", every_byte[::-1]),
        ("empty", "00001.7", "empty", b""),
    }


async def test_without_an_id_get_returns_the_newest_checkpoint_of_the_namespace(
    threads: ThreadsClient,
) -> None:
    for checkpoint_id in ("cp-2", "cp-3", "cp-1"):
        await put(threads, "t-1", checkpoint_id)
    await put(threads, "t-1", "cp-9", checkpoint_ns="sub")

    got = await threads.get_checkpoint("t-1")

    assert got is not None
    assert got.checkpoint_id == "cp-3"


async def test_a_thread_without_checkpoints_is_not_found(
    threads: ThreadsClient, stub: pb_grpc.ThreadCheckpointServiceAsyncStub
) -> None:
    error = await rpc_error(threads.get_checkpoint("nobody"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(stub.GetThreadCheckpoint(pb.GetThreadCheckpointRequest(thread_id="x")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(error).reason == "NO_CHECKPOINT"


async def test_a_channel_version_is_stored_once_and_shared_by_later_checkpoints(
    threads: ThreadsClient,
) -> None:
    versions = {"messages": "1", "counter": "1"}
    await put(
        threads,
        "t-1",
        "cp-1",
        channel_versions=versions,
        new_channel_values={("messages", "1"): ("b", b"hello"), ("counter", "1"): ("b", b"1")},
    )
    # The next step changes one channel; the other's value is not sent again, and a
    # value sent again for a stored version does not replace it.
    await put(
        threads,
        "t-1",
        "cp-2",
        channel_versions={"messages": "1", "counter": "2"},
        new_channel_values={("counter", "2"): ("b", b"2"), ("messages", "1"): ("b", b"other")},
    )

    got = await threads.get_checkpoint("t-1", "cp-2")

    assert got is not None
    assert {v.channel: v.value.data for v in got.channel_values} == {
        "messages": b"hello",
        "counter": b"2",
    }


# -- pending writes ------------------------------------------------------------------


async def test_writes_with_a_negative_index_replace_and_others_are_kept_once(
    threads: ThreadsClient,
) -> None:
    await put(threads, "t-1", "cp-1")
    await threads.put_writes(
        "t-1", "cp-1", "task-a", [("out", 0, ("b", b"first")), ("__error__", -1, ("b", b"e1"))]
    )
    await threads.put_writes(
        "t-1", "cp-1", "task-a", [("out", 0, ("b", b"second")), ("__error__", -1, ("b", b"e2"))]
    )

    got = await threads.get_checkpoint("t-1", "cp-1")

    assert got is not None
    assert [(w.task_id, w.idx, w.channel, w.value.data) for w in got.pending_writes] == [
        ("task-a", -1, "__error__", b"e2"),
        ("task-a", 0, "out", b"first"),
    ]


async def test_writes_are_returned_ordered_by_task_path_task_and_index(
    threads: ThreadsClient,
) -> None:
    await put(threads, "t-1", "cp-1")
    await threads.put_writes("t-1", "cp-1", "task-b", [("x", 1, ("b", b"b1"))], task_path="~a")
    await threads.put_writes(
        "t-1", "cp-1", "task-c", [("x", 1, ("b", b"c1")), ("x", 0, ("b", b"c0"))], task_path="~a"
    )
    await threads.put_writes("t-1", "cp-1", "task-a", [("x", 0, ("b", b"a0"))], task_path="~b")

    got = await threads.get_checkpoint("t-1", "cp-1")

    assert got is not None
    assert [w.value.data for w in got.pending_writes] == [b"b1", b"c0", b"c1", b"a0"]


async def test_writes_sent_before_their_checkpoint_show_once_it_is_stored(
    threads: ThreadsClient,
) -> None:
    await threads.put_writes("t-1", "cp-1", "task", [("x", 0, ("b", b"early"))])

    await put(threads, "t-1", "cp-1")

    got = await threads.get_checkpoint("t-1", "cp-1")
    assert got is not None
    assert [w.value.data for w in got.pending_writes] == [b"early"]


# -- listing -------------------------------------------------------------------------


async def test_list_is_newest_first_and_honours_before_and_limit(threads: ThreadsClient) -> None:
    for n in (3, 1, 4, 2, 5):
        await put(threads, "t-1", f"cp-{n}")
    await put(threads, "t-2", "cp-9")

    assert await ids(threads.list_checkpoints("t-1")) == ["cp-5", "cp-4", "cp-3", "cp-2", "cp-1"]
    assert await ids(threads.list_checkpoints("t-1", before="cp-4")) == ["cp-3", "cp-2", "cp-1"]
    assert await ids(threads.list_checkpoints("t-1", limit=2)) == ["cp-5", "cp-4"]
    assert await ids(threads.list_checkpoints("t-1", limit=3, page_size=1)) == [
        "cp-5",
        "cp-4",
        "cp-3",
    ]


async def test_list_without_a_thread_covers_every_thread_and_namespace_filter_applies(
    threads: ThreadsClient,
) -> None:
    await put(threads, "t-1", "cp-1")
    await put(threads, "t-2", "cp-2")
    await put(threads, "t-2", "cp-3", checkpoint_ns="sub")

    assert await ids(threads.list_checkpoints()) == ["cp-3", "cp-2", "cp-1"]
    assert await ids(threads.list_checkpoints(checkpoint_ns="")) == ["cp-2", "cp-1"]
    assert await ids(threads.list_checkpoints("t-2", checkpoint_ns="sub")) == ["cp-3"]


async def test_list_filters_on_top_level_metadata_equality(threads: ThreadsClient) -> None:
    await put(threads, "t-1", "cp-1", metadata_fields={"source": "input", "step": 1})
    await put(threads, "t-1", "cp-2", metadata_fields={"source": "loop", "step": 2})
    await put(threads, "t-1", "cp-3", metadata_fields={"source": "loop", "step": "2"})

    assert await ids(threads.list_checkpoints("t-1", metadata_filter={"source": "loop"})) == [
        "cp-3",
        "cp-2",
    ]
    assert await ids(threads.list_checkpoints(metadata_filter={"source": "loop", "step": 2})) == [
        "cp-2"
    ]


async def test_list_pages_are_bounded_by_bytes(
    threads: ThreadsClient, stub: pb_grpc.ThreadCheckpointServiceAsyncStub
) -> None:
    big = ("b", b"x" * (MAX_THREAD_BLOB_BYTES - 1024))
    for n in range(4):
        await threads.put_checkpoint("t-1", f"cp-{n}", big, METADATA)

    first = await stub.ListThreadCheckpoints(pb.ListThreadCheckpointsRequest(thread_id="t-1"))
    listed = await ids(threads.list_checkpoints("t-1"))

    assert first.ByteSize() <= 4 * MIB
    assert 1 <= len(first.checkpoints) < 4
    assert first.next_page_token
    assert listed == ["cp-3", "cp-2", "cp-1", "cp-0"]


async def test_a_page_token_for_other_filters_is_refused(
    stub: pb_grpc.ThreadCheckpointServiceAsyncStub, threads: ThreadsClient
) -> None:
    for n in range(3):
        await put(threads, "t-1", f"cp-{n}")
    first = await stub.ListThreadCheckpoints(
        pb.ListThreadCheckpointsRequest(thread_id="t-1", page_size=1)
    )
    error = await rpc_error(
        stub.ListThreadCheckpoints(
            pb.ListThreadCheckpointsRequest(thread_id="t-2", page_token=first.next_page_token)
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == ["page_token"]


# -- deleting, copying, pruning ------------------------------------------------------


async def test_delete_thread_removes_every_namespace_of_that_thread_only(
    threads: ThreadsClient,
) -> None:
    await put(threads, "t-1", "cp-1")
    await put(threads, "t-1", "cp-2", checkpoint_ns="sub")
    await put(threads, "t-2", "cp-3")

    assert await threads.delete_thread("t-1") == 2
    assert await not_found(threads.get_checkpoint("t-1"))
    assert await not_found(threads.get_checkpoint("t-1", checkpoint_ns="sub"))
    assert await ids(threads.list_checkpoints()) == ["cp-3"]
    assert await threads.delete_thread("t-1") == 0


async def test_delete_runs_removes_the_checkpoints_of_those_runs_in_every_thread(
    threads: ThreadsClient,
) -> None:
    await put(threads, "t-1", "cp-1", metadata_fields={"run_id": "run-a"})
    await put(threads, "t-1", "cp-2", metadata_fields={"run_id": "run-b"})
    await put(threads, "t-2", "cp-3", metadata_fields={"run_id": "run-a"})
    await put(threads, "t-2", "cp-4", metadata_fields={"run_id": "run-c"})

    assert await threads.delete_runs(["run-a", "run-c"]) == 3
    assert await ids(threads.list_checkpoints()) == ["cp-2"]


async def test_delete_runs_keeps_the_values_a_remaining_checkpoint_names(
    threads: ThreadsClient,
) -> None:
    await put(
        threads,
        "t-1",
        "cp-1",
        metadata_fields={"run_id": "run-a"},
        channel_versions={"a": "1", "b": "1"},
        new_channel_values={("a", "1"): ("b", b"a1"), ("b", "1"): ("b", b"b1")},
    )
    await put(
        threads,
        "t-1",
        "cp-2",
        metadata_fields={"run_id": "run-b"},
        channel_versions={"a": "1", "b": "2"},
        new_channel_values={("b", "2"): ("b", b"b2")},
    )

    assert await threads.delete_runs(["run-a"]) == 1

    kept = await threads.get_checkpoint("t-1", "cp-2")
    assert kept is not None
    assert {v.channel: v.value.data for v in kept.channel_values} == {"a": b"a1", "b": b"b2"}


async def test_copy_thread_copies_checkpoints_values_and_writes(threads: ThreadsClient) -> None:
    await put(
        threads,
        "t-1",
        "cp-1",
        channel_versions={"c": "1"},
        new_channel_values={("c", "1"): ("b", b"v1")},
        metadata_fields={"k": "v"},
    )
    await put(threads, "t-1", "cp-2", checkpoint_ns="sub", parent_checkpoint_id="cp-1")
    await threads.put_writes("t-1", "cp-1", "task", [("c", 0, ("b", b"w"))])

    assert await threads.copy_thread("t-1", "t-2") == 2

    copied = await threads.get_checkpoint("t-2", "cp-1")
    original = await threads.get_checkpoint("t-1", "cp-1")
    assert copied is not None
    assert original is not None
    copied.thread_id = original.thread_id
    assert copied == original
    assert await ids(threads.list_checkpoints("t-2")) == ["cp-2", "cp-1"]


async def test_prune_keep_latest_keeps_the_newest_per_namespace_with_its_values(
    threads: ThreadsClient,
) -> None:
    await put(
        threads,
        "t-1",
        "cp-1",
        channel_versions={"a": "1", "b": "1"},
        new_channel_values={("a", "1"): ("b", b"a1"), ("b", "1"): ("b", b"b1")},
    )
    await put(
        threads,
        "t-1",
        "cp-2",
        channel_versions={"a": "1", "b": "2"},
        new_channel_values={("b", "2"): ("b", b"b2")},
    )
    await put(threads, "t-1", "cp-0", checkpoint_ns="sub")
    await put(threads, "t-1", "cp-5", checkpoint_ns="sub")

    assert await threads.prune(["t-1"]) == 2

    assert await ids(threads.list_checkpoints("t-1")) == ["cp-5", "cp-2"]
    kept = await threads.get_checkpoint("t-1", "cp-2")
    assert kept is not None
    assert {v.channel: v.value.data for v in kept.channel_values} == {"a": b"a1", "b": b"b2"}


async def test_prune_delete_removes_the_threads(threads: ThreadsClient) -> None:
    await put(threads, "t-1", "cp-1")
    await put(threads, "t-2", "cp-2")

    assert await threads.prune(["t-1"], keep_latest=False) == 1
    assert await ids(threads.list_checkpoints()) == ["cp-2"]


# -- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.PutThreadCheckpointRequest(checkpoint_id="c"), "thread_id"),
        (pb.PutThreadCheckpointRequest(thread_id="../x", checkpoint_id="c"), "thread_id"),
        (pb.PutThreadCheckpointRequest(thread_id="t"), "checkpoint_id"),
        (pb.PutThreadCheckpointRequest(thread_id="t", checkpoint_id="c"), "checkpoint"),
        (
            pb.PutThreadCheckpointRequest(
                thread_id="t", checkpoint_id="c", checkpoint=pb.TypedBlob(type="b")
            ),
            "metadata",
        ),
        (
            pb.PutThreadCheckpointRequest(
                thread_id="t",
                checkpoint_id="c",
                checkpoint_ns="a\x00b",
                checkpoint=pb.TypedBlob(),
                metadata=pb.TypedBlob(),
            ),
            "checkpoint_ns",
        ),
        (
            pb.PutThreadCheckpointRequest(
                thread_id="t",
                checkpoint_id="c",
                checkpoint=pb.TypedBlob(),
                metadata=pb.TypedBlob(),
                new_channel_values=[pb.ChannelValue(channel="x", version="1")],
            ),
            "new_channel_values[0].value",
        ),
        (
            pb.PutThreadCheckpointRequest(
                thread_id="t",
                checkpoint_id="c",
                checkpoint=pb.TypedBlob(type="x" * 65),
                metadata=pb.TypedBlob(),
            ),
            "checkpoint.type",
        ),
    ],
)
async def test_a_bad_put_is_invalid_argument_naming_the_field(
    stub: pb_grpc.ThreadCheckpointServiceAsyncStub,
    threads: ThreadsClient,
    request_: pb.PutThreadCheckpointRequest,
    field: str,
) -> None:
    error = await rpc_error(stub.PutThreadCheckpoint(request_))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == [field]
    assert [c async for c in threads.list_checkpoints()] == []


async def test_a_negative_ttl_is_invalid_argument(
    stub: pb_grpc.ThreadCheckpointServiceAsyncStub,
) -> None:
    request = pb.PutThreadCheckpointRequest(
        thread_id="t", checkpoint_id="c", checkpoint=pb.TypedBlob(), metadata=pb.TypedBlob()
    )
    request.ttl.seconds = -1
    error = await rpc_error(stub.PutThreadCheckpoint(request))
    assert bad_request_fields(error) == ["ttl"]


async def test_a_blob_past_its_limit_is_resource_exhausted_naming_it(
    threads: ThreadsClient,
) -> None:
    error = await rpc_error(
        threads.put_checkpoint(
            "t-1",
            "cp-1",
            CHECKPOINT,
            METADATA,
            channel_versions={"c": "1"},
            new_channel_values={("c", "1"): ("b", b"x" * (MAX_THREAD_BLOB_BYTES + 1))},
        )
    )
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(error).metadata["field"] == "new_channel_values[0].value.data"
    assert await not_found(threads.get_checkpoint("t-1"))


async def test_a_checkpoint_whose_state_is_past_its_limit_stores_nothing(
    threads: ThreadsClient,
) -> None:
    half = ("b", b"x" * (MAX_THREAD_BLOB_BYTES // 2 + 1))
    await put(
        threads, "t-1", "cp-1", channel_versions={"a": "1"}, new_channel_values={("a", "1"): half}
    )

    error = await rpc_error(
        put(
            threads,
            "t-1",
            "cp-2",
            channel_versions={"a": "1", "b": "1"},
            new_channel_values={("b", "1"): half},
        )
    )

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(error).metadata["field"] == "new_channel_values"
    assert await ids(threads.list_checkpoints("t-1")) == ["cp-1"]


async def test_pending_writes_past_their_limit_store_nothing(threads: ThreadsClient) -> None:
    await put(threads, "t-1", "cp-1")
    chunk = ("b", b"x" * (MIB // 2))
    await threads.put_writes("t-1", "cp-1", "task", [("c", 0, chunk)])

    error = await rpc_error(threads.put_writes("t-1", "cp-1", "task", [("c", 1, chunk)]))

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(error).metadata["field"] == "writes"
    got = await threads.get_checkpoint("t-1", "cp-1")
    assert got is not None
    assert [w.idx for w in got.pending_writes] == [0]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ("prune_unspecified", "strategy"),
        ("delete_runs_empty", "run_ids"),
        ("delete_runs_bad", "run_ids[1]"),
        ("copy_to_itself", "target_thread_id"),
    ],
)
async def test_bad_maintenance_calls_are_invalid_argument_naming_the_field(
    stub: pb_grpc.ThreadCheckpointServiceAsyncStub, call: str, field: str
) -> None:
    calls: dict[str, Callable[[], Any]] = {
        "prune_unspecified": lambda: stub.PruneThreads(pb.PruneThreadsRequest(thread_ids=["t"])),
        "delete_runs_empty": lambda: stub.DeleteThreadRuns(pb.DeleteThreadRunsRequest()),
        "delete_runs_bad": lambda: stub.DeleteThreadRuns(
            pb.DeleteThreadRunsRequest(run_ids=["ok", "not ok"])
        ),
        "copy_to_itself": lambda: stub.CopyThread(
            pb.CopyThreadRequest(source_thread_id="t", target_thread_id="t")
        ),
    }
    error = await rpc_error(calls[call]())

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == [field]


# -- retention -----------------------------------------------------------------------


async def test_a_thread_expires_after_the_ttl_its_save_names(threads: ThreadsClient) -> None:
    await put(threads, "t-1", "cp-1", ttl=0.2)
    await put(threads, "t-2", "cp-2", ttl=0)

    await asyncio.sleep(0.3)

    assert await not_found(threads.get_checkpoint("t-1"))
    assert await ids(threads.list_checkpoints()) == ["cp-2"]


async def test_without_a_ttl_a_thread_follows_the_servers_checkpoint_ttl(store_url: str) -> None:
    async with (
        running_app(store_url, checkpoint_ttl=0.2) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        await put(client.threads, "t-1", "cp-1")
        await put(client.threads, "t-2", "cp-2", ttl=0)
        await asyncio.sleep(0.3)

        assert await ids(client.threads.list_checkpoints()) == ["cp-2"]


async def test_a_metadata_filter_of_too_many_keys_is_invalid_argument(
    stub: pb_grpc.ThreadCheckpointServiceAsyncStub,
) -> None:
    request = pb.ListThreadCheckpointsRequest()
    request.metadata_filter.update({f"k{n}": n for n in range(MAX_FILTER_KEYS + 1)})

    error = await rpc_error(stub.ListThreadCheckpoints(request))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == ["metadata_filter"]


async def test_a_listing_pages_through_the_longest_checkpoint_namespace(
    threads: ThreadsClient,
) -> None:
    longest = "\x01" * 1024
    for n in range(3):
        await put(threads, "t-1", f"cp-{n}", checkpoint_ns=longest)

    listed = await ids(threads.list_checkpoints("t-1", checkpoint_ns=longest, page_size=1))

    assert listed == ["cp-2", "cp-1", "cp-0"]


async def test_the_servers_sweep_deletes_expired_threads(store_url: str) -> None:
    async with (
        running_app(store_url, checkpoint_sweep_interval=0.05) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        await put(client.threads, "t-1", "cp-1", ttl=0.05)
        await put(client.threads, "t-2", "cp-2", ttl=0)

        async def stored_ids() -> list[str]:
            # At time 0 nothing has expired yet: what is listed is what is still stored.
            page, _ = await app.store.threads.list_checkpoints(
                "default",
                ListQuery(
                    thread_id="",
                    checkpoint_ns=None,
                    before="",
                    metadata=(),
                    page_size=10,
                    remaining=None,
                    after=None,
                ),
                0,
            )
            return [c.checkpoint_id for c in page]

        async def swept() -> bool:
            return await stored_ids() == ["cp-2"]

        await until_async(swept, "the expired thread is deleted")
