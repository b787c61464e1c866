"""What users would otherwise pick, fed the same events: Redis Streams, NATS JetStream,
and the storage limits under statekeeper (raw SQLite, raw asyncpg).

Every function here runs inside a generator process and returns a
`Window`, like the statekeeper loads. Each creates its own keys, streams or
schema under a random name and removes them afterwards. Durability differs
and the table says so: this machine's Redis keeps nothing on disk, NATS
JetStream acknowledges once the message is written to its file (fsync every
few minutes by default), SQLite here fsyncs every commit (WAL,
synchronous=FULL) and PostgreSQL flushes its WAL at every commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from bench import payloads
from bench.load import (
    ServiceUnavailable,
    Window,
    closed_loop,
    cpu_in_window,
    process_cpu,
    sleep_until,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
NATS_URL = "nats://127.0.0.1:4222"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
POSTGRES_POOL = 10
"""Connections of the raw asyncpg reference: statekeeper's default pool size."""


def event_bytes() -> bytes:
    """The serialized benchmark event (what a peer stores per event)."""
    return payloads.custom_event().SerializeToString()


def envelope_bytes(run: str = "run-00000000", seq: int = 1) -> bytes:
    """A serialized envelope (what statekeeper stores per event)."""
    return payloads.envelope(run, seq, payloads.custom_event()).SerializeToString()


def _name(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


# -- Redis Streams -----------------------------------------------------------


@contextlib.asynccontextmanager
async def _redis(connections: int) -> AsyncIterator[Any]:
    import redis.asyncio as redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    # Callers beyond `connections` wait for a free connection instead of failing.
    pool = redis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=max(2, connections))
    client = redis.Redis(connection_pool=pool)
    try:
        await client.ping()
    except (RedisConnectionError, OSError) as exc:
        await client.aclose()
        raise ServiceUnavailable(f"Redis at {REDIS_URL}: {exc}") from None
    try:
        yield client
    finally:
        await client.aclose()


async def redis_xadd(concurrency: int, batch: int, start_at: float, duration: float) -> Window:
    """XADD of the event by `concurrency` callers, `batch` per pipeline, each to its own stream."""
    keys = [f"{_name('bench')}:{i}" for i in range(concurrency)]
    data = event_bytes()
    async with _redis(concurrency) as client:

        async def call(index: int) -> int:
            if batch == 1:
                await client.xadd(keys[index], {"event": data})
            else:
                pipe = client.pipeline(transaction=False)
                for _ in range(batch):
                    pipe.xadd(keys[index], {"event": data})
                await pipe.execute()
            return batch

        try:
            return await closed_loop(call, concurrency, start_at, duration)
        finally:
            await client.delete(*keys)


async def redis_xrange(count: int, page: int, start_at: float, duration: float) -> Window:
    """Read `count` stored events back with XRANGE, `page` at a time (one reader)."""
    key = f"{_name('bench')}:replay"
    data = event_bytes()
    async with _redis(2) as client:
        try:
            for start in range(0, count, 1000):
                pipe = client.pipeline(transaction=False)
                for _ in range(min(1000, count - start)):
                    pipe.xadd(key, {"event": data})
                await pipe.execute()
            await sleep_until(start_at)
            cpu, began = process_cpu(), time.perf_counter()
            read, after = 0, "-"
            while True:
                entries = await client.xrange(key, min=after, max="+", count=page)
                if not entries:
                    break
                read += len(entries)
                after = "(" + entries[-1][0].decode()
            return _fixed_work(read, began, cpu)
        finally:
            await client.delete(key)


