"""The bare reference: a grpc.aio server that does no work beyond moving the bytes.

It answers the same calls as statekeeper's hot paths with pre-built
responses of the same size (built by `bench.payloads`), with no store, no
validation and no interceptor: the limit of a Python gRPC server on this
machine. Requests arrive as raw bytes and are not decoded, except by the
relay, which must read the run id and the event to fan it out, and by
`AppendEventDurable`, which writes each call's rows as statekeeper's file
store would (SQLite on a worker thread, a durable group commit) and shows
what that write costs a Python gRPC server without the rest of
statekeeper.

Run as its own process, like the server: `python bench/echo_server.py
--listen 127.0.0.1:PORT`; it prints `echo listening on ...` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import payloads, peers
from statekeeper.v1 import events_pb2, jobs_pb2

SERVICE = "bench.Echo"
Context = grpc.aio.ServicerContext[Any, Any]


def method(name: str) -> str:
    """The full method path of an echo call."""
    return f"/{SERVICE}/{name}"


class Relay:
    """Minimal publish/subscribe: each published event goes to the run's subscribers."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[bytes]]] = defaultdict(set)
        self._seqs: dict[str, int] = defaultdict(int)

    async def publish(self, request: bytes, context: Context) -> bytes:
        """Wrap the event in an envelope, encode it once and hand it to every subscriber."""
        append = events_pb2.AppendEventRequest.FromString(request)
        self._seqs[append.run_id] += 1
        message = events_pb2.ReplayEventsResponse(
            batch=events_pb2.EventBatch(
                envelopes=[
                    events_pb2.EventEnvelope(
                        run_id=append.run_id,
                        seq=self._seqs[append.run_id],
                        event=append.input.event,
                    )
                ]
            )
        ).SerializeToString()
        for subscriber in self._subscribers[append.run_id]:
            subscriber.put_nowait(message)
        return APPEND_RESPONSE

    async def subscribe(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        """Stream everything published to the requested run from now on."""
        run = events_pb2.ReplayEventsRequest.FromString(request).run_id
        inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._subscribers[run].add(inbox)
        try:
            yield CAUGHT_UP
            while True:
                yield await inbox.get()
        finally:
            self._subscribers[run].discard(inbox)


APPEND_RESPONSE = payloads.append_response()
CAUGHT_UP = events_pb2.ReplayEventsResponse(
    caught_up=events_pb2.CaughtUp(last_seq=0)
).SerializeToString()


class ThreadHop:
    """Answers calls from a worker thread: the round trip a durable write pays.

    Calls queue for one thread, which takes every call waiting, hands their
    requests to `work` (none: no work at all) and answers them on the event
    loop in one callback, as statekeeper's SQLite writer does with a group
    commit.
    """

    def __init__(self, work: Callable[[list[bytes]], None] | None = None) -> None:
        self._work = work
        self._calls: queue.SimpleQueue[tuple[asyncio.Future[bytes], bytes, bytes]] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._run, name="echo-hop", daemon=True).start()

    def handler(self, response: bytes) -> grpc.RpcMethodHandler:
        """A unary method answering `response` once the worker thread has seen the call."""

        async def handle(request: bytes, context: Context) -> bytes:
            answered = asyncio.get_running_loop().create_future()
            self._calls.put((answered, request, response))
            return await answered

        return grpc.unary_unary_rpc_method_handler(handle)

    def _run(self) -> None:
        while True:
            calls = [self._calls.get()]
            while True:
                try:
                    calls.append(self._calls.get_nowait())
                except queue.Empty:
                    break
            if self._work is not None:
                self._work([request for _, request, _ in calls])
            calls[0][0].get_loop().call_soon_threadsafe(_answer, calls)


INSERT_EVENT = peers.INSERT_EVENT.format("?, ?, ?, ?")
UPSERT_RUN = peers.UPSERT_RUN.format("?, ?, ?, ?")


