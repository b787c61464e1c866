"""Thread checkpoints in SQLite (the memory and file stores).

Four tables: `threads` (expiry), `thread_checkpoints` (each naming its channel
versions in one column, see stores.thread_checkpoints.encode_versions),
`thread_values` (one row per channel version, shared by the checkpoints
naming it) and `thread_writes`.
Each call is one write or one read of the engine; a write that raises
(a size past its limit) is rolled back whole.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from statekeeper.v1 import thread_checkpoints_pb2 as pb
from statekeeper_server.limits import THREAD_PAGE_BYTES
from statekeeper_server.stores.sqlite.checkpoints import metadata_match
from statekeeper_server.stores.sqlite.engine import SQLiteEngine
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

MIGRATIONS = [
    [
        """CREATE TABLE threads (
            namespace TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            ttl_us INTEGER NOT NULL,
            expires_us INTEGER,
            PRIMARY KEY (namespace, thread_id)
        )""",
        "CREATE INDEX threads_by_expiry ON threads (expires_us) WHERE expires_us IS NOT NULL",
        """CREATE TABLE thread_checkpoints (
            namespace TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            checkpoint_ns TEXT NOT NULL,
            checkpoint_id TEXT NOT NULL,
            parent_id TEXT NOT NULL,
            checkpoint_type TEXT NOT NULL,
            checkpoint_data BLOB NOT NULL,
            metadata_type TEXT NOT NULL,
            metadata_data BLOB NOT NULL,
            metadata TEXT NOT NULL,
            run_id TEXT,
            PRIMARY KEY (namespace, thread_id, checkpoint_ns, checkpoint_id)
        )""",
        "CREATE INDEX thread_checkpoints_newest ON thread_checkpoints (namespace, checkpoint_id)",
        "CREATE INDEX thread_checkpoints_by_run ON thread_checkpoints (namespace, run_id)"
        " WHERE run_id IS NOT NULL",
        """CREATE TABLE thread_versions (
            namespace TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            checkpoint_ns TEXT NOT NULL,
            checkpoint_id TEXT NOT NULL,
            channel TEXT NOT NULL,
            version TEXT NOT NULL,
            PRIMARY KEY (namespace, thread_id, checkpoint_ns, checkpoint_id, channel)
        )""",
        "CREATE INDEX thread_versions_by_value"
        " ON thread_versions (namespace, thread_id, checkpoint_ns, channel, version)",
        """CREATE TABLE thread_values (
            namespace TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            checkpoint_ns TEXT NOT NULL,
            channel TEXT NOT NULL,
            version TEXT NOT NULL,
            type TEXT NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (namespace, thread_id, checkpoint_ns, channel, version)
        )""",
        """CREATE TABLE thread_writes (
            namespace TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            checkpoint_ns TEXT NOT NULL,
            checkpoint_id TEXT NOT NULL,
            task_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            channel TEXT NOT NULL,
            type TEXT NOT NULL,
            data BLOB NOT NULL,
            task_path TEXT NOT NULL,
            PRIMARY KEY (namespace, thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
        )""",
    ],
    # A checkpoint's channel versions move into one column of its row (a row per channel
    # per checkpoint, with two indexes, took more room than the values it named), and the
    # listing gets an index in its order (newest first within a thread).
    [
        "ALTER TABLE thread_checkpoints ADD COLUMN channel_versions TEXT NOT NULL DEFAULT ''",
        "UPDATE thread_checkpoints SET channel_versions = coalesce((SELECT group_concat("
        "length(v.channel) || ':' || v.channel || length(v.version) || ':' || v.version, '')"
        " FROM thread_versions v WHERE v.namespace = thread_checkpoints.namespace"
        " AND v.thread_id = thread_checkpoints.thread_id"
        " AND v.checkpoint_ns = thread_checkpoints.checkpoint_ns"
        " AND v.checkpoint_id = thread_checkpoints.checkpoint_id), '')",
        "DROP TABLE thread_versions",
        # Walked backwards (newest id first, namespaces in order); ascending ids so
        # that new checkpoints land at its end and its pages stay full.
        "CREATE INDEX thread_checkpoints_by_thread"
        " ON thread_checkpoints (namespace, thread_id, checkpoint_id, checkpoint_ns DESC)",
    ],
]

_TABLES = ("thread_writes", "thread_values", "thread_checkpoints", "threads")
_LIVE = (
    " AND NOT EXISTS (SELECT 1 FROM threads t WHERE t.namespace = c.namespace"
    " AND t.thread_id = c.thread_id AND t.expires_us <= ?)"
)
_ROW = (
    "c.thread_id, c.checkpoint_ns, c.checkpoint_id, c.parent_id, c.checkpoint_type,"
    " c.checkpoint_data, c.metadata_type, c.metadata_data, c.metadata, c.channel_versions"
)


class SQLiteThreadCheckpointStore:
    """ThreadCheckpointStore on a SQLiteEngine (see stores.thread_checkpoints)."""

    def __init__(self, engine: SQLiteEngine) -> None:
        self._engine = engine

    async def put_checkpoint(self, namespace: str, new: NewCheckpoint, now_us: int) -> None:
        """Check the state's size, then store values, checkpoint and expiry."""
        thread = new.thread_id

        def work(conn: sqlite3.Connection) -> None:
            _clear_if_expired(conn, namespace, thread, now_us)
            size = new.fixed_bytes()
            for channel, version in new.channel_versions.items():
                blob = new.new_values.get((channel, version))
                if blob is not None:
                    size += len(blob.data) + len(blob.type)
                    continue
                row = conn.execute(
                    "SELECT length(data) + length(type) FROM thread_values WHERE namespace = ?"
                    " AND thread_id = ? AND checkpoint_ns = ? AND channel = ? AND version = ?",
                    (namespace, thread, new.checkpoint_ns, channel, version),
                ).fetchone()
                if row is not None:
                    size += row[0]
            check_state_bytes(size)
            conn.executemany(
                "INSERT OR IGNORE INTO thread_values VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (namespace, thread, new.checkpoint_ns, channel, version, blob.type, blob.data)
                    for (channel, version), blob in new.new_values.items()
                ],
            )
            conn.execute(
                "INSERT OR REPLACE INTO thread_checkpoints"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
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
                    encode_versions(new.channel_versions),
                ),
            )
            conn.execute(
                "INSERT OR REPLACE INTO threads VALUES (?, ?, ?, ?)",
                (namespace, thread, new.ttl_us, now_us + new.ttl_us if new.ttl_us else None),
            )

        await self._engine.write(work)

    async def put_writes(
        self,
        namespace: str,
        key: CheckpointKey,
        task_id: str,
        task_path: str,
        writes: Sequence[NewWrite],
        now_us: int,
    ) -> None:
        """Store the writes (into a thread started afresh if it expired), then check the
        checkpoint's total (rolled back past it)."""
        where = (namespace, key.thread_id, key.checkpoint_ns, key.checkpoint_id)

        def work(conn: sqlite3.Connection) -> None:
            _clear_if_expired(conn, namespace, key.thread_id, now_us)
            for write in writes:
                verb = "INSERT OR REPLACE" if write.idx < 0 else "INSERT OR IGNORE"
                conn.execute(
                    f"{verb} INTO thread_writes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        *where,
                        task_id,
                        write.idx,
                        write.channel,
                        write.value.type,
                        write.value.data,
                        task_path,
                    ),
                )
            rows = conn.execute(
                "SELECT task_id, channel, task_path, length(data) + length(type)"
                " FROM thread_writes WHERE namespace = ? AND thread_id = ?"
                " AND checkpoint_ns = ? AND checkpoint_id = ?",
                where,
            ).fetchall()
            check_writes_bytes(sum(write_bytes(*row) for row in rows))

        await self._engine.write(work)

    async def get_checkpoint(
        self, namespace: str, thread_id: str, checkpoint_ns: str, checkpoint_id: str, now_us: int
    ) -> pb.ThreadCheckpoint:
        """The named checkpoint or the newest of the namespace, in one read."""

        def work(conn: sqlite3.Connection) -> pb.ThreadCheckpoint:
            sql = (
                f"SELECT {_ROW} FROM thread_checkpoints c WHERE c.namespace = ?"
                " AND c.thread_id = ? AND c.checkpoint_ns = ?"
            )
            params: list[object] = [namespace, thread_id, checkpoint_ns]
            if checkpoint_id:
                sql += " AND c.checkpoint_id = ?"
                params.append(checkpoint_id)
            row = conn.execute(
                sql + _LIVE + " ORDER BY c.checkpoint_id DESC LIMIT 1", (*params, now_us)
            ).fetchone()
            if row is None:
                raise no_checkpoint(thread_id, checkpoint_id)
            return _load(conn, namespace, row)

        return await self._engine.read(work)

    async def list_checkpoints(
        self, namespace: str, query: ListQuery, now_us: int
    ) -> tuple[list[pb.ThreadCheckpoint], CheckpointKey | None]:
        """Keys of a page first, then whole checkpoints one by one until the byte budget."""

        def work(
            conn: sqlite3.Connection,
        ) -> tuple[list[pb.ThreadCheckpoint], CheckpointKey | None]:
            sql, params = _list_conditions(namespace, query)
            count = query.page_size
            if query.remaining is not None:
                count = min(count, query.remaining)
            rows = conn.execute(
                f"SELECT {_ROW} FROM thread_checkpoints c WHERE {sql}{_LIVE}"
                " ORDER BY c.checkpoint_id DESC, c.thread_id, c.checkpoint_ns LIMIT ?",
                (*params, now_us, count + 1),
            )
            page: list[pb.ThreadCheckpoint] = []
            used = 0
            for row in rows:
                if len(page) == count:
                    return page, _key(page[-1])
                message = _load(conn, namespace, row)
                used += message.ByteSize()
                if page and used > THREAD_PAGE_BYTES:
                    return page, _key(page[-1])
                page.append(message)
            return page, None

        return await self._engine.read(work)

    async def delete_thread(self, namespace: str, thread_id: str) -> int:
        """Delete the thread's rows from every table."""

        def work(conn: sqlite3.Connection) -> int:
            return _delete_threads(conn, namespace, [thread_id])

        return await self._engine.write(work)

    async def delete_runs(self, namespace: str, run_ids: Sequence[str]) -> int:
        """Delete the runs' checkpoints with their writes, then the values none names."""

        def work(conn: sqlite3.Connection) -> int:
            marks = ", ".join("?" * len(run_ids))
            keys = conn.execute(
                "SELECT thread_id, checkpoint_ns, checkpoint_id FROM thread_checkpoints"
                f" WHERE namespace = ? AND run_id IN ({marks})",
                (namespace, *run_ids),
            ).fetchall()
            for table in ("thread_writes", "thread_checkpoints"):
                conn.executemany(
                    f"DELETE FROM {table} WHERE namespace = ? AND thread_id = ?"
                    " AND checkpoint_ns = ? AND checkpoint_id = ?",
                    [(namespace, *key) for key in keys],
                )
            for thread_id in {key[0] for key in keys}:
                _drop_unnamed_values(conn, namespace, thread_id)
            return len(keys)

        return await self._engine.write(work)

    async def copy_thread(self, namespace: str, source: str, target: str, now_us: int) -> int:
        """Copy every row of a live source into the target, keeping the target's rows."""

        def work(conn: sqlite3.Connection) -> int:
            _clear_if_expired(conn, namespace, target, now_us)
            if _expired(conn, namespace, source, now_us):
                return 0
            copied = conn.execute(
                "INSERT OR IGNORE INTO thread_checkpoints SELECT namespace, ?, checkpoint_ns,"
                " checkpoint_id, parent_id, checkpoint_type, checkpoint_data, metadata_type,"
                " metadata_data, metadata, run_id, channel_versions FROM thread_checkpoints"
                " WHERE namespace = ? AND thread_id = ?",
                (target, namespace, source),
            ).rowcount
            conn.execute(
                "INSERT OR IGNORE INTO thread_values SELECT namespace, ?, checkpoint_ns,"
                " channel, version, type, data FROM thread_values"
                " WHERE namespace = ? AND thread_id = ?",
                (target, namespace, source),
            )
            conn.execute(
                "INSERT OR IGNORE INTO thread_writes SELECT namespace, ?, checkpoint_ns,"
                " checkpoint_id, task_id, idx, channel, type, data, task_path FROM thread_writes"
                " WHERE namespace = ? AND thread_id = ?",
                (target, namespace, source),
            )
            conn.execute(
                "INSERT OR IGNORE INTO threads SELECT namespace, ?, ttl_us,"
                " CASE WHEN ttl_us > 0 THEN ? + ttl_us END FROM threads"
                " WHERE namespace = ? AND thread_id = ?",
                (target, now_us, namespace, source),
            )
            return int(copied)

        return await self._engine.write(work)

    async def prune(self, namespace: str, thread_ids: Sequence[str], keep_latest: bool) -> int:
        """Delete all but the newest checkpoint per checkpoint namespace, or everything."""

        def work(conn: sqlite3.Connection) -> int:
            if not keep_latest:
                return _delete_threads(conn, namespace, thread_ids)
            dropped = 0
            older = (
                " WHERE namespace = ? AND thread_id = ? AND checkpoint_id < (SELECT"
                " max(n.checkpoint_id) FROM thread_checkpoints n WHERE n.namespace = ?"
                " AND n.thread_id = ? AND n.checkpoint_ns = {table}.checkpoint_ns)"
            )
            for thread_id in thread_ids:
                params = (namespace, thread_id, namespace, thread_id)
                conn.execute(
                    "DELETE FROM thread_writes" + older.format(table="thread_writes"), params
                )
                dropped += conn.execute(
                    "DELETE FROM thread_checkpoints" + older.format(table="thread_checkpoints"),
                    params,
                ).rowcount
                _drop_unnamed_values(conn, namespace, thread_id)
            return dropped

        return await self._engine.write(work)

    async def sweep(self, now_us: int) -> int:
        """Delete expired threads, a chunk per write."""
        dropped = 0
        while True:

            def work(conn: sqlite3.Connection) -> tuple[int, bool]:
                expired = conn.execute(
                    "SELECT namespace, thread_id FROM threads WHERE expires_us <= ? LIMIT 100",
                    (now_us,),
                ).fetchall()
                count = sum(_delete_threads(conn, ns, [thread]) for ns, thread in expired)
                return count, len(expired) == 100

            count, more = await self._engine.write(work)
            dropped += count
            if not more:
                return dropped


