"""Running relays: every committed event of a namespace forwarded to a sink, at least once.

Each replica runs `RelayRunner`. It lists the relays of every namespace and
takes (or renews) the lease of each one whose sink it has; a relay whose
lease it holds gets a forwarder. On PostgreSQL the lease makes sure one
replica forwards a relay at a time; a replica that dies stops renewing,
and another takes the relay over once the lease lapses
(`--relay-lease-duration`); a replica that stops gives its leases back.

Each page of a run goes to the sink in one `publish_many`, which keeps
the order (JetStream: one message at a time, each once the one before is
acknowledged; Redis: one script appending them in order).

A forwarder is woken by every commit to a run of its namespace (on
PostgreSQL also those of other replicas, through LISTEN/NOTIFY) and looks
again at least every `--relay-poll-interval` seconds, so a lost wake-up
only delays. It reads the runs that have events after the relay's cursor,
publishes each run's events in seq order, and moves the cursor after the
acknowledgements, page by page and, on a failure, to the last message the
broker holds before raising. So a crash or an outage repeats at most the
unacknowledged end of a page; it never skips an event. Events of kinds the
relay does not forward advance the cursor without being sent. A sink that
fails is retried with a growing pause (at most MAX_RETRY_PAUSE); its
message is the relay's `last_error`. A message the broker refuses for good
stops the relay at that event (it is retried, never skipped) until the
operator fixes the broker or deletes the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field

from statekeeper_server.errors import ServiceError
from statekeeper_server.notifier import Notifier
from statekeeper_server.publish.messages import outgoing
from statekeeper_server.publish.sinks import SinkRejected, Sinks, SinkUnavailable
from statekeeper_server.services.job_runner import wait_for_wake
from statekeeper_server.stores.events import EventStore
from statekeeper_server.stores.relays import Lag, PendingRun, RelayStore, StoredRelay
from statekeeper_server.timestamps import now_us

log = logging.getLogger(__name__)

BACKLOG_RUNS = 64
"""Most runs a forwarder takes on in one pass."""
PARALLEL_RUNS = 8
"""Runs a forwarder publishes at once (each run in order, one message at a time)."""
PAGE_EVENTS = 200
"""Events read per page; the cursor moves after each page."""
MAX_RETRY_PAUSE = 2.0
FIRST_RETRY_PAUSE = 0.1
LAG_EVERY = 1.0
"""Seconds between two measurements of a relay's lag for the metrics."""


class LeaseLost(Exception):
    """The replica no longer holds the relay's lease: another one may run it now."""


@dataclass
class RelayState:
    """What the replica running a relay knows of it, for the metrics."""

    namespace: str
    name: str
    lag: Lag = field(default_factory=lambda: Lag(0, None))
    lag_measured_us: int = 0
    forwarded: int = 0

    @property
    def lag_seconds(self) -> float:
        """Seconds since the oldest event not yet forwarded was committed (0 for none)."""
        if self.lag.oldest_us is None:
            return 0.0
        return max(0.0, (self.lag_measured_us - self.lag.oldest_us) / 1_000_000)


