"""The load generator: spawned processes that drive a server through grpc.aio.

The orchestrator (`bench/run.py`) never speaks gRPC itself; it hands
coroutine functions to `Generators`, a pool of spawned processes, so that
the load always comes from another process than the server's. Inside a
generator, requests are serialized once up front and sent as raw bytes
(no serializer on the call path) and responses are counted as bytes, so
the generator spends its time on gRPC only; the echo reference is driven
by exactly the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import resource
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Any

import grpc

Metadata = tuple[tuple[str, str], ...] | None
"""What a call sends besides its request: `(("authorization", "Bearer ..."),)`, or nothing."""
UNAVAILABLE_CODES = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE)
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Separate channels really are separate connections.
    ("grpc.use_local_subchannel_pool", 1),
]


class ServiceUnavailable(Exception):
    """The server does not offer what a scenario needs (yet): not a harness failure."""


class RpcFailed(Exception):
    """The server answered a benchmark call with an error (picklable summary)."""


def method(service: str, name: str) -> str:
    """The full path of a statekeeper method, such as `EventLogService/AppendEvent`."""
    return f"/statekeeper.v1.{service}/{name}"


def check_rpc_error(exc: grpc.aio.AioRpcError, what: str) -> Exception:
    """ServiceUnavailable for an unimplemented or unavailable service, else RpcFailed."""
    detail = f"{what}: {exc.code().name}: {exc.details()}"
    if exc.code() in UNAVAILABLE_CODES:
        return ServiceUnavailable(detail)
    return RpcFailed(detail)


@contextlib.asynccontextmanager
async def rpc_errors(what: str) -> AsyncIterator[None]:
    """Turn gRPC errors into ServiceUnavailable / RpcFailed, which cross processes."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise check_rpc_error(exc, what) from None


@contextlib.asynccontextmanager
async def open_channels(target: str, count: int) -> AsyncIterator[list[grpc.aio.Channel]]:
    """`count` independent connections to `target`, ready to use."""
    channels = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(count)]
    try:
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), 20) for c in channels))
        yield channels
    finally:
        await asyncio.gather(*(c.close() for c in channels))


def raw_unary(channel: grpc.aio.Channel, path: str) -> grpc.aio.UnaryUnaryMultiCallable:
    """A unary call taking and returning bytes (no (de)serialization in the generator)."""
    return channel.unary_unary(path)


def raw_stream(channel: grpc.aio.Channel, path: str) -> grpc.aio.UnaryStreamMultiCallable:
    """A server-streaming call taking and returning bytes."""
    return channel.unary_stream(path)


CATCH_UP_LIMIT = 60.0
"""Seconds followers get to catch up before the server is deemed broken."""


async def all_caught_up(
    done: Callable[[], int], count: int, tasks: Sequence[asyncio.Task[None]]
) -> None:
    """Wait until `done()` reaches `count` (followers caught up), or fail.

    A follower task that ended with an error re-raises it; not catching up
    within CATCH_UP_LIMIT is RpcFailed (a server fault, not the harness's).
    """
    deadline = time.monotonic() + CATCH_UP_LIMIT
    while done() < count:
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise RpcFailed(f"only {done()} of {count} followers caught up in {CATCH_UP_LIMIT} s")
        await asyncio.sleep(0.01)


# -- statistics ------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile of `values` (nearest rank); 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


@dataclass
class Window:
    """Operations completed inside a measurement window, and what they cost."""

    operations: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    """CPU time the generator process spent inside the window."""
    extra: dict[str, float] = field(default_factory=dict)
    """Scenario-specific figures (page sizes, bytes, ...) of the first process."""

    @property
    def rate(self) -> float:
        """Operations per second."""
        return self.operations / self.seconds if self.seconds else 0.0

    @property
    def cpu_share(self) -> float:
        """Share of one core the generator used (1.0 = a whole core)."""
        return self.cpu_seconds / self.seconds if self.seconds else 0.0

    @property
    def p50(self) -> float:
        """Median latency in seconds."""
        return percentile(self.latencies, 0.50)

    @property
    def p99(self) -> float:
        """99th percentile latency in seconds."""
        return percentile(self.latencies, 0.99)

    @classmethod
    def merge(cls, windows: Sequence[Window]) -> Window:
        """One window from the same window measured by several processes."""
        return cls(
            operations=sum(w.operations for w in windows),
            seconds=max((w.seconds for w in windows), default=0.0),
            latencies=[x for w in windows for x in w.latencies],
            cpu_seconds=sum(w.cpu_seconds for w in windows),
            extra=windows[0].extra if windows else {},
        )