async def redis_follow(
    streams: int, followers: int, rate: float, start_at: float, duration: float
) -> Window:
    """Append-to-delivery latency: followers XREAD BLOCK while one appender XADDs at `rate`."""
    keys = [f"{_name('bench')}:live:{i}" for i in range(streams)]
    window = Window(seconds=duration)
    end_at = start_at + duration
    # A blocked XREAD holds its connection: the followers get one each.
    async with _redis(followers) as readers, _redis(64) as client:

        async def follow(key: str) -> None:
            last = "$"
            while True:
                reply = await readers.xread({key: last}, block=0, count=100)
                received = time.time()
                for _, entries in reply:
                    for entry_id, fields in entries:
                        last = entry_id
                        sent = float(fields[b"sent_at"])
                        if start_at <= sent <= end_at:
                            window.latencies.append(received - sent)
                            window.operations += 1

        data = event_bytes()
        tasks = [asyncio.create_task(follow(keys[i % streams])) for i in range(followers)]
        try:
            await sleep_until(start_at)
            cpu, began = process_cpu(), time.monotonic()
            await paced(
                rate,
                start_at,
                end_at,
                lambda n: client.xadd(
                    keys[n % streams], {"sent_at": repr(time.time()), "event": data}
                ),
            )
            await asyncio.sleep(0.2)
            window.cpu_seconds = cpu_in_window(cpu, began, duration)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.delete(*keys)
        return window


async def redis_jobs(
    workers: int, lease: int, start_at: float, duration: float, backlog: int
) -> Window:
    """A Redis Streams job queue: XADD, XREADGROUP COUNT `lease` by each worker, XACK each."""
    key = f"{_name('bench')}:jobs"
    group = "workers"
    data = payloads.job_spec().SerializeToString()
    outstanding = 0
    async with _redis(workers + 4) as client:
        await client.xgroup_create(key, group, id="0", mkstream=True)

        async def produce() -> None:
            nonlocal outstanding
            while time.time() < start_at + duration:
                if outstanding >= backlog:
                    await asyncio.sleep(0.002)
                    continue
                pipe = client.pipeline(transaction=False)
                for _ in range(lease * workers):
                    pipe.xadd(key, {"job": data})
                outstanding += lease * workers
                await pipe.execute()

        async def work(index: int) -> int:
            nonlocal outstanding
            reply = await client.xreadgroup(
                group, f"worker-{index}", {key: ">"}, count=lease, block=1000
            )
            done = 0
            for _, entries in reply or []:
                for entry_id, _fields in entries:
                    await client.xack(key, group, entry_id)
                    await client.xdel(key, entry_id)
                    done += 1
            outstanding -= done
            return done

        producer = asyncio.create_task(produce())
        try:
            return await closed_loop(work, workers, start_at, duration)
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
            await client.delete(key)


# -- NATS JetStream ------------------------------------------------------------


@contextlib.asynccontextmanager
async def _jetstream(subjects: str, stream: str) -> AsyncIterator[Any]:
    import nats
    from nats.errors import NoServersError
    from nats.js.api import StorageType, StreamConfig

    try:
        connection = await nats.connect(
            NATS_URL, connect_timeout=3, max_reconnect_attempts=0, allow_reconnect=False
        )
    except (asyncio.TimeoutError, NoServersError, OSError) as exc:
        raise ServiceUnavailable(f"NATS at {NATS_URL}: {exc}") from None
    js = connection.jetstream()
    try:
        await js.add_stream(
            StreamConfig(name=stream, subjects=[subjects], storage=StorageType.FILE)
        )
        yield js
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
        await connection.close()


async def nats_publish(concurrency: int, batch: int, start_at: float, duration: float) -> Window:
    """JetStream publish (awaiting each ack) by `concurrency` callers, `batch` in flight each."""
    stream = _name("BENCH").upper()
    data = event_bytes()
    async with _jetstream(f"{stream}.>", stream) as js:
        subjects = [f"{stream}.run{i}" for i in range(concurrency)]

        async def call(index: int) -> int:
            if batch == 1:
                await js.publish(subjects[index], data)
            else:
                await asyncio.gather(*(js.publish(subjects[index], data) for _ in range(batch)))
            return batch

        return await closed_loop(call, concurrency, start_at, duration)


