"""Decoding and checking request bodies, large ones in worker processes.

`decode_checked` is the one decode of every request that carries JSON
values: the screen of `wire_twins` (key counts, depth, finite numbers, at
C speed), the real decode, then `check_request`. For a small body it runs
on the event loop, which takes well under a millisecond.

For a large body it would hold the event loop for tens of milliseconds
(protobuf decodes holding the GIL, so no thread helps), so `CheckWorkers`
runs it in a worker process, on another core: the event loop only hands
the bytes over and reads the verdict. A body that passes is then decoded
again on the event loop, in pieces of about a millisecond
(`piecewise.decode_in_pieces`), since a handler needs the message itself
and a decoded message cannot cross processes any faster than it decodes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import multiprocessing
import os
from concurrent.futures.process import BrokenProcessPool

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

# Loads every request type, which a worker process finds by name.
from statekeeper_server import api_files  # noqa: F401
from statekeeper_server.errors import InvalidArgument, ServiceError, Unavailable
from statekeeper_server.request_checks import check_request
from statekeeper_server.wire_twins import screen_for

log = logging.getLogger("statekeeper.server")

UNDECODABLE = (
    "is not a valid encoding of this method's request message (corrupt bytes, a wrong wire"
    " type, text that is not UTF-8, or nesting deeper than protobuf allows)"
)

WORKER_NICENESS = 5
"""How much less CPU priority a worker takes than the server: when the cores are busy, the
event loop, which serves every caller, comes before the check of one large body."""


def decode_checked(message_class: type[Message], data: bytes) -> Message:
    """`data` decoded as `message_class`, screened and checked; raises the ServiceError
    (INVALID_ARGUMENT naming the field, or RESOURCE_EXHAUSTED) of a body to refuse."""
    screen = screen_for(message_class.DESCRIPTOR)
    twin = None
    try:
        if screen is not None:
            twin = screen.screen(data)
        request = message_class.FromString(data)
    except ServiceError:
        raise
    except Exception as exc:
        raise InvalidArgument("request", UNDECODABLE, "UNDECODABLE_REQUEST") from exc
    check_request(request, screened_twin=twin)
    return request


class CheckWorkers:
    """Worker processes that run `decode_checked` on large bodies, off the event loop.

    The processes start with the first body (`processes` of them at most)
    and stop at `close`. A worker that dies (killed, out of memory) is
    replaced and the body checked again once.
    """

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError("at least one worker process")
        self._processes = processes
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    async def check(self, message_class: type[Message], data: bytes) -> None:
        """Return if `data` decodes as `message_class` and passes every check; raise the
        ServiceError `decode_checked` would otherwise."""
        name = message_class.DESCRIPTOR.full_name
        for attempt in range(2):
            pool = self._pool_for_use()
            try:
                refusal = await asyncio.get_running_loop().run_in_executor(
                    pool, _verdict, name, data
                )
            except BrokenProcessPool:
                self._replace(pool)
                log.warning("a request check worker died; started another (attempt %d)", attempt)
                continue
            if refusal is not None:
                raise refusal
            return
        raise Unavailable("CHECK_UNAVAILABLE", "the request could not be checked; try again")

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers running now (none before the first check)."""
        if self._pool is None:
            return []
        processes = getattr(self._pool, "_processes", None) or {}
        return sorted(process.pid for process in processes.values() if process.is_alive())

    def close(self) -> None:
        """Stop the worker processes (checks still running are abandoned)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _pool_for_use(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self._processes,
                # Never fork: the gRPC core's threads and locks do not survive it.
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
            )
        return self._pool

    def _replace(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        if self._pool is broken:
            broken.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _start_worker() -> None:
    os.nice(WORKER_NICENESS)


def _verdict(message_name: str, data: bytes) -> ServiceError | None:
    """In a worker: the refusal of `data` as the request `message_name`, or None."""
    try:
        decode_checked(_message_class(message_name), data)
    except ServiceError as error:
        error.__cause__ = error.__context__ = None
        error.__traceback__ = None
        return error
    return None


@functools.cache
def _message_class(name: str) -> type[Message]:
    """The request type called `name` (`api_files` loaded every one)."""
    return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(name))