def process_cpu() -> float:
    """CPU seconds this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_in_window(cpu_before: float, began: float, duration: float) -> float:
    """CPU seconds used since `cpu_before` (read at monotonic `began`), scaled to a window
    of `duration` when the work ran longer (so the share of a core stays right)."""
    elapsed = max(duration, time.monotonic() - began)
    return (process_cpu() - cpu_before) * duration / elapsed


async def sleep_until(wall_time: float) -> None:
    """Sleep until `time.time()` reaches `wall_time` (shared by all generator processes)."""
    delay = wall_time - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def closed_loop(
    call: Callable[[int], Awaitable[int]],
    concurrency: int,
    start_at: float,
    duration: float,
) -> Window:
    """`concurrency` callers each repeat `call(caller)` until the window ends.

    Calls start right away (the time before `start_at` is the warm-up); only
    calls that start and end inside [start_at, start_at + duration] count.
    `call` returns how many operations it completed (events, jobs, ...).
    """
    end_at = start_at + duration
    window = Window(seconds=duration)
    marks: dict[str, float] = {}

    async def caller(index: int) -> None:
        while True:
            started_wall = time.time()
            if started_wall >= end_at:
                return
            started = time.perf_counter()
            done = await call(index)
            elapsed = time.perf_counter() - started
            if started_wall >= start_at and started_wall + elapsed <= end_at:
                window.operations += done
                window.latencies.append(elapsed)

    async def cpu_marks() -> None:
        await sleep_until(start_at)
        marks["start"] = process_cpu()
        await sleep_until(end_at)
        marks["end"] = process_cpu()

    await asyncio.gather(cpu_marks(), *(caller(i) for i in range(concurrency)))
    window.cpu_seconds = marks["end"] - marks["start"]
    return window


async def unary_load(
    target: str,
    path: str,
    requests: Sequence[bytes],
    concurrency: int,
    channels: int,
    start_at: float,
    duration: float,
    per_call: int = 1,
    metadata: Metadata = None,
) -> Window:
    """Closed-loop unary calls: caller i sends `requests[i % len]` on channel i % channels.

    Each call counts as `per_call` operations (events per AppendEvents, say)
    and carries `metadata` (such as a bearer token).
    """
    async with open_channels(target, channels) as chans:
        calls = [raw_unary(chans[i % channels], path) for i in range(concurrency)]

        async def call(index: int) -> int:
            await calls[index](requests[index % len(requests)], timeout=60, metadata=metadata)
            return per_call

        async with rpc_errors(path):
            await call(0)
            return await closed_loop(call, concurrency, start_at, duration)


PROBE_PAUSE = 0.005
"""Seconds a latency probe waits between its calls, so that it adds little load itself."""
PROBE_TIMEOUT = 60.0


async def latency_probe(
    target: str,
    calls: Sequence[tuple[str, str, bytes]],
    start_at: float,
    duration: float,
    pause: float = PROBE_PAUSE,
) -> Window:
    """Another caller: one process sends `calls` (label, path, request) in turn, one at a time.

    It starts at once (the time before `start_at` is its warm-up) and keeps
    the latency of each call that starts and ends inside the window. The
    window's latencies are all calls'; `extra` holds `<label> p50`, `<label>
    p99` (seconds) and `<label> calls` per label, and `failed <CODE>` counts
    (a failed call's wait counts as its latency: the caller waited that long).
    """
    end_at = start_at + duration
    window = Window(seconds=duration)
    by_label: dict[str, list[float]] = {label: [] for label, _, _ in calls}
    async with open_channels(target, 1) as (channel,):
        stubs = [(label, raw_unary(channel, path), request) for label, path, request in calls]
        async with rpc_errors("latency probe"):
            for _, stub, request in stubs:
                await stub(request, timeout=PROBE_TIMEOUT)
        cpu_start: float | None = None
        index = 0
        while True:
            started_wall = time.time()
            if started_wall >= end_at:
                break
            if cpu_start is None and started_wall >= start_at:
                cpu_start = process_cpu()
            label, stub, request = stubs[index % len(stubs)]
            index += 1
            started = time.perf_counter()
            try:
                await stub(request, timeout=PROBE_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    raise check_rpc_error(exc, label) from None
                key = f"failed {exc.code().name}"
                window.extra[key] = window.extra.get(key, 0.0) + 1
            elapsed = time.perf_counter() - started
            if started_wall >= start_at and started_wall + elapsed <= end_at:
                window.latencies.append(elapsed)
                window.operations += 1
                by_label[label].append(elapsed)
            await asyncio.sleep(pause)
        window.cpu_seconds = process_cpu() - cpu_start if cpu_start is not None else 0.0
    for label, latencies in by_label.items():
        window.extra[f"{label} p50"] = percentile(latencies, 0.50)
        window.extra[f"{label} p99"] = percentile(latencies, 0.99)
        window.extra[f"{label} calls"] = float(len(latencies))
    return window


async def unary_many(
    target: str,
    path: str,
    requests: Sequence[bytes],
    concurrency: int,
    metadata: Metadata = None,
) -> int:
    """Send every request once, `concurrency` at a time (preloading), each with `metadata`;
    returns bytes received."""
    async with open_channels(target, max(1, min(4, concurrency // 8))) as chans:
        calls = [raw_unary(c, path) for c in chans]
        received = 0
        next_index = 0

        async def worker(worker_index: int) -> None:
            nonlocal next_index, received
            call = calls[worker_index % len(calls)]
            while next_index < len(requests):
                request = requests[next_index]
                next_index += 1
                received += len(await call(request, timeout=120, metadata=metadata))

        async with rpc_errors(path):
            await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return received


# -- the pool of generator processes ---------------------------------------


def _serve_tasks(connection: Connection) -> None:
    """A generator process: run each (function, kwargs) received with asyncio.run.

    After a task that raised, the process sends the error and exits: an
    interrupted run can leave grpc.aio bound to its closed event loop (calls
    of later runs would never complete), so a failed process is not reused.
    """
    while True:
        task = connection.recv()
        if task is None:
            return
        function, kwargs = task
        try:
            result = asyncio.run(function(**kwargs))
        except BaseException as exc:
            try:
                connection.send((False, exc))
            except Exception:
                connection.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))
            return
        connection.send((True, result))


class _Worker:
    """One generator process and the pipe to it."""

    def __init__(self) -> None:
        context = get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve_tasks, args=(child,), daemon=True)
        self.process.start()
        child.close()

    def run(self, function: Callable[..., Awaitable[Any]], kwargs: dict[str, Any]) -> Any:
        """Run the task in the process; its result, or its exception re-raised here."""
        self.connection.send((function, kwargs))
        try:
            ok, value = self.connection.recv()
        except EOFError:
            raise RuntimeError(f"generator process {self.process.pid} died") from None
        if not ok:
            raise value
        return value

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.is_alive()

    def stop(self) -> None:
        """Ask the process to exit, and make sure it does."""
        with contextlib.suppress(OSError, BrokenPipeError):
            self.connection.send(None)
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class Generators:
    """Spawned processes running load coroutines, a task at a time each.

    Tasks submitted together run in parallel on different processes (up to
    `processes` of them; more wait for a free process). A process whose task
    failed is replaced by a fresh one.
    """

    def __init__(self, processes: int = 4) -> None:
        self.processes = processes
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._workers = [_Worker() for _ in range(processes)]
        for worker in self._workers:
            self._idle.put(worker)
        for done in [self.submit(_ready) for _ in range(processes)]:
            done.result()

    def submit(self, function: Callable[..., Awaitable[Any]], **kwargs: Any) -> Future[Any]:
        """Run `function(**kwargs)` in a generator process; its result comes back pickled."""
        future: Future[Any] = Future()

        def run() -> None:
            worker = self._idle.get()
            try:
                future.set_result(worker.run(function, kwargs))
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                if not worker.alive or future.exception() is not None:
                    worker.stop()
                    worker = self._replace(worker)
                self._idle.put(worker)

        threading.Thread(target=run, daemon=True).start()
        return future

    def _replace(self, worker: _Worker) -> _Worker:
        fresh = _Worker()
        self._workers[self._workers.index(worker)] = fresh
        return fresh

    def run(self, function: Callable[..., Awaitable[Any]], **kwargs: Any) -> Any:
        """Run `function(**kwargs)` in a generator process and wait for its result."""
        return self.submit(function, **kwargs).result()

    def close(self) -> None:
        """Stop the generator processes."""
        for worker in self._workers:
            worker.stop()


async def _ready() -> int:
    """Nothing: makes a fresh process import everything before the first measurement."""
    return os.getpid()