async def nats_replay(count: int, start_at: float, duration: float) -> Window:
    """Read `count` stored events back through an ordered consumer (one reader)."""
    from nats.js.api import DeliverPolicy

    stream = _name("BENCH").upper()
    subject = f"{stream}.replay"
    data = event_bytes()
    async with _jetstream(f"{stream}.>", stream) as js:
        for start in range(0, count, 500):
            await asyncio.gather(
                *(js.publish(subject, data) for _ in range(min(500, count - start)))
            )
        done = asyncio.Event()
        read = 0

        async def receive(msg: Any) -> None:
            nonlocal read
            read += 1
            if read >= count:
                done.set()

        await sleep_until(start_at)
        cpu, began = process_cpu(), time.perf_counter()
        subscription = await js.subscribe(
            subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL, cb=receive
        )
        try:
            await asyncio.wait_for(done.wait(), 600)
        finally:
            await subscription.unsubscribe()
        return _fixed_work(read, began, cpu)


async def nats_follow(
    streams: int, followers: int, rate: float, start_at: float, duration: float
) -> Window:
    """Append-to-delivery latency: ordered consumers on `streams` subjects, one publisher."""
    from nats.js.api import DeliverPolicy

    stream = _name("BENCH").upper()
    subjects = [f"{stream}.live{i}" for i in range(streams)]
    async with _jetstream(f"{stream}.>", stream) as js:
        window = Window(seconds=duration)
        end_at = start_at + duration

        async def receive(msg: Any) -> None:
            received = time.time()
            sent = float(msg.headers["sent_at"])
            if start_at <= sent <= end_at:
                window.latencies.append(received - sent)
                window.operations += 1

        subscriptions = [
            await js.subscribe(
                subjects[i % streams],
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
                cb=receive,
            )
            for i in range(followers)
        ]
        data = event_bytes()
        try:
            await sleep_until(start_at)
            cpu, began = process_cpu(), time.monotonic()
            await paced(
                rate,
                start_at,
                end_at,
                lambda n: js.publish(
                    subjects[n % streams], data, headers={"sent_at": repr(time.time())}
                ),
            )
            await asyncio.sleep(0.2)
            window.cpu_seconds = cpu_in_window(cpu, began, duration)
        finally:
            for subscription in subscriptions:
                await subscription.unsubscribe()
        return window


async def nats_jobs(
    workers: int, lease: int, start_at: float, duration: float, backlog: int
) -> Window:
    """A JetStream work queue: publish, pull `lease` per fetch by each worker, ack each."""
    from nats.errors import TimeoutError as NatsTimeout

    stream = _name("BENCH").upper()
    subject = f"{stream}.jobs"
    data = payloads.job_spec().SerializeToString()
    async with _jetstream(f"{stream}.>", stream) as js:
        # One subscription per worker, all bound to one durable consumer.
        pulls = [await js.pull_subscribe(subject, durable="workers") for _ in range(workers)]
        published = 0
        acked = 0

        async def produce() -> None:
            nonlocal published
            while time.time() < start_at + duration:
                if published - acked > backlog:
                    await asyncio.sleep(0.005)
                    continue
                await asyncio.gather(*(js.publish(subject, data) for _ in range(lease * workers)))
                published += lease * workers

        async def work(index: int) -> int:
            nonlocal acked
            try:
                messages = await pulls[index].fetch(lease, timeout=1)
            except NatsTimeout:
                return 0
            for message in messages:
                await message.ack_sync()
            acked += len(messages)
            return len(messages)

        producer = asyncio.create_task(produce())
        try:
            return await closed_loop(work, workers, start_at, duration)
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
            for pull in pulls:
                await pull.unsubscribe()


# -- raw SQLite ----------------------------------------------------------------

EVENT_TABLES = [
    """CREATE TABLE IF NOT EXISTS event_runs (
        namespace TEXT NOT NULL, run_id TEXT NOT NULL, last_seq BIGINT NOT NULL,
        update_us BIGINT NOT NULL, PRIMARY KEY (namespace, run_id))""",
    """CREATE TABLE IF NOT EXISTS events (
        namespace TEXT NOT NULL, run_id TEXT NOT NULL, seq BIGINT NOT NULL,
        envelope BYTEA NOT NULL, PRIMARY KEY (namespace, run_id, seq))""",
]
"""An event log's rows at their simplest: the envelope per seq, and each run's last seq."""
INSERT_EVENT = "INSERT INTO events (namespace, run_id, seq, envelope) VALUES ({})"
UPSERT_RUN = (
    "INSERT INTO event_runs (namespace, run_id, last_seq, update_us) VALUES ({})"
    " ON CONFLICT (namespace, run_id) DO UPDATE SET last_seq = excluded.last_seq,"
    " update_us = excluded.update_us"
)


