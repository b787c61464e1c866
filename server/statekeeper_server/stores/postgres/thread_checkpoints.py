"""Thread checkpoints in PostgreSQL.

The same four tables as on SQLite (see stores.sqlite.thread_checkpoints),
with byte-wise ("C") collation on every key so that ids order the same on
both backends. A listing walks an index in its own order from where the
previous page stopped, so a page costs the same however long the thread.
Every call is one transaction. Calls that change a thread first lock its
`threads` row (creating it if needed), so concurrent writes to one thread
through any number of replicas apply one after the other and
the size checks read totals no other transaction is changing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from statekeeper.v1 import thread_checkpoints_pb2 as pb
from statekeeper_server.limits import THREAD_PAGE_BYTES
from statekeeper_server.stores.postgres.checkpoints import json_value
from statekeeper_server.stores.postgres.engine import PostgresEngine, Transaction
from statekeeper_server.stores.postgres.migrations import fast_compression
from statekeeper_server.stores.postgres.pages import Params
from statekeeper_server.stores.thread_checkpoints import (
    CheckpointKey,
    CheckpointRow,
    ListQuery,
    NewCheckpoint,
    NewWrite,
    build_checkpoint,
    check_state_bytes,
    check_writes_bytes,
    decode_versions,
    encode_versions,
    no_checkpoint,
    write_bytes,
)

_KEY = 'TEXT COLLATE "C" NOT NULL'
MIGRATIONS = [
    [
        f"""CREATE TABLE threads (
            namespace {_KEY},
            thread_id {_KEY},
            ttl_us BIGINT NOT NULL,
            expires_us BIGINT,
            PRIMARY KEY (namespace, thread_id)
        )""",
        "CREATE INDEX threads_by_expiry ON threads (expires_us) WHERE expires_us IS NOT NULL",
        f"""CREATE TABLE thread_checkpoints (
            namespace {_KEY},
            thread_id {_KEY},
            checkpoint_ns {_KEY},
            checkpoint_id {_KEY},
            parent_id TEXT NOT NULL,
            checkpoint_type TEXT NOT NULL,
            checkpoint_data BYTEA NOT NULL,
            metadata_type TEXT NOT NULL,
            metadata_data BYTEA NOT NULL,
            metadata JSONB NOT NULL,
            run_id TEXT COLLATE "C",
            state_bytes BIGINT NOT NULL,
            PRIMARY KEY (namespace, thread_id, checkpoint_ns, checkpoint_id)
        )""",
        "CREATE INDEX thread_checkpoints_newest ON thread_checkpoints (namespace, checkpoint_id)",
        "CREATE INDEX thread_checkpoints_by_run ON thread_checkpoints (namespace, run_id)"
        " WHERE run_id IS NOT NULL",
        f"""CREATE TABLE thread_versions (
            namespace {_KEY},
            thread_id {_KEY},
            checkpoint_ns {_KEY},
            checkpoint_id {_KEY},
            channel {_KEY},
            version {_KEY},
            PRIMARY KEY (namespace, thread_id, checkpoint_ns, checkpoint_id, channel)
        )""",
        "CREATE INDEX thread_versions_by_value"
        " ON thread_versions (namespace, thread_id, checkpoint_ns, channel, version)",
        f"""CREATE TABLE thread_values (
            namespace {_KEY},
            thread_id {_KEY},
            checkpoint_ns {_KEY},
            channel {_KEY},
            version {_KEY},
            type TEXT NOT NULL,
            data BYTEA NOT NULL,
            PRIMARY KEY (namespace, thread_id, checkpoint_ns, channel, version)
        )""",
        f"""CREATE TABLE thread_writes (
            namespace {_KEY},
            thread_id {_KEY},
            checkpoint_ns {_KEY},
            checkpoint_id {_KEY},
            task_id {_KEY},
            idx INTEGER NOT NULL,
            channel TEXT NOT NULL,
            type TEXT NOT NULL,
            data BYTEA NOT NULL,
            task_path TEXT NOT NULL,
            PRIMARY KEY (namespace, thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
        )""",
    ],
    # A checkpoint's channel versions move into one column of its row (see
    # stores.thread_checkpoints.encode_versions): a row per channel per checkpoint, with
    # two indexes, took more room than the values it named. The listing gets an index in
    # its order (newest first within a thread, whatever the checkpoint namespace).
    [
        "ALTER TABLE thread_checkpoints ADD COLUMN channel_versions TEXT NOT NULL DEFAULT ''",
        "UPDATE thread_checkpoints c SET channel_versions = v.encoded FROM (SELECT namespace,"
        " thread_id, checkpoint_ns, checkpoint_id, string_agg(length(channel) || ':' || channel"
        " || length(version) || ':' || version, '' ORDER BY channel) AS encoded"
        " FROM thread_versions GROUP BY namespace, thread_id, checkpoint_ns, checkpoint_id) v"
        " WHERE c.namespace = v.namespace AND c.thread_id = v.thread_id"
        " AND c.checkpoint_ns = v.checkpoint_ns AND c.checkpoint_id = v.checkpoint_id",
        "ALTER TABLE thread_checkpoints ALTER COLUMN channel_versions DROP DEFAULT",
        "DROP TABLE thread_versions",
        # Walked backwards (newest id first, namespaces in order); ascending ids so
        # that new checkpoints land at its end and its pages stay full.
        "CREATE INDEX thread_checkpoints_by_thread"
        " ON thread_checkpoints (namespace, thread_id, checkpoint_id, checkpoint_ns DESC)",
        # A checkpoint row is mostly the caller's blob and its versions, both repetitive
        # (version strings share long zero-padded prefixes): compress its columns inside
        # the row once it passes 128 bytes, rather than only past 2 KB, and keep every
        # column in the row (MAIN) unless it could not fit a page.
        "ALTER TABLE thread_checkpoints SET (toast_tuple_target = 128)",
        "ALTER TABLE thread_checkpoints "
        + ", ".join(
            f"ALTER COLUMN {column} SET STORAGE MAIN"
            for column in (
                "namespace",
                "thread_id",
                "checkpoint_ns",
                "checkpoint_id",
                "parent_id",
                "checkpoint_type",
                "checkpoint_data",
                "metadata_type",
                "metadata_data",
                "metadata",
                "run_id",
                "channel_versions",
            )
        ),
    ],
    [
        # Large records are compressed with lz4, which costs the database far less CPU.
        fast_compression("thread_checkpoints", "checkpoint_data", "metadata_data", "metadata"),
        fast_compression("thread_values", "data"),
        fast_compression("thread_writes", "data"),
    ],
]

_TABLES = ("thread_writes", "thread_values", "thread_checkpoints")
_LIVE = (
    " AND NOT EXISTS (SELECT 1 FROM threads t WHERE t.namespace = c.namespace"
    " AND t.thread_id = c.thread_id AND t.expires_us <= {now})"
)
_ROW = (
    "c.thread_id, c.checkpoint_ns, c.checkpoint_id, c.parent_id, c.checkpoint_type,"
    " c.checkpoint_data, c.metadata_type, c.metadata_data, c.metadata::text,"
    " c.channel_versions"
)
_KEYS = "unnest($2::text[], $3::text[], $4::text[]) AS k(th, ns, id)"
"""The checkpoint keys (thread, checkpoint namespace, id) in $2, $3, $4."""
_OF_KEY = (
    "{t}.namespace = $1 AND {t}.thread_id = k.th AND {t}.checkpoint_ns = k.ns"
    " AND {t}.checkpoint_id = k.id"
)
"""The rows of alias {t} that belong to key `k`: an index lookup by key.

Statements reading rows by key join the keys LATERAL to a subquery that PostgreSQL
does not flatten (LIMIT / OFFSET), so each key is one index lookup: a page reads its
own rows and no more, whatever the size of the thread or its table's statistics (a
hash join would read every row of the thread on each page)."""


class PostgresThreadCheckpointStore:
    """ThreadCheckpointStore on a PostgresEngine (see stores.thread_checkpoints)."""

    def __init__(self, engine: PostgresEngine) -> None:
        self._engine = engine

    async def put_checkpoint(self, namespace: str, new: NewCheckpoint, now_us: int) -> None:
        """Lock the thread, check the state's size, store values and checkpoint."""
        thread = new.thread_id
        async with self._engine.transaction() as tx:
            await _lock_thread(tx, namespace, thread, now_us)
            size = new.fixed_bytes()
            stored_keys = []
            for channel, version in new.channel_versions.items():
                blob = new.new_values.get((channel, version))
                if blob is not None:
                    size += len(blob.data) + len(blob.type)
                else:
                    stored_keys.append((channel, version))
            if stored_keys:
                size += await tx.conn.fetchval(
                    "SELECT coalesce(sum(octet_length(b.data) + octet_length(b.type)), 0)"
                    " FROM thread_values b JOIN unnest($4::text[], $5::text[]) AS k(ch, ver)"
                    " ON b.channel = k.ch AND b.version = k.ver"
                    " WHERE b.namespace = $1 AND b.thread_id = $2 AND b.checkpoint_ns = $3",
                    namespace,
                    thread,
                    new.checkpoint_ns,
                    [k[0] for k in stored_keys],
                    [k[1] for k in stored_keys],
                )
            check_state_bytes(size)
            if new.new_values:
                await tx.conn.executemany(
                    "INSERT INTO thread_values VALUES ($1, $2, $3, $4, $5, $6, $7)"
                    " ON CONFLICT DO NOTHING",
                    [
                        (namespace, thread, new.checkpoint_ns, ch, ver, blob.type, blob.data)
                        for (ch, ver), blob in new.new_values.items()
                    ],
                )
            await tx.conn.execute(
                "INSERT INTO thread_checkpoints VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,"
                " $10::jsonb, $11, $12, $13) ON CONFLICT (namespace, thread_id, checkpoint_ns,"
                " checkpoint_id) DO UPDATE SET parent_id = excluded.parent_id,"
                " checkpoint_type = excluded.checkpoint_type,"
                " checkpoint_data = excluded.checkpoint_data,"
                " metadata_type = excluded.metadata_type, metadata_data = excluded.metadata_data,"
                " metadata = excluded.metadata, run_id = excluded.run_id,"
                " state_bytes = excluded.state_bytes,"
                " channel_versions = excluded.channel_versions",
                namespace,
                thread,
                new.checkpoint_ns,
                new.checkpoint_id,
                new.parent_id,
                new.checkpoint.type,
                new.checkpoint.data,
                new.metadata.type,
                new.metadata.data,
                new.metadata_json,
                new.run_id,
                size,
                encode_versions(new.channel_versions),
            )
            await tx.conn.execute(
                "UPDATE threads SET ttl_us = $3, expires_us = $4"
                " WHERE namespace = $1 AND thread_id = $2",
                namespace,
                thread,
                new.ttl_us,
                now_us + new.ttl_us if new.ttl_us else None,
            )

    async def put_writes(
        self,
        namespace: str,
        key: CheckpointKey,
        task_id: str,
        task_path: str,
        writes: Sequence[NewWrite],
        now_us: int,
    ) -> None:
        """Lock the thread (started afresh if it expired), store the writes, then check
        the checkpoint's total (rolled back past it)."""
        where = (namespace, key.thread_id, key.checkpoint_ns, key.checkpoint_id)
        async with self._engine.transaction() as tx:
            await _lock_thread(tx, namespace, key.thread_id, now_us)
            for write in writes:
                action = (
                    "DO UPDATE SET channel = excluded.channel, type = excluded.type,"
                    " data = excluded.data, task_path = excluded.task_path"
                    if write.idx < 0
                    else "DO NOTHING"
                )
                await tx.conn.execute(
                    "INSERT INTO thread_writes VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                    " ON CONFLICT (namespace, thread_id, checkpoint_ns, checkpoint_id, task_id,"
                    f" idx) {action}",
                    *where,
                    task_id,
                    write.idx,
                    write.channel,
                    write.value.type,
                    write.value.data,
                    task_path,
                )
            rows = await tx.conn.fetch(
                "SELECT task_id, channel, task_path, octet_length(data) + octet_length(type)"
                " FROM thread_writes WHERE namespace = $1 AND thread_id = $2"
                " AND checkpoint_ns = $3 AND checkpoint_id = $4",
                *where,
            )
            check_writes_bytes(sum(write_bytes(r[0], r[1], r[2], r[3]) for r in rows))

    async def get_checkpoint(
        self, namespace: str, thread_id: str, checkpoint_ns: str, checkpoint_id: str, now_us: int
    ) -> pb.ThreadCheckpoint:
        """The named checkpoint or the newest of the namespace, in one snapshot."""
        params = Params(namespace, thread_id, checkpoint_ns)
        sql = (
            f"SELECT {_ROW} FROM thread_checkpoints c WHERE c.namespace = $1"
            " AND c.thread_id = $2 AND c.checkpoint_ns = $3"
        )
        if checkpoint_id:
            sql += f" AND c.checkpoint_id = {params.add(checkpoint_id)}"
        sql += _LIVE.format(now=params.add(now_us)) + " ORDER BY c.checkpoint_id DESC LIMIT 1"
        async with self._engine.transaction(isolation="repeatable_read", readonly=True) as tx:
            row = await tx.conn.fetchrow(sql, *params.values)
            if row is None:
                raise no_checkpoint(thread_id, checkpoint_id)
            return await _load(tx, namespace, row)

    async def list_checkpoints(
        self, namespace: str, query: ListQuery, now_us: int
    ) -> tuple[list[pb.ThreadCheckpoint], CheckpointKey | None]:
        """A page in four statements, none of which reads more rows than the page holds:
        the page's keys, walked from where the last page stopped along an index in the
        listing's order, with each checkpoint's state bytes (summed when it was saved)
        plus its writes' data (an index lookup per key), a lower bound of its encoding,
        to choose the page; then the rows, values and writes of the chosen ones. A page
        the bound let through but whose encoding exceeds the budget is cut after the
        last checkpoint that fits."""
        params = Params(namespace)
        sql = _list_conditions(query, params)
        count = query.page_size
        if query.remaining is not None:
            count = min(count, query.remaining)
        sql = (
            "SELECT k.thread_id, k.checkpoint_ns, k.checkpoint_id,"
            " k.state_bytes + coalesce(w.bytes, 0)"
            " FROM (SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id, c.state_bytes"
            f" FROM thread_checkpoints c WHERE {sql}{_LIVE.format(now=params.add(now_us))}"
            " ORDER BY c.checkpoint_id DESC, c.thread_id, c.checkpoint_ns"
            f" LIMIT {params.add(count + 1)}) k"
            " LEFT JOIN LATERAL (SELECT sum(octet_length(w.data)) AS bytes FROM thread_writes w"
            " WHERE w.namespace = $1 AND w.thread_id = k.thread_id"
            " AND w.checkpoint_ns = k.checkpoint_ns AND w.checkpoint_id = k.checkpoint_id) w"
            " ON true ORDER BY k.checkpoint_id DESC, k.thread_id, k.checkpoint_ns"
        )
        async with self._engine.transaction(isolation="repeatable_read", readonly=True) as tx:
            candidates = await tx.conn.fetch(sql, *params.values)
            chosen: list[tuple[str, str, str]] = []
            bound = 0
            for thread_id, checkpoint_ns, checkpoint_id, size in candidates[:count]:
                bound += size
                if chosen and bound > THREAD_PAGE_BYTES:
                    break
                chosen.append((thread_id, checkpoint_ns, checkpoint_id))
            loaded = await _load_many(tx, namespace, chosen)
        page: list[pb.ThreadCheckpoint] = []
        used = 0
        for message in loaded:
            used += message.ByteSize()
            if page and used > THREAD_PAGE_BYTES:
                break
            page.append(message)
        more = len(page) < len(candidates)
        return page, (_key(page[-1]) if more and page else None)

    async def delete_thread(self, namespace: str, thread_id: str) -> int:
        """Delete the thread's rows from every table."""
        async with self._engine.transaction() as tx:
            return await _delete_threads(tx, namespace, [thread_id])

    async def delete_runs(self, namespace: str, run_ids: Sequence[str]) -> int:
        """Delete the runs' checkpoints with their writes, then the values none names."""
        async with self._engine.transaction() as tx:
            touched = await tx.conn.fetch(
                "SELECT DISTINCT thread_id FROM thread_checkpoints"
                " WHERE namespace = $1 AND run_id = ANY($2::text[])",
                namespace,
                list(run_ids),
            )
            await _lock_threads(tx, namespace, [row[0] for row in touched])
            keys = await tx.conn.fetch(
                "DELETE FROM thread_checkpoints WHERE namespace = $1 AND run_id = ANY($2::text[])"
                " RETURNING thread_id, checkpoint_ns, checkpoint_id",
                namespace,
                list(run_ids),
            )
            await tx.conn.execute(
                "DELETE FROM thread_writes t USING unnest($2::text[], $3::text[], $4::text[])"
                " AS k(th, ns, id) WHERE t.namespace = $1 AND t.thread_id = k.th"
                " AND t.checkpoint_ns = k.ns AND t.checkpoint_id = k.id",
                namespace,
                [k[0] for k in keys],
                [k[1] for k in keys],
                [k[2] for k in keys],
            )
            for thread_id in sorted({k[0] for k in keys}):
                await _drop_unnamed_values(tx, namespace, thread_id)
            return len(keys)

    async def copy_thread(self, namespace: str, source: str, target: str, now_us: int) -> int:
        """Copy every row of a live source into the target, keeping the target's rows;
        both threads are locked, so the copy is of one moment of the source."""
        async with self._engine.transaction() as tx:
            await tx.conn.execute(
                "INSERT INTO threads VALUES ($1, $2, 0, NULL) ON CONFLICT DO NOTHING",
                namespace,
                target,
            )
            await _lock_threads(tx, namespace, [source, target])
            await _lock_thread(tx, namespace, target, now_us)
            ttl_us = await tx.conn.fetchval(
                "SELECT ttl_us FROM threads WHERE namespace = $1 AND thread_id = $2"
                " AND (expires_us IS NULL OR expires_us > $3)",
                namespace,
                source,
                now_us,
            )
            if ttl_us is None:
                return 0
            target_held = await tx.conn.fetchval(
                "SELECT 1 FROM thread_checkpoints WHERE namespace = $1 AND thread_id = $2 LIMIT 1",
                namespace,
                target,
            )
            copied: int = await tx.conn.fetchval(
                "WITH copied AS (INSERT INTO thread_checkpoints SELECT namespace, $3,"
                " checkpoint_ns, checkpoint_id, parent_id, checkpoint_type, checkpoint_data,"
                " metadata_type, metadata_data, metadata, run_id, state_bytes, channel_versions"
                " FROM thread_checkpoints"
                " WHERE namespace = $1 AND thread_id = $2 ON CONFLICT DO NOTHING RETURNING 1)"
                " SELECT count(*) FROM copied",
                namespace,
                source,
                target,
            )
            for table, columns in (
                ("thread_values", "checkpoint_ns, channel, version, type, data"),
                (
                    "thread_writes",
                    "checkpoint_ns, checkpoint_id, task_id, idx, channel, type, data, task_path",
                ),
            ):
                await tx.conn.execute(
                    f"INSERT INTO {table} SELECT namespace, $3, {columns} FROM {table}"
                    " WHERE namespace = $1 AND thread_id = $2 ON CONFLICT DO NOTHING",
                    namespace,
                    source,
                    target,
                )
            if not target_held:
                await tx.conn.execute(
                    "UPDATE threads SET ttl_us = $3::bigint,"
                    " expires_us = CASE WHEN $3::bigint > 0 THEN $4::bigint + $3::bigint END"
                    " WHERE namespace = $1 AND thread_id = $2",
                    namespace,
                    target,
                    ttl_us,
                    now_us,
                )
            return copied

    async def prune(self, namespace: str, thread_ids: Sequence[str], keep_latest: bool) -> int:
        """Delete all but the newest checkpoint per checkpoint namespace, or everything."""
        async with self._engine.transaction() as tx:
            if not keep_latest:
                return await _delete_threads(tx, namespace, thread_ids)
            dropped = 0
            await _lock_threads(tx, namespace, thread_ids)
            for thread_id in thread_ids:
                older = (
                    " WHERE t.namespace = $1 AND t.thread_id = $2 AND t.checkpoint_id < (SELECT"
                    " max(n.checkpoint_id) FROM thread_checkpoints n WHERE n.namespace = $1"
                    " AND n.thread_id = $2 AND n.checkpoint_ns = t.checkpoint_ns)"
                )
                await tx.conn.execute("DELETE FROM thread_writes t" + older, namespace, thread_id)
                dropped += await tx.conn.fetchval(
                    "WITH gone AS (DELETE FROM thread_checkpoints t"
                    + older
                    + " RETURNING 1) SELECT count(*) FROM gone",
                    namespace,
                    thread_id,
                )
                await _drop_unnamed_values(tx, namespace, thread_id)
            return dropped

    async def sweep(self, now_us: int) -> int:
        """Delete expired threads, a chunk per transaction."""
        dropped = 0
        while True:
            async with self._engine.transaction() as tx:
                expired = await tx.conn.fetch(
                    "SELECT namespace, thread_id FROM threads WHERE expires_us <= $1"
                    " ORDER BY namespace, thread_id LIMIT 100 FOR UPDATE SKIP LOCKED",
                    now_us,
                )
                for namespace, thread_id in expired:
                    dropped += await _delete_threads(tx, namespace, [thread_id])
            if len(expired) < 100:
                return dropped


async def _lock_threads(tx: Transaction, namespace: str, thread_ids: Sequence[str]) -> None:
    """Lock the threads' rows, in id order (so two calls never wait on each other), before
    deleting: a save holding one finishes first, and none starts until this commits."""
    await tx.conn.execute(
        "SELECT 1 FROM threads WHERE namespace = $1 AND thread_id = ANY($2::text[])"
        " ORDER BY thread_id FOR UPDATE",
        namespace,
        sorted(set(thread_ids)),
    )


async def _lock_thread(tx: Transaction, namespace: str, thread_id: str, now_us: int) -> None:
    """Create or lock the thread's row; an expired thread is emptied first."""
    await tx.conn.execute(
        "INSERT INTO threads VALUES ($1, $2, 0, NULL) ON CONFLICT DO NOTHING",
        namespace,
        thread_id,
    )
    expires_us = await tx.conn.fetchval(
        "SELECT expires_us FROM threads WHERE namespace = $1 AND thread_id = $2 FOR UPDATE",
        namespace,
        thread_id,
    )
    if expires_us is not None and expires_us <= now_us:
        await _delete_threads(tx, namespace, [thread_id])
        await tx.conn.execute("INSERT INTO threads VALUES ($1, $2, 0, NULL)", namespace, thread_id)


async def _load(tx: Transaction, namespace: str, row: asyncpg.Record) -> pb.ThreadCheckpoint:
    """A stored checkpoint with its channel values and pending writes."""
    values = await _values_of(tx, namespace, [row])
    writes = await tx.conn.fetch(
        "SELECT task_id, idx, channel, type, data, task_path FROM thread_writes"
        " WHERE namespace = $1 AND thread_id = $2 AND checkpoint_ns = $3 AND checkpoint_id = $4",
        namespace,
        row[0],
        row[1],
        row[2],
    )
    return _build(row, values, [tuple(w) for w in writes])


async def _load_many(
    tx: Transaction, namespace: str, keys: Sequence[tuple[str, str, str]]
) -> list[pb.ThreadCheckpoint]:
    """The checkpoints of `keys` (thread, checkpoint namespace, id), in that order, with
    their values and writes: three statements however many there are, each reading the
    rows of those checkpoints only (a value named by several is read once)."""
    if not keys:
        return []
    arrays = _key_arrays(namespace, keys)
    rows = await tx.conn.fetch(
        f"SELECT {_ROW} FROM {_KEYS} CROSS JOIN LATERAL (SELECT * FROM thread_checkpoints c"
        f" WHERE {_OF_KEY.format(t='c')} LIMIT 1) c",
        *arrays,
    )
    values = await _values_of(tx, namespace, rows)
    writes = await tx.conn.fetch(
        "SELECT w.thread_id, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx, w.channel,"
        f" w.type, w.data, w.task_path FROM {_KEYS} CROSS JOIN LATERAL (SELECT * FROM"
        f" thread_writes w WHERE {_OF_KEY.format(t='w')} OFFSET 0) w",
        *arrays,
    )
    writes_of: dict[tuple[str, str, str], list[Any]] = {}
    for w in writes:
        writes_of.setdefault((w[0], w[1], w[2]), []).append(tuple(w[3:]))
    by_key = {(r[0], r[1], r[2]): r for r in rows}
    return [_build(by_key[k], values, writes_of.get(k, [])) for k in keys if k in by_key]


_Values = dict[tuple[str, str, str, str], tuple[str, bytes]]
"""Stored channel values by (thread, checkpoint namespace, channel, version)."""


async def _values_of(tx: Transaction, namespace: str, rows: Sequence[asyncpg.Record]) -> _Values:
    """The stored values the checkpoint rows name, each read once, in one statement."""
    wanted = sorted({(r[0], r[1], ch, ver) for r in rows for ch, ver in decode_versions(r[9])})
    if not wanted:
        return {}
    found = await tx.conn.fetch(
        "SELECT k.th, k.ns, k.ch, k.ver, b.type, b.data"
        " FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS k(th, ns, ch, ver)"
        " CROSS JOIN LATERAL (SELECT b.type, b.data FROM thread_values b"
        " WHERE b.namespace = $1 AND b.thread_id = k.th AND b.checkpoint_ns = k.ns"
        " AND b.channel = k.ch AND b.version = k.ver LIMIT 1) b",
        namespace,
        *(list(column) for column in zip(*wanted, strict=True)),
    )
    return {(f[0], f[1], f[2], f[3]): (f[4], f[5]) for f in found}


def _build(row: asyncpg.Record, values: _Values, writes: Sequence[Any]) -> pb.ThreadCheckpoint:
    """The message of a checkpoint row, its values taken from `values`."""
    named: list[Any] = []
    for channel, version in decode_versions(row[9]):
        value_type, data = values.get((row[0], row[1], channel, version), (None, None))
        named.append((channel, version, value_type, data))
    checkpoint_row: CheckpointRow = tuple(row[:9])
    return build_checkpoint(checkpoint_row, named, writes)


def _key_arrays(
    namespace: str, keys: Sequence[tuple[str, str, str]]
) -> tuple[str, list[str], list[str], list[str]]:
    """The parameters of `_KEYS`."""
    return namespace, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]


