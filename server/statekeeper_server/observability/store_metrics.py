"""The `statekeeper_*` metrics of the stores, and the one collector read at scrape.

Everything here lives in prometheus-client's process-wide default
`REGISTRY`. What the stores count as it happens (commits, appended events,
errors, leases, checkpoints) is recorded by the code paths that do it, after
the commit and never before. What is a state rather than an event (replay
followers and how far behind they are, the PostgreSQL pool, the jobs per
queue and state) is computed at scrape by `StoreCollector`, registered once
at import, from whatever is registered with it at that moment: the followers
of every open replay, the engines of every open PostgreSQL store and the job
stores of every open store (tests run several in-process servers at once).

A scrape never does I/O and never waits for the event loop: the job counts
are read from a cache that a scrape only asks to refresh (at most every
JOB_COUNTS_MAX_AGE seconds, in the event loop, as a background task); a
scrape that finds the cache stale returns the values it holds.

Counters of per-namespace work (events appended, job leases expired and
jobs dead, checkpoints saved and dropped) and the job gauges carry a
`namespace` label only with `--metrics-namespace-label`
(`use_namespace_label`); otherwise they are summed over namespaces. That
choice is process-wide: the last store opened with settings decides it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

JOB_COUNTS_MAX_AGE = 5.0
"""Fewest seconds between two refreshes of the job counts."""
JOB_COUNTS_COST_FACTOR = 10.0
"""A refresh that took t seconds is followed by the next no sooner than this many times t
later, so counting a very large jobs table never takes more than a tenth of the time."""

STORE_ERROR_KINDS = ("unavailable", "timeout", "conflict", "corrupt")
"""The `kind` values of statekeeper_store_errors_total."""
CHECKPOINT_KINDS = ("workflow", "agent")

COMMIT_BATCH_SIZE = Histogram(
    "statekeeper_commit_batch_size",
    "Writes committed together by one transaction (a SQLite group commit; 1 on PostgreSQL).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
COMMIT_SECONDS = Histogram(
    "statekeeper_commit_seconds",
    "Seconds a write transaction took, from its BEGIN to its COMMIT's return.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
FSYNC_SECONDS = Histogram(
    "statekeeper_fsync_seconds",
    "Seconds the COMMIT itself took: the flush of the log to disk (file store: SQLite's WAL"
    " write and fsync; PostgreSQL: the COMMIT round trip, which waits for the WAL flush).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
STORE_ERRORS = Counter(
    "statekeeper_store_errors",
    "Failures of the store by kind: unavailable (cannot reach, read or write it), timeout"
    " (a statement or lock ran too long), conflict (a transaction aborted by another),"
    " corrupt (a stored record or the database cannot be decoded).",
    ["kind"],
)
for _kind in STORE_ERROR_KINDS:
    STORE_ERRORS.labels(_kind)
POSTGRES_LISTEN_RECONNECTS = Counter(
    "statekeeper_postgres_listen_reconnects",
    "Times the PostgreSQL LISTEN connection was lost and opened again.",
)


# -- the namespace label ----------------------------------------------------------

_namespace_label = False


def use_namespace_label(enabled: bool) -> None:
    """Whether per-namespace counters and the job gauges carry a `namespace` label
    from now on (process-wide)."""
    global _namespace_label
    _namespace_label = enabled


def namespace_label() -> bool:
    """Whether per-namespace metrics carry a `namespace` label now."""
    return _namespace_label


class NamespacedCounter:
    """A counter whose samples carry a `namespace` label only while
    `namespace_label()` is on; safe to use from any thread.

    Counts are kept per namespace only while the label is on, so with it off
    the counter holds one value per other label whatever the namespaces.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, namespace: str, *labels: str, amount: float = 1.0) -> None:
        """Add `amount` to the count of `labels` (in `labelnames` order) in `namespace`."""
        key = (namespace if _namespace_label else "", *labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def family(self) -> CounterMetricFamily:
        """The counter's samples now (with `namespace` first when the label is on)."""
        with self._lock:
            values = dict(self._values)
        if _namespace_label:
            family = CounterMetricFamily(
                self.name, self.documentation, labels=("namespace", *self.labelnames)
            )
            for key, value in sorted(values.items()):
                family.add_metric(list(key), value)
            return family
        summed: dict[tuple[str, ...], float] = {}
        for key, value in values.items():
            summed[key[1:]] = summed.get(key[1:], 0.0) + value
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in sorted(summed.items()):
            family.add_metric(list(labels), value)
        return family


EVENTS_APPENDED = NamespacedCounter(
    "statekeeper_events_appended", "Events appended to run logs (counted once committed)."
)
EVENT_BYTES_APPENDED = NamespacedCounter(
    "statekeeper_event_bytes_appended",
    "Bytes of the encoded envelopes of the events appended (counted once committed).",
)
JOB_LEASES_EXPIRED = NamespacedCounter(
    "statekeeper_job_leases_expired",
    "Job leases that expired without completion or failure and were taken back.",
)
JOBS_DEAD = NamespacedCounter(
    "statekeeper_jobs_dead", "Jobs that became DEAD: attempts used up, or not retryable."
)
CHECKPOINTS_SAVED = NamespacedCounter(
    "statekeeper_checkpoints_saved", "Checkpoints saved, by kind (workflow, agent).", ["kind"]
)
CHECKPOINTS_DROPPED = NamespacedCounter(
    "statekeeper_checkpoints_dropped",
    "Checkpoints dropped by retention (on save and by the sweeper), by kind.",
    ["kind"],
)
_NAMESPACED = (
    EVENTS_APPENDED,
    EVENT_BYTES_APPENDED,
    JOB_LEASES_EXPIRED,
    JOBS_DEAD,
    CHECKPOINTS_SAVED,
    CHECKPOINTS_DROPPED,
)


# -- recording -------------------------------------------------------------------


def observe_commit(writes: int, seconds: float, fsync_seconds: float | None) -> None:
    """One committed write transaction of `writes` writes, taking `seconds` from its
    BEGIN and `fsync_seconds` for the COMMIT itself (None: nothing is flushed, in memory)."""
    COMMIT_BATCH_SIZE.observe(writes)
    COMMIT_SECONDS.observe(seconds)
    if fsync_seconds is not None:
        FSYNC_SECONDS.observe(fsync_seconds)


def store_error(kind: str) -> None:
    """One failure of the store of `kind` (one of STORE_ERROR_KINDS)."""
    STORE_ERRORS.labels(kind).inc()


def events_committed(
    namespace: str, key: Hashable, envelopes: Sequence[bytes], last_seq: int
) -> None:
    """`envelopes` were committed to the run of notifier `key`, which now ends at `last_seq`."""
    EVENTS_APPENDED.inc(namespace, amount=len(envelopes))
    EVENT_BYTES_APPENDED.inc(namespace, amount=sum(map(len, envelopes)))
    FOLLOWERS.committed(key, last_seq)


def job_leases_expired(namespaces: Iterable[str]) -> None:
    """One expired lease taken back per entry of `namespaces` (committed)."""
    for namespace in namespaces:
        JOB_LEASES_EXPIRED.inc(namespace)


def jobs_dead(namespaces: Iterable[str]) -> None:
    """One job become DEAD per entry of `namespaces` (committed)."""
    for namespace in namespaces:
        JOBS_DEAD.inc(namespace)


def checkpoint_saved(namespace: str, kind: str, dropped: int) -> None:
    """A checkpoint of `kind` saved, its save dropping `dropped` older ones."""
    CHECKPOINTS_SAVED.inc(namespace, kind)
    if dropped:
        CHECKPOINTS_DROPPED.inc(namespace, kind, amount=dropped)


def checkpoints_swept(kind: str, dropped: dict[str, int]) -> None:
    """A retention sweep dropped `dropped[namespace]` checkpoints of `kind` (committed)."""
    for namespace, count in dropped.items():
        if count:
            CHECKPOINTS_DROPPED.inc(namespace, kind, amount=count)


# -- replay followers ------------------------------------------------------------------


class Follower:
    """One open replay: the last seq it sent, and its run's last seq when it last read.

    Updated by the replay as it goes (a few attribute writes per message),
    read at scrape.
    """

    __slots__ = ("key", "last_seq", "position")

    def __init__(self, key: Hashable, position: int) -> None:
        self.key = key
        self.position = position
        """The seq of the last event sent."""
        self.last_seq = position
        """The run's last seq as of the follower's latest read."""


class Followers:
    """The open replays of the process, and the newest seq this process committed to
    each of their runs.

    `committed` costs an append one dict lookup; opening and closing a
    replay take a lock; `snapshot` (at scrape) copies under that lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[Hashable, set[Follower]] = {}
        self._heads: dict[Hashable, int] = {}

    def open(self, key: Hashable, position: int) -> Follower:
        """Register a replay of the run of notifier `key` starting after `position`."""
        follower = Follower(key, position)
        with self._lock:
            self._by_key.setdefault(key, set()).add(follower)
            self._heads.setdefault(key, 0)
        return follower

    def close(self, follower: Follower) -> None:
        """The replay ended."""
        with self._lock:
            followers = self._by_key.get(follower.key)
            if followers is None:
                return
            followers.discard(follower)
            if not followers:
                del self._by_key[follower.key]
                del self._heads[follower.key]

    def committed(self, key: Hashable, last_seq: int) -> None:
        """This process committed the run of `key` up to `last_seq`."""
        # Only keys with followers are present; assigning to one never resizes the dict.
        if key in self._heads:
            self._heads[key] = last_seq

    def snapshot(self) -> tuple[int, int]:
        """How many replays are open, and how many seqs the slowest is behind its run."""
        with self._lock:
            heads = dict(self._heads)
            followers = [f for group in self._by_key.values() for f in group]
        lag = 0
        for follower in followers:
            newest = max(heads.get(follower.key, 0), follower.last_seq)
            lag = max(lag, newest - follower.position)
        return len(followers), lag


FOLLOWERS = Followers()


# -- job counts --------------------------------------------------------------------


class JobCounts(NamedTuple):
    """The jobs of a store by (namespace, queue, stored state), and the earliest run_after
    (microseconds) of the runnable jobs of each (namespace, queue) that has any."""

    counts: list[tuple[str, str, int, int]]
    oldest_run_after: list[tuple[str, str, int]]


@dataclass
class JobCountsCache:
    """The last job counts read from one store, refreshed in its event loop on request.

    `request_refresh` may be called from any thread; it starts a refresh
    (a background task in `loop`) unless one runs or the counts are younger
    than the refresh interval. A failed refresh keeps the previous counts.
    """

    read: Callable[[], Awaitable[JobCounts]]
    loop: asyncio.AbstractEventLoop
    counts: JobCounts = field(default_factory=lambda: JobCounts([], []))
    refreshed_at: float = float("-inf")
    interval: float = JOB_COUNTS_MAX_AGE
    task: asyncio.Task[None] | None = None
    closed: bool = False

    def request_refresh(self) -> None:
        """Start a refresh in the loop if one is due."""
        if self.closed or time.monotonic() - self.refreshed_at < self.interval:
            return
        try:
            in_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            in_loop = False
        if in_loop:
            self._start()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed
            self.loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        if self.closed or (self.task is not None and not self.task.done()):
            return
        if time.monotonic() - self.refreshed_at < self.interval:
            return
        self.task = self.loop.create_task(self.refresh())

    async def refresh(self) -> None:
        """Read the counts now (in the loop); keep the previous ones if that fails."""
        started = time.monotonic()
        try:
            counts = await self.read()
        except Exception as exc:
            log.debug("could not count jobs for the metrics: %s", exc)
            self.refreshed_at = time.monotonic()
            return
        finished = time.monotonic()
        self.counts = counts
        self.refreshed_at = finished
        self.interval = max(JOB_COUNTS_MAX_AGE, JOB_COUNTS_COST_FACTOR * (finished - started))

    async def settled(self) -> None:
        """Return once the refresh under way, if any, is over."""
        task = self.task
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    def close(self) -> None:
        """Stop refreshing (the store is closing)."""
        self.closed = True
        if self.task is not None:
            self.task.cancel()


class PoolState(NamedTuple):
    """A connection pool now: connections open, in use, and calls waiting for one."""

    size: int
    in_use: int
    waiters: int


_sources_lock = threading.Lock()
_job_sources: list[JobCountsCache] = []
_pools: list[Callable[[], PoolState]] = []


def watch_jobs(read: Callable[[], Awaitable[JobCounts]]) -> JobCountsCache:
    """Have the job gauges include a store whose counts `read` reads (in the current
    event loop); `unwatch_jobs` the result when the store closes."""
    cache = JobCountsCache(read, asyncio.get_running_loop())
    with _sources_lock:
        _job_sources.append(cache)
    return cache


def unwatch_jobs(cache: JobCountsCache) -> None:
    """Leave the store of `cache` out of the job gauges."""
    cache.close()
    with _sources_lock:
        if cache in _job_sources:
            _job_sources.remove(cache)


async def refresh_job_counts() -> None:
    """Refresh every watched store's job counts now, in this event loop (for tests and
    for callers that need current values)."""
    with _sources_lock:
        sources = [s for s in _job_sources if s.loop is asyncio.get_running_loop()]
    for source in sources:
        await source.settled()
        await source.refresh()


async def job_counts_settled() -> None:
    """Return once every refresh of job counts under way in this loop is over."""
    with _sources_lock:
        sources = [s for s in _job_sources if s.loop is asyncio.get_running_loop()]
    for source in sources:
        await source.settled()


def watch_pool(state: Callable[[], PoolState]) -> None:
    """Have the pool gauges include the pool whose state `state` tells (cheap, no I/O)."""
    with _sources_lock:
        _pools.append(state)


def unwatch_pool(state: Callable[[], PoolState]) -> None:
    """Leave a pool out of the pool gauges."""
    with _sources_lock:
        if state in _pools:
            _pools.remove(state)


# -- the collector ------------------------------------------------------------------

_STATE_NAMES = {
    1: "scheduled",
    2: "available",
    3: "running",
    4: "succeeded",
    5: "dead",
    6: "cancelled",
}


class StoreCollector(Collector):
    """Yields, at scrape, the namespaced counters and every gauge computed from what is
    registered now. Never blocks on I/O or on the event loop."""

    def collect(self) -> Iterator[Metric]:
        """The samples of the moment (see the module)."""
        for counter in _NAMESPACED:
            yield counter.family()
        count, lag = FOLLOWERS.snapshot()
        yield GaugeMetricFamily(
            "statekeeper_replay_followers", "ReplayEvents streams open now.", value=count
        )
        yield GaugeMetricFamily(
            "statekeeper_replay_slowest_follower_lag",
            "Seqs the slowest open replay is behind the last seq of its run (as far as this"
            " process knows it).",
            value=lag,
        )
        with _sources_lock:
            pools = list(_pools)
            sources = list(_job_sources)
        yield from _pool_families(pools)
        for source in sources:
            source.request_refresh()
        yield from _job_families([source.counts for source in sources])


def _pool_families(pools: list[Callable[[], PoolState]]) -> Iterator[Metric]:
    states = []
    for state in pools:
        with contextlib.suppress(Exception):  # a pool closing right now
            states.append(state())
    if not states:
        return
    yield GaugeMetricFamily(
        "statekeeper_postgres_pool_size",
        "Connections the PostgreSQL pools hold open now.",
        value=sum(s.size for s in states),
    )
    yield GaugeMetricFamily(
        "statekeeper_postgres_pool_in_use",
        "Pooled PostgreSQL connections lent to a call now.",
        value=sum(s.in_use for s in states),
    )
    yield GaugeMetricFamily(
        "statekeeper_postgres_pool_waiters",
        "Calls waiting for a pooled PostgreSQL connection now.",
        value=sum(s.waiters for s in states),
    )


def _job_families(all_counts: list[JobCounts]) -> Iterator[Metric]:
    with_namespace = _namespace_label
    labels = ["namespace", "queue"] if with_namespace else ["queue"]
    jobs: dict[tuple[str, ...], int] = {}
    oldest: dict[tuple[str, ...], int] = {}
    for counts in all_counts:
        for namespace, queue, state, count in counts.counts:
            where: tuple[str, ...] = (namespace, queue) if with_namespace else (queue,)
            key = (*where, _STATE_NAMES.get(state, str(state)))
            jobs[key] = jobs.get(key, 0) + count
        for namespace, queue, run_after in counts.oldest_run_after:
            where = (namespace, queue) if with_namespace else (queue,)
            oldest[where] = min(oldest.get(where, run_after), run_after)
    family = GaugeMetricFamily(
        "statekeeper_jobs",
        "Jobs by queue and stored state (read at most every few seconds; a SCHEDULED job"
        " counts as scheduled until the sweeper makes it available).",
        labels=[*labels, "state"],
    )
    for key, value in sorted(jobs.items()):
        family.add_metric(list(key), value)
    yield family
    now_us = time.time_ns() // 1000
    ages = GaugeMetricFamily(
        "statekeeper_job_oldest_available_age_seconds",
        "Seconds the longest-runnable job of each queue has waited for a worker.",
        labels=labels,
    )
    for where, run_after in sorted(oldest.items()):
        ages.add_metric(list(where), max(0, now_us - run_after) / 1e6)
    yield ages


REGISTRY.register(StoreCollector())