def _load(conn: sqlite3.Connection, namespace: str, row: tuple[Any, ...]) -> pb.ThreadCheckpoint:
    """A stored checkpoint with its channel values and pending writes."""
    thread_id, checkpoint_ns, checkpoint_id = row[0], row[1], row[2]
    values = []
    for channel, version in decode_versions(row[9]):
        stored = conn.execute(
            "SELECT type, data FROM thread_values WHERE namespace = ? AND thread_id = ?"
            " AND checkpoint_ns = ? AND channel = ? AND version = ?",
            (namespace, thread_id, checkpoint_ns, channel, version),
        ).fetchone()
        values.append((channel, version, *(stored or (None, None))))
    writes = conn.execute(
        "SELECT task_id, idx, channel, type, data, task_path FROM thread_writes"
        " WHERE namespace = ? AND thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
        (namespace, thread_id, checkpoint_ns, checkpoint_id),
    ).fetchall()
    checkpoint_row: CheckpointRow = tuple(row[:9])
    return build_checkpoint(checkpoint_row, values, writes)


def _key(message: pb.ThreadCheckpoint) -> CheckpointKey:
    return CheckpointKey(message.checkpoint_id, message.thread_id, message.checkpoint_ns)


def _list_conditions(namespace: str, query: ListQuery) -> tuple[str, list[object]]:
    """The WHERE clause of a listing (over alias `c`) and its parameters."""
    sql = "c.namespace = ?"
    params: list[object] = [namespace]
    if query.thread_id:
        sql += " AND c.thread_id = ?"
        params.append(query.thread_id)
    if query.checkpoint_ns is not None:
        sql += " AND c.checkpoint_ns = ?"
        params.append(query.checkpoint_ns)
    if query.before:
        sql += " AND c.checkpoint_id < ?"
        params.append(query.before)
    for condition in query.metadata:
        match, values = metadata_match(condition)
        sql += f" AND EXISTS (SELECT 1 FROM json_each(c.metadata) m WHERE m.key = ? AND {match})"
        params.extend([condition.key, *values])
    if query.after is not None:
        after = query.after
        # The first condition bounds the index walk; the second skips what was listed.
        sql += (
            " AND c.checkpoint_id <= ?"
            " AND (c.checkpoint_id < ? OR (c.checkpoint_id = ? AND (c.thread_id > ?"
            " OR (c.thread_id = ? AND c.checkpoint_ns > ?))))"
        )
        params.extend(
            [
                after.checkpoint_id,
                after.checkpoint_id,
                after.checkpoint_id,
                after.thread_id,
                after.thread_id,
                after.checkpoint_ns,
            ]
        )
    return sql, params