def _key(message: pb.ThreadCheckpoint) -> CheckpointKey:
    return CheckpointKey(message.checkpoint_id, message.thread_id, message.checkpoint_ns)


def _list_conditions(query: ListQuery, params: Params) -> str:
    """The WHERE clause of a listing over alias `c` (`$1` is the namespace)."""
    sql = "c.namespace = $1"
    if query.thread_id:
        sql += f" AND c.thread_id = {params.add(query.thread_id)}"
    if query.checkpoint_ns is not None:
        sql += f" AND c.checkpoint_ns = {params.add(query.checkpoint_ns)}"
    if query.before:
        sql += f" AND c.checkpoint_id < {params.add(query.before)}"
    for condition in query.metadata:
        value = json_value(condition)
        if value is None:
            sql += " AND false"
            continue
        sql += f" AND c.metadata -> {params.add(condition.key)} = {params.add(value)}::jsonb"
    if query.after is not None:
        after = query.after
        cid, tid, cns = (
            params.add(after.checkpoint_id),
            params.add(after.thread_id),
            params.add(after.checkpoint_ns),
        )
        # The first condition bounds the index walk; the second skips what was listed.
        sql += (
            f" AND c.checkpoint_id <= {cid}"
            f" AND (c.checkpoint_id < {cid} OR (c.checkpoint_id = {cid} AND (c.thread_id > {tid}"
            f" OR (c.thread_id = {tid} AND c.checkpoint_ns > {cns}))))"
        )
    return sql