def replica_id() -> str:
    """A name for this server process, unique across hosts and restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class RelayRunner:
    """Runs the relays whose lease this replica holds (see the module)."""

    def __init__(
        self,
        relays: RelayStore,
        events: EventStore,
        sinks: Sinks,
        notifier: Notifier,
        stopping: asyncio.Event,
        poll_interval: float,
        lease_seconds: float,
    ) -> None:
        self._relays = relays
        self._notifier = notifier
        self._commits: dict[tuple[str, str], tuple[str, asyncio.Event]] = {}
        """Per relay this replica runs: its run id prefix and the event its commits set."""
        self._events = events
        self._sinks = sinks
        self._stopping = stopping
        self._poll = poll_interval
        self._lease_us = int(lease_seconds * 1_000_000)
        self._renew_every = lease_seconds / 3
        self.owner = replica_id()
        self._running: dict[tuple[str, str, int], asyncio.Task[None]] = {}
        self.states: dict[tuple[str, str], RelayState] = {}
        """The relays this replica runs now, by (namespace, name)."""
        self._warned_sinks: set[str] = set()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look at the relays now (one was created or deleted through this replica)."""
        self._wake.set()

    def running(self) -> Iterator[RelayState]:
        """The state of each relay this replica runs."""
        return iter(list(self.states.values()))

    async def run(self) -> None:
        """Hold the leases of the relays and forward them until `stopping` is set."""
        self._notifier.listen(self._committed)
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    await self._claim_all()
                except ServiceError as exc:
                    log.warning("cannot read the relays: %s", exc)
                await wait_for_wake(self._wake, self._stopping, self._renew_every)
        finally:
            self._notifier.unlisten(self._committed)
            await self._stop_all()

    def _committed(self, key: Hashable) -> None:
        """Wake the forwarders of the namespace of a commit to an event log."""
        if not (isinstance(key, tuple) and len(key) == 3 and key[0] == "events"):
            return
        _, namespace, run_id = key
        for (relay_namespace, _), (prefix, wake) in self._commits.items():
            if relay_namespace == namespace and str(run_id).startswith(prefix):
                wake.set()

    async def _claim_all(self) -> None:
        held: set[tuple[str, str, int]] = set()
        for relay in await self._relays.list_all():
            if relay.spec.sink not in self._sinks:
                self._warn_missing_sink(relay)
                continue
            key = (relay.namespace, relay.spec.name, relay.create_us)
            if await self._relays.claim(
                relay.namespace, relay.spec.name, self.owner, self._lease_us
            ):
                held.add(key)
                task = self._running.get(key)
                if task is None or task.done():
                    self._running[key] = asyncio.create_task(self._forward(relay))
        for key in [key for key in self._running if key not in held]:
            self._running.pop(key).cancel()
            self.states.pop(key[:2], None)
            self._commits.pop(key[:2], None)

    def _warn_missing_sink(self, relay: StoredRelay) -> None:
        if relay.spec.sink not in self._warned_sinks:
            self._warned_sinks.add(relay.spec.sink)
            log.warning(
                "relay %s of namespace %s names sink %s, which this server does not have",
                relay.spec.name,
                relay.namespace,
                relay.spec.sink,
            )

    async def _stop_all(self) -> None:
        tasks = list(self._running.items())
        self._running.clear()
        self.states.clear()
        self._commits.clear()
        for _, task in tasks:
            task.cancel()
        for (namespace, name, _), task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(ServiceError):
                await self._relays.release(namespace, name, self.owner)

    async def _forward(self, relay: StoredRelay) -> None:
        """Forward the relay's events until its lease is lost or the server stops."""
        state = self.states[(relay.namespace, relay.spec.name)] = RelayState(
            relay.namespace, relay.spec.name
        )
        committed = asyncio.Event()
        self._commits[(relay.namespace, relay.spec.name)] = (
            relay.spec.run_id_prefix,
            committed,
        )
        pause = FIRST_RETRY_PAUSE
        error = relay.last_error
        while not self._stopping.is_set():
            committed.clear()
            try:
                await self._measure(relay, state)
                forwarded = await self._forward_backlog(relay, state)
                if error:
                    error = ""
                    await self._relays.report(relay.namespace, relay.spec.name, self.owner, "")
                pause = FIRST_RETRY_PAUSE
                if not forwarded:
                    await wait_for_wake(committed, self._stopping, self._poll)
                continue
            except LeaseLost:
                log.info("relay %s of %s: lease lost", relay.spec.name, relay.namespace)
                return
            except (SinkUnavailable, SinkRejected) as exc:
                if exc.message != error:
                    error = exc.message
                    log.warning("relay %s of %s: %s", relay.spec.name, relay.namespace, error)
                    with contextlib.suppress(ServiceError):
                        await self._relays.report(
                            relay.namespace, relay.spec.name, self.owner, error
                        )
                delay, pause = pause, min(pause * 2, MAX_RETRY_PAUSE)
            except ServiceError as exc:
                log.warning("relay %s of %s: %s", relay.spec.name, relay.namespace, exc)
                delay, pause = pause, min(pause * 2, MAX_RETRY_PAUSE)
            await wait_for_wake(asyncio.Event(), self._stopping, delay)

    async def _measure(self, relay: StoredRelay, state: RelayState) -> None:
        if now_us() - state.lag_measured_us >= LAG_EVERY * 1_000_000:
            state.lag = await self._relays.lag(
                relay.namespace, relay.spec.name, relay.spec.run_id_prefix
            )
            state.lag_measured_us = now_us()

    async def _forward_backlog(self, relay: StoredRelay, state: RelayState) -> int:
        """Forward the runs of one backlog pass; how many events were handled."""
        backlog = await self._relays.backlog(
            relay.namespace, relay.spec.name, relay.spec.run_id_prefix, BACKLOG_RUNS
        )
        if not backlog:
            # Nothing left to forward: the lag is known without measuring it.
            state.lag, state.lag_measured_us = Lag(0, None), now_us()
            return 0
        turns = asyncio.Semaphore(PARALLEL_RUNS)

        async def one(run: PendingRun) -> int:
            async with turns:
                return await self._forward_run(relay, state, run)

        outcomes = await asyncio.gather(*(one(run) for run in backlog), return_exceptions=True)
        handled = 0
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            handled += outcome
        return handled

    async def _advance(self, relay: StoredRelay, run: PendingRun, after: int, seq: int) -> None:
        """Move the run's cursor from `after` to `seq`; LeaseLost if the lease is gone."""
        if seq > after and not await self._relays.advance(
            relay.namespace, relay.spec.name, self.owner, run, seq
        ):
            raise LeaseLost()

    async def _forward_run(self, relay: StoredRelay, state: RelayState, run: PendingRun) -> int:
        """Publish the run's events after the cursor in seq order, moving the cursor after
        each page's acknowledgements; how many events were handled."""
        sink = self._sinks.get(relay.spec.sink)
        after = run.after_seq
        while after < run.last_seq:
            page = await self._events.read(relay.namespace, run.run_id, after, PAGE_EVENTS)
            if not page.envelopes:
                break
            messages = [
                outgoing(relay.namespace, envelope, sink.format) for envelope in page.envelopes
            ]
            sent = [message for message in messages if relay.spec.forwards(message.kind)]
            try:
                await sink.publish_many(sent)
            except (SinkUnavailable, SinkRejected) as exc:
                # The cursor may pass what the broker holds, and nothing after it.
                state.forwarded += exc.acked
                await self._advance(relay, run, after, sent[exc.acked].seq - 1)
                raise
            state.forwarded += len(sent)
            await self._advance(relay, run, after, page.through_seq)
            after = page.through_seq
        return after - run.after_seq