def _expired(conn: sqlite3.Connection, namespace: str, thread_id: str, now_us: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM threads WHERE namespace = ? AND thread_id = ? AND expires_us <= ?",
        (namespace, thread_id, now_us),
    ).fetchone()
    return row is not None


def _clear_if_expired(
    conn: sqlite3.Connection, namespace: str, thread_id: str, now_us: int
) -> None:
    """Delete an expired thread before something new is stored in it."""
    if _expired(conn, namespace, thread_id, now_us):
        _delete_threads(conn, namespace, [thread_id])


def _delete_threads(conn: sqlite3.Connection, namespace: str, thread_ids: Sequence[str]) -> int:
    """Delete every row of the threads; the number of checkpoints deleted."""
    dropped = 0
    for thread_id in thread_ids:
        for table in _TABLES:
            count = conn.execute(
                f"DELETE FROM {table} WHERE namespace = ? AND thread_id = ?",
                (namespace, thread_id),
            ).rowcount
            if table == "thread_checkpoints":
                dropped += count
    return dropped


def _drop_unnamed_values(conn: sqlite3.Connection, namespace: str, thread_id: str) -> None:
    """Delete the thread's channel values that no checkpoint names any more."""
    named = {
        (checkpoint_ns, channel, version)
        for checkpoint_ns, encoded in conn.execute(
            "SELECT checkpoint_ns, channel_versions FROM thread_checkpoints"
            " WHERE namespace = ? AND thread_id = ?",
            (namespace, thread_id),
        )
        for channel, version in decode_versions(encoded)
    }
    stored = conn.execute(
        "SELECT checkpoint_ns, channel, version FROM thread_values"
        " WHERE namespace = ? AND thread_id = ?",
        (namespace, thread_id),
    ).fetchall()
    conn.executemany(
        "DELETE FROM thread_values WHERE namespace = ? AND thread_id = ?"
        " AND checkpoint_ns = ? AND channel = ? AND version = ?",
        [(namespace, thread_id, *key) for key in map(tuple, stored) if key not in named],
    )