async def _delete_threads(tx: Transaction, namespace: str, thread_ids: Sequence[str]) -> int:
    """Delete every row of the threads; the number of checkpoints deleted."""
    dropped = 0
    ids = list(thread_ids)
    await _lock_threads(tx, namespace, ids)
    for table in _TABLES:
        deleted: int = await tx.conn.fetchval(
            f"WITH gone AS (DELETE FROM {table} WHERE namespace = $1"
            " AND thread_id = ANY($2::text[]) RETURNING 1) SELECT count(*) FROM gone",
            namespace,
            ids,
        )
        if table == "thread_checkpoints":
            dropped = deleted
    await tx.conn.execute(
        "DELETE FROM threads WHERE namespace = $1 AND thread_id = ANY($2::text[])",
        namespace,
        ids,
    )
    return dropped


async def _drop_unnamed_values(tx: Transaction, namespace: str, thread_id: str) -> None:
    """Delete the thread's channel values that no checkpoint names any more."""
    named = {
        (row[0], channel, version)
        for row in await tx.conn.fetch(
            "SELECT checkpoint_ns, channel_versions FROM thread_checkpoints"
            " WHERE namespace = $1 AND thread_id = $2",
            namespace,
            thread_id,
        )
        for channel, version in decode_versions(row[1])
    }
    stored = await tx.conn.fetch(
        "SELECT checkpoint_ns, channel, version FROM thread_values"
        " WHERE namespace = $1 AND thread_id = $2",
        namespace,
        thread_id,
    )
    unnamed = [tuple(r) for r in stored if tuple(r) not in named]
    if unnamed:
        await tx.conn.execute(
            "DELETE FROM thread_values b USING unnest($3::text[], $4::text[], $5::text[])"
            " AS k(ns, ch, ver) WHERE b.namespace = $1 AND b.thread_id = $2"
            " AND b.checkpoint_ns = k.ns AND b.channel = k.ch AND b.version = k.ver",
            namespace,
            thread_id,
            *(list(column) for column in zip(*unnamed, strict=True)),
        )