def _marks(style: str, count: int) -> str:
    return ", ".join("?" * count) if style == "?" else ", ".join(f"${i + 1}" for i in range(count))


def open_raw_sqlite(path: Path) -> sqlite3.Connection:
    """A connection to a new raw event log at `path`, durable as statekeeper's file store
    (WAL, an fsync at every commit)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    for statement in EVENT_TABLES:
        conn.execute(statement.replace("BYTEA", "BLOB") + " WITHOUT ROWID")
    return conn


@contextlib.contextmanager
def _sqlite_file() -> Iterator[sqlite3.Connection]:
    with tempfile.TemporaryDirectory(prefix="statekeeper-bench-sqlite-") as directory:
        conn = open_raw_sqlite(Path(directory) / "raw.db")
        try:
            yield conn
        finally:
            conn.close()


async def sqlite_inserts(
    runs: int, events_per_run: int, start_at: float, duration: float
) -> Window:
    """Transactions of `runs` x `events_per_run` envelope rows plus each run's upsert.

    runs=1, events_per_run=1 is one append per transaction; runs=64 is what
    a group commit of 64 concurrent single-event appends writes; runs=1,
    events_per_run=100 is one AppendEvents of 100.
    """
    envelope = envelope_bytes()
    insert = INSERT_EVENT.format(_marks("?", 4))
    upsert = UPSERT_RUN.format(_marks("?", 4))
    seqs = [0] * runs
    with _sqlite_file() as conn:

        def transaction() -> int:
            conn.execute("BEGIN IMMEDIATE")
            rows = []
            for run in range(runs):
                first = seqs[run]
                seqs[run] += events_per_run
                rows += [
                    ("default", payloads.run_id(run), seq, envelope)
                    for seq in range(first + 1, first + events_per_run + 1)
                ]
            conn.executemany(insert, rows)
            now = time.time_ns() // 1000
            conn.executemany(
                upsert, [("default", payloads.run_id(r), seqs[r], now) for r in range(runs)]
            )
            conn.execute("COMMIT")
            return runs * events_per_run

        return _sync_loop(transaction, start_at, duration)


async def sqlite_reads(count: int, page: int, start_at: float, duration: float) -> Window:
    """Read `count` envelope rows of one run back in seq order, `page` rows per query."""
    envelope = envelope_bytes()
    insert = INSERT_EVENT.format(_marks("?", 4))
    with _sqlite_file() as conn:
        conn.execute("BEGIN")
        conn.executemany(
            insert, (("default", "run-00000000", seq, envelope) for seq in range(1, count + 1))
        )
        conn.execute("COMMIT")
        await sleep_until(start_at)
        cpu, began = process_cpu(), time.perf_counter()
        read, after = 0, 0
        while True:
            rows = conn.execute(
                "SELECT seq, envelope FROM events WHERE namespace = ? AND run_id = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                ("default", "run-00000000", after, page),
            ).fetchall()
            if not rows:
                break
            read += len(rows)
            after = rows[-1][0]
        return _fixed_work(read, began, cpu)


# -- raw asyncpg -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def _postgres(pool_size: int) -> AsyncIterator[Any]:
    import asyncpg

    schema = _name("bench_raw")
    try:
        admin = await asyncpg.connect(POSTGRES_URL, timeout=5)
    except (asyncio.TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise ServiceUnavailable(f"PostgreSQL at {POSTGRES_URL}: {exc}") from None
    try:
        await admin.execute(f"CREATE SCHEMA {schema}; SET search_path TO {schema}")
        for statement in EVENT_TABLES:
            await admin.execute(statement)
        pool = await asyncpg.create_pool(
            POSTGRES_URL,
            min_size=pool_size,
            max_size=pool_size,
            server_settings={"search_path": schema},
        )
        try:
            yield pool
        finally:
            await pool.close()
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


async def asyncpg_inserts(
    concurrency: int, events_per_call: int, start_at: float, duration: float
) -> Window:
    """`concurrency` callers, each a transaction of `events_per_call` rows to its own run
    plus the run's upsert, over a pool of statekeeper's default size."""
    envelope = envelope_bytes()
    insert = INSERT_EVENT.format(_marks("$", 4))
    upsert = UPSERT_RUN.format(_marks("$", 4))
    seqs = [0] * concurrency
    async with _postgres(POSTGRES_POOL) as pool:

        async def call(index: int) -> int:
            run = payloads.run_id(index)
            first = seqs[index]
            seqs[index] += events_per_call
            async with pool.acquire() as conn, conn.transaction():
                if events_per_call == 1:
                    await conn.execute(insert, "default", run, first + 1, envelope)
                else:
                    await conn.executemany(
                        insert,
                        [
                            ("default", run, seq, envelope)
                            for seq in range(first + 1, first + events_per_call + 1)
                        ],
                    )
                await conn.execute(upsert, "default", run, seqs[index], time.time_ns() // 1000)
            return events_per_call

        return await closed_loop(call, concurrency, start_at, duration)


async def asyncpg_reads(count: int, page: int, start_at: float, duration: float) -> Window:
    """Read `count` envelope rows of one run back in seq order, `page` rows per query."""
    envelope = envelope_bytes()
    async with _postgres(1) as pool, pool.acquire() as conn:
        await conn.copy_records_to_table(
            "events",
            records=[("default", "run-00000000", seq, envelope) for seq in range(1, count + 1)],
        )
        await sleep_until(start_at)
        cpu, began = process_cpu(), time.perf_counter()
        read, after = 0, 0
        while True:
            rows = await conn.fetch(
                "SELECT seq, envelope FROM events WHERE namespace = $1 AND run_id = $2"
                " AND seq > $3 ORDER BY seq LIMIT $4",
                "default",
                "run-00000000",
                after,
                page,
            )
            if not rows:
                break
            read += len(rows)
            after = rows[-1][0]
        return _fixed_work(read, began, cpu)


# -- windows and pacing ------------------------------------------------------------


def _fixed_work(operations: int, began: float, cpu: float) -> Window:
    """A window covering a fixed amount of work that started at `began`."""
    return Window(
        operations=operations,
        seconds=time.perf_counter() - began,
        cpu_seconds=process_cpu() - cpu,
    )


def _sync_loop(step: Callable[[], int], start_at: float, duration: float) -> Window:
    """Repeat a blocking `step` (returning operations done) through the window."""
    end_at = start_at + duration
    window = Window(seconds=duration)
    cpu = 0.0
    while time.time() < end_at:
        started_wall = time.time()
        if started_wall >= start_at and not cpu:
            cpu = process_cpu()
        started = time.perf_counter()
        done = step()
        elapsed = time.perf_counter() - started
        if started_wall >= start_at and started_wall + elapsed <= end_at:
            window.operations += done
            window.latencies.append(elapsed)
    window.cpu_seconds = process_cpu() - cpu if cpu else 0.0
    return window


async def paced(rate: float, start_at: float, end_at: float, send: Callable[[int], Any]) -> None:
    """Call `send(n)` `rate` times a second from now until `end_at`, without waiting
    for each to finish (an open loop, so a slow reply never lowers the rate).

    Every send is awaited before returning (none is left running); then the
    first failure, if any, is raised. Shared with the statekeeper follow load.
    """
    interval = 1.0 / rate
    tasks: list[asyncio.Future[Any]] = []
    next_at = time.time()
    while next_at < end_at:
        await asyncio.sleep(max(0.0, next_at - time.time()))
        tasks.append(asyncio.ensure_future(send(len(tasks))))
        next_at += interval
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