class DurableRows:
    """The rows of appends written the way statekeeper's file store writes them, with
    nothing else: per call its envelope's row and its run's counter, per group of
    calls one transaction and one fsync (SQLite, WAL, synchronous=FULL).

    Runs on the worker thread of a `ThreadHop`, which opens its own connection.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._seqs: dict[str, int] = defaultdict(int)
        self._envelope = peers.envelope_bytes()

    def __call__(self, requests: list[bytes]) -> None:
        """Write one row per request (an AppendEventRequest) and commit them together."""
        if self._conn is None:
            self._conn = peers.open_raw_sqlite(self._path)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        now = time.time_ns() // 1000
        for request in requests:
            run = events_pb2.AppendEventRequest.FromString(request).run_id
            self._seqs[run] += 1
            conn.execute(INSERT_EVENT, ("default", run, self._seqs[run], self._envelope))
            conn.execute(UPSERT_RUN, ("default", run, self._seqs[run], now))
        conn.execute("COMMIT")


def _answer(calls: list[tuple[asyncio.Future[bytes], bytes, bytes]]) -> None:
    for answered, _, response in calls:
        if not answered.done():
            answered.set_result(response)


def _unary(response: bytes) -> grpc.RpcMethodHandler:
    async def handle(request: bytes, context: Context) -> bytes:
        return response

    return grpc.unary_unary_rpc_method_handler(handle)


_pages: dict[int, bytes] = {}


def _page(events_per_page: int) -> bytes:
    if events_per_page not in _pages:
        _pages[events_per_page] = payloads.replay_page(events_per_page)
    return _pages[events_per_page]


async def replay(request: bytes, context: Context) -> AsyncIterator[bytes]:
    """`pages` pre-built pages of `events_per_page` envelopes, then CaughtUp.

    The request is JSON: {"pages": N, "events_per_page": M}.
    """
    spec = json.loads(request)
    page = _page(int(spec["events_per_page"]))
    for _ in range(int(spec["pages"])):
        yield page
    yield CAUGHT_UP


async def flood(request: bytes, context: Context) -> AsyncIterator[bytes]:
    """Pre-built pages for as long as the caller keeps the stream (flow control bounds it)."""
    page = _page(int(json.loads(request)["events_per_page"]))
    while True:
        yield page


async def idle(request: bytes, context: Context) -> AsyncIterator[bytes]:
    """CaughtUp, then nothing until the caller leaves (an idle follower)."""
    yield CAUGHT_UP
    await asyncio.Event().wait()


def handlers(batch_size: int, lease_size: int, scratch: Path) -> dict[str, grpc.RpcMethodHandler]:
    """Every echo method, with responses the size of statekeeper's; `scratch` is a
    directory for the durable rows."""
    relay = Relay()
    enqueue = jobs_pb2.EnqueueJobsResponse(
        jobs=[payloads.job(i) for i in range(lease_size)], created=[True] * lease_size
    )
    lease = jobs_pb2.LeaseJobsResponse(
        jobs=[payloads.job(i, leased=True) for i in range(lease_size)]
    )
    complete = jobs_pb2.CompleteJobResponse(job=payloads.job(leased=True))
    return {
        "AppendEvent": _unary(APPEND_RESPONSE),
        "AppendEventHop": ThreadHop().handler(APPEND_RESPONSE),
        "AppendEventDurable": ThreadHop(DurableRows(scratch / "rows.db")).handler(APPEND_RESPONSE),
        "AppendEvents": _unary(payloads.append_batch_response(batch_size)),
        "EnqueueJobs": _unary(enqueue.SerializeToString()),
        "LeaseJobs": _unary(lease.SerializeToString()),
        "CompleteJob": _unary(complete.SerializeToString()),
        "Publish": grpc.unary_unary_rpc_method_handler(relay.publish),
        "Subscribe": grpc.unary_stream_rpc_method_handler(relay.subscribe),
        "Replay": grpc.unary_stream_rpc_method_handler(replay),
        "Flood": grpc.unary_stream_rpc_method_handler(flood),
        "Idle": grpc.unary_stream_rpc_method_handler(idle),
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
    }


async def echo(request: bytes, context: Context) -> bytes:
    """The request's bytes, as the response (what moving a message each way costs)."""
    return request


async def serve(listen: str, batch_size: int, lease_size: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ]
    )
    scratch = tempfile.TemporaryDirectory(prefix="statekeeper-bench-echo-")
    methods = handlers(batch_size, lease_size, Path(scratch.name))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    server.add_registered_method_handlers(SERVICE, methods)  # type: ignore[attr-defined]
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"echo listening on {listen}", file=sys.stderr, flush=True)
    await stop.wait()
    await server.stop(0.5)
    scratch.cleanup()


def main() -> None:
    """Parse the flags and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:50052")
    parser.add_argument("--batch-size", type=int, default=100, help="events per AppendEvents")
    parser.add_argument(
        "--lease-size", type=int, default=10, help="jobs per EnqueueJobs and per LeaseJobs"
    )
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.batch_size, args.lease_size))


if __name__ == "__main__":
    main()
