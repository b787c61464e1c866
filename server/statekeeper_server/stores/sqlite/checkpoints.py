"""Checkpoints in SQLite: one table per kind, one row per checkpoint.

Each row holds the encoded proto plus the columns lookups need. `seq` (the
rowid) orders a history: SQLite gives each insert a rowid above every
existing one, so two saves in the same millisecond still order strictly.
The newest row of each run or agent carries `is_head = 1`, maintained in
the save transaction; partial indexes on it make loading the newest and
listing the newest per run index lookups. A row also keeps the retention
its save named (NULL columns follow the server's settings), and workflow
rows keep a JSON copy of their metadata, which filters read with JSON1's
`json_each`, so filtering happens in SQL and paging stays exact.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from statekeeper.v1 import checkpoints_pb2
from statekeeper_server.observability import store_metrics
from statekeeper_server.offload import off_loop_if_large
from statekeeper_server.stores.checkpoints import (
    AGENT,
    WORKFLOW,
    CheckpointKind,
    CheckpointPage,
    M,
    MetadataCondition,
    Recovered,
    RetentionOverride,
    RetentionPolicy,
    Saved,
    StoredCheckpoint,
    WorkflowFilter,
    agent_history_filters,
    checkpoint_not_found,
    history_page,
    latest_agents_filters,
    latest_page,
    latest_workflows_filters,
    metadata_json,
    metric_kind,
    mint_agent,
    mint_workflow,
    newest_readable,
    no_checkpoint,
    prefix_end,
    readable_checkpoint,
    workflow_history_filters,
)
from statekeeper_server.stores.paging import decode_page_token
from statekeeper_server.stores.sqlite.engine import SQLiteEngine
from statekeeper_server.stores.sqlite.pages import read_page

MIGRATIONS = [
    [
        """CREATE TABLE workflow_checkpoints (
            seq INTEGER PRIMARY KEY,
            namespace TEXT NOT NULL,
            run_id TEXT NOT NULL,
            checkpoint_id TEXT NOT NULL,
            workflow_name TEXT NOT NULL,
            is_head INTEGER,
            create_us INTEGER NOT NULL,
            keep_last INTEGER,
            ttl_us INTEGER,
            metadata TEXT NOT NULL,
            data BLOB NOT NULL
        )""",
        "CREATE UNIQUE INDEX workflow_checkpoints_by_id"
        " ON workflow_checkpoints (namespace, run_id, checkpoint_id)",
        "CREATE INDEX workflow_checkpoints_history"
        " ON workflow_checkpoints (namespace, run_id, seq)",
        "CREATE UNIQUE INDEX workflow_checkpoints_heads"
        " ON workflow_checkpoints (namespace, run_id) WHERE is_head = 1",
        "CREATE INDEX workflow_checkpoints_heads_by_workflow"
        " ON workflow_checkpoints (namespace, workflow_name, run_id) WHERE is_head = 1",
        """CREATE TABLE agent_checkpoints (
            seq INTEGER PRIMARY KEY,
            namespace TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            checkpoint_id TEXT NOT NULL,
            is_head INTEGER,
            create_us INTEGER NOT NULL,
            keep_last INTEGER,
            ttl_us INTEGER,
            data BLOB NOT NULL
        )""",
        "CREATE UNIQUE INDEX agent_checkpoints_by_id"
        " ON agent_checkpoints (namespace, agent_id, checkpoint_id)",
        "CREATE INDEX agent_checkpoints_history ON agent_checkpoints (namespace, agent_id, seq)",
        "CREATE UNIQUE INDEX agent_checkpoints_heads"
        " ON agent_checkpoints (namespace, agent_id) WHERE is_head = 1",
    ],
]

SWEEP_CHUNK = 256
"""Runs or agents examined per read (and pruned per write) by a sweep."""


@dataclass(frozen=True)
class _Table:
    """One kind's table and its owner column (constants: safe to format into SQL)."""

    name: str
    owner: str
    kind: CheckpointKind


_WORKFLOWS = _Table("workflow_checkpoints", "run_id", WORKFLOW)
_AGENTS = _Table("agent_checkpoints", "agent_id", AGENT)


@dataclass(frozen=True)
class _Head:
    seq: int
    checkpoint_id: str
    create_us: int


class SQLiteCheckpointStore:
    """CheckpointStore on a SQLiteEngine (see stores.checkpoints for guarantees)."""

    def __init__(self, engine: SQLiteEngine) -> None:
        self._engine = engine

    # -- workflows -----------------------------------------------------------

    async def save_workflow(
        self,
        namespace: str,
        checkpoint: checkpoints_pb2.WorkflowCheckpoint,
        *,
        expected_parent: str | None,
        retention: RetentionOverride,
        defaults: RetentionPolicy,
        now_us: int,
    ) -> Saved[checkpoints_pb2.WorkflowCheckpoint]:
        """Check the parent, insert the new head and apply retention, in one write."""
        metadata = await off_loop_if_large(
            checkpoint.metadata.ByteSize(), metadata_json, checkpoint.metadata
        )
        run_id = checkpoint.run_id
        policy = retention.resolve(defaults)

        def work(conn: sqlite3.Connection) -> Saved[checkpoints_pb2.WorkflowCheckpoint]:
            head = _head(conn, _WORKFLOWS, namespace, run_id)
            minted = mint_workflow(
                checkpoint,
                newest_id=head.checkpoint_id if head else "",
                newest_create_us=head.create_us if head else None,
                expected_parent=expected_parent,
                now_us=now_us,
            )
            stored, create_us = minted.checkpoint, minted.create_us
            _demote(conn, _WORKFLOWS, head)
            conn.execute(
                "INSERT INTO workflow_checkpoints (namespace, run_id, checkpoint_id,"
                " workflow_name, is_head, create_us, keep_last, ttl_us, metadata, data)"
                " VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, ?)",
                (
                    namespace,
                    run_id,
                    stored.checkpoint_id,
                    stored.workflow_name,
                    create_us,
                    retention.keep_last,
                    retention.ttl_us,
                    metadata,
                    minted.data,
                ),
            )
            dropped = _prune(conn, _WORKFLOWS, namespace, run_id, policy, create_us)
            return Saved(stored, minted.data, dropped)

        return await self._engine.write(work)

    async def load_workflow(
        self, namespace: str, run_id: str, checkpoint_id: str, *, fallback_to_readable: bool
    ) -> Recovered:
        """The run's newest checkpoint (one index lookup), or the one named."""
        if checkpoint_id:
            row = await self._engine.read(
                lambda conn: _by_id(conn, _WORKFLOWS, namespace, run_id, checkpoint_id)
            )
            if row is None:
                raise checkpoint_not_found(WORKFLOW, run_id, checkpoint_id)
            return Recovered(readable_checkpoint(checkpoints_pb2.WorkflowCheckpoint, WORKFLOW, row))
        return await self._newest(
            checkpoints_pb2.WorkflowCheckpoint, _WORKFLOWS, namespace, run_id, fallback_to_readable
        )

    async def list_workflow_history(
        self,
        namespace: str,
        run_id: str,
        where: WorkflowFilter,
        *,
        before: str,
        page_size: int,
        page_token: str,
    ) -> CheckpointPage:
        """A page of the run's checkpoints, newest first, filtered in SQL."""
        return await self._history(
            checkpoints_pb2.WorkflowCheckpoint,
            _WORKFLOWS,
            namespace,
            run_id,
            _workflow_conditions(where),
            workflow_history_filters(run_id, before, where),
            before=before,
            page_size=page_size,
            page_token=page_token,
        )

    async def list_latest_workflows(
        self, namespace: str, where: WorkflowFilter, *, page_size: int, page_token: str
    ) -> CheckpointPage:
        """A page of run heads after the token's run_id, filtered in SQL."""
        filters = latest_workflows_filters(where)
        after = decode_page_token(page_token, filters, str) or ""
        conditions, params = _workflow_conditions(where)
        sql = (
            "SELECT c.seq, c.run_id, c.checkpoint_id, c.data FROM workflow_checkpoints c"
            " WHERE c.is_head = 1 AND c.namespace = ? AND c.run_id > ?"
            f"{conditions} ORDER BY c.run_id LIMIT ?"
        )
        args = [namespace, after, *params, page_size + 1]

        def work(conn: sqlite3.Connection) -> tuple[list[StoredCheckpoint], bool]:
            return _read_stored(conn, sql, args, page_size)

        rows, more = await self._engine.read(work)
        return latest_page(checkpoints_pb2.WorkflowCheckpoint, WORKFLOW, rows, more, filters)

    async def delete_workflow(self, namespace: str, run_id: str) -> int:
        """Delete every checkpoint of the run."""
        return await self._delete(_WORKFLOWS, namespace, run_id)

    # -- agents --------------------------------------------------------------

    async def persist_agent(
        self,
        namespace: str,
        checkpoint: checkpoints_pb2.AgentCheckpoint,
        *,
        retention: RetentionOverride,
        defaults: RetentionPolicy,
        now_us: int,
    ) -> Saved[checkpoints_pb2.AgentCheckpoint]:
        """Insert the agent's new head and apply retention, in one write."""
        agent_id = checkpoint.agent_id
        policy = retention.resolve(defaults)

        def work(conn: sqlite3.Connection) -> Saved[checkpoints_pb2.AgentCheckpoint]:
            head = _head(conn, _AGENTS, namespace, agent_id)
            minted = mint_agent(
                checkpoint,
                newest_id=head.checkpoint_id if head else "",
                newest_create_us=head.create_us if head else None,
                now_us=now_us,
            )
            stored, create_us = minted.checkpoint, minted.create_us
            _demote(conn, _AGENTS, head)
            conn.execute(
                "INSERT INTO agent_checkpoints (namespace, agent_id, checkpoint_id, is_head,"
                " create_us, keep_last, ttl_us, data) VALUES (?, ?, ?, 1, ?, ?, ?, ?)",
                (
                    namespace,
                    agent_id,
                    stored.checkpoint_id,
                    create_us,
                    retention.keep_last,
                    retention.ttl_us,
                    minted.data,
                ),
            )
            dropped = _prune(conn, _AGENTS, namespace, agent_id, policy, create_us)
            return Saved(stored, minted.data, dropped)

        return await self._engine.write(work)

    async def recover_agent(
        self, namespace: str, agent_id: str, *, fallback_to_readable: bool
    ) -> Recovered:
        """The agent's newest checkpoint (one index lookup)."""
        return await self._newest(
            checkpoints_pb2.AgentCheckpoint, _AGENTS, namespace, agent_id, fallback_to_readable
        )

    async def list_agent_history(
        self, namespace: str, agent_id: str, *, before: str, page_size: int, page_token: str
    ) -> CheckpointPage:
        """A page of the agent's checkpoints, newest first."""
        return await self._history(
            checkpoints_pb2.AgentCheckpoint,
            _AGENTS,
            namespace,
            agent_id,
            ("", []),
            agent_history_filters(agent_id, before),
            before=before,
            page_size=page_size,
            page_token=page_token,
        )

    async def list_latest_agents(
        self, namespace: str, agent_id_prefix: str, *, page_size: int, page_token: str
    ) -> CheckpointPage:
        """A page of agent heads after the token's agent_id: a range scan of the
        partial index `agent_checkpoints_heads` (namespace, agent_id)."""
        filters = latest_agents_filters(agent_id_prefix)
        after = decode_page_token(page_token, filters, str) or ""
        sql, args = latest_agents_query(namespace, agent_id_prefix, after, page_size)

        def work(conn: sqlite3.Connection) -> tuple[list[StoredCheckpoint], bool]:
            return _read_stored(conn, sql, args, page_size)

        rows, more = await self._engine.read(work)
        return latest_page(checkpoints_pb2.AgentCheckpoint, AGENT, rows, more, filters)

    async def delete_agent(self, namespace: str, agent_id: str) -> int:
        """Delete every checkpoint of the agent."""
        return await self._delete(_AGENTS, namespace, agent_id)

    # -- retention -----------------------------------------------------------

    async def sweep(self, defaults: RetentionPolicy, now_us: int) -> int:
        """Prune every run and agent holding more than its policy allows.

        Heads are examined a chunk per read; only those with something to
        drop get a write, which re-reads the policy in force so that a save
        landing in between is honoured.
        """
        dropped = 0
        for table in (_WORKFLOWS, _AGENTS):
            cursor: tuple[str, str] | None = ("", "")
            while cursor is not None:
                cursor, candidates = await self._engine.read(
                    _sweep_reader(table, cursor, defaults, now_us)
                )
                if candidates:
                    by_namespace = await self._engine.write(
                        _sweep_writer(table, candidates, defaults, now_us)
                    )
                    store_metrics.checkpoints_swept(metric_kind(table.kind), by_namespace)
                    dropped += sum(by_namespace.values())
        return dropped

    # -- shared by both kinds ------------------------------------------------

    async def _newest(
        self,
        message_type: type[M],
        table: _Table,
        namespace: str,
        owner: str,
        fallback_to_readable: bool,
    ) -> Recovered:
        """The newest checkpoint via the head index, falling back if asked."""

        def head(conn: sqlite3.Connection) -> StoredCheckpoint | None:
            row = conn.execute(
                f"SELECT seq, {table.owner}, checkpoint_id, data FROM {table.name}"
                f" WHERE namespace = ? AND {table.owner} = ? AND is_head = 1",
                (namespace, owner),
            ).fetchone()
            return StoredCheckpoint(*row) if row else None

        newest = await self._engine.read(head)
        if newest is None:
            raise no_checkpoint(table.kind, owner)

        async def older(position: int, limit: int) -> Sequence[StoredCheckpoint]:
            rows, _ = await self._engine.read(
                lambda conn: _rows_before(conn, table, namespace, owner, position, ("", []), limit)
            )
            return rows

        return await newest_readable(
            message_type, table.kind, newest, older, fallback_to_readable=fallback_to_readable
        )

    async def _history(
        self,
        message_type: type[M],
        table: _Table,
        namespace: str,
        owner: str,
        conditions: _Conditions,
        filters: dict[str, object],
        *,
        before: str,
        page_size: int,
        page_token: str,
    ) -> CheckpointPage:
        """A page of one owner's history, newest first, below `before` or the token."""
        position = decode_page_token(page_token, filters, int)

        def work(conn: sqlite3.Connection) -> tuple[list[StoredCheckpoint], bool] | None:
            upper = position
            if upper is None and before:
                row = _by_id(conn, table, namespace, owner, before)
                if row is None:
                    return None
                upper = row.position
            return _rows_before(conn, table, namespace, owner, upper, conditions, page_size)

        page = await self._engine.read(work)
        if page is None:
            raise checkpoint_not_found(table.kind, owner, before)
        rows, more = page
        return history_page(message_type, table.kind, rows, more, filters)

    async def _delete(self, table: _Table, namespace: str, owner: str) -> int:
        def work(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                f"DELETE FROM {table.name} WHERE namespace = ? AND {table.owner} = ?",
                (namespace, owner),
            )
            return cursor.rowcount

        return await self._engine.write(work)


def latest_agents_query(
    namespace: str, agent_id_prefix: str, after: str, page_size: int
) -> tuple[str, list[object]]:
    """The query of a page of agent heads (seq, owner, checkpoint_id, data): ids
    after `after` starting with `agent_id_prefix`, `page_size` + 1 of them, by
    a range scan of the partial index on heads (it is named, so no other plan
    can be chosen)."""
    sql = (
        "SELECT c.seq, c.agent_id, c.checkpoint_id, c.data FROM agent_checkpoints c"
        " INDEXED BY agent_checkpoints_heads"
        " WHERE c.is_head = 1 AND c.namespace = ? AND c.agent_id > ? AND c.agent_id >= ?"
    )
    args: list[object] = [namespace, after, agent_id_prefix]
    end = prefix_end(agent_id_prefix)
    if end is not None:
        sql += " AND c.agent_id < ?"
        args.append(end)
    sql += " ORDER BY c.agent_id LIMIT ?"
    args.append(page_size + 1)
    return sql, args


_Conditions = tuple[str, list[object]]
"""SQL to append to a WHERE clause over alias `c`, and its parameters."""


def _head(conn: sqlite3.Connection, table: _Table, namespace: str, owner: str) -> _Head | None:
    row = conn.execute(
        f"SELECT seq, checkpoint_id, create_us FROM {table.name}"
        f" WHERE namespace = ? AND {table.owner} = ? AND is_head = 1",
        (namespace, owner),
    ).fetchone()
    return _Head(*row) if row else None


def _demote(conn: sqlite3.Connection, table: _Table, head: _Head | None) -> None:
    """Clear the head mark of the previous newest row before inserting the next."""
    if head is not None:
        conn.execute(f"UPDATE {table.name} SET is_head = NULL WHERE seq = ?", (head.seq,))


def _by_id(
    conn: sqlite3.Connection, table: _Table, namespace: str, owner: str, checkpoint_id: str
) -> StoredCheckpoint | None:
    row = conn.execute(
        f"SELECT seq, {table.owner}, checkpoint_id, data FROM {table.name}"
        f" WHERE namespace = ? AND {table.owner} = ? AND checkpoint_id = ?",
        (namespace, owner, checkpoint_id),
    ).fetchone()
    return StoredCheckpoint(*row) if row else None


def _rows_before(
    conn: sqlite3.Connection,
    table: _Table,
    namespace: str,
    owner: str,
    upper: int | None,
    conditions: _Conditions,
    limit: int,
) -> tuple[list[StoredCheckpoint], bool]:
    """The rows of one owner with seq below `upper` (all if None), newest first, at most
    `limit` and a page's bytes of them; and whether more follow."""
    extra, params = conditions
    sql = (
        f"SELECT c.seq, c.{table.owner}, c.checkpoint_id, c.data FROM {table.name} c"
        f" WHERE c.namespace = ? AND c.{table.owner} = ?"
    )
    args: list[object] = [namespace, owner]
    if upper is not None:
        sql += " AND c.seq < ?"
        args.append(upper)
    sql += f"{extra} ORDER BY c.seq DESC LIMIT ?"
    args.extend([*params, limit + 1])
    return _read_stored(conn, sql, args, limit)


def _read_stored(
    conn: sqlite3.Connection, sql: str, args: Sequence[object], limit: int
) -> tuple[list[StoredCheckpoint], bool]:
    """The page `read_page` makes of the (seq, owner, id, data) rows of `sql`, and
    whether rows follow it."""
    rows, more = read_page(conn, sql, args, _data_size, max_count=limit)
    return [StoredCheckpoint(*row) for row in rows], more


def _data_size(row: tuple[int, str, str, bytes]) -> int:
    """The encoded size of the checkpoint of a (seq, owner, id, data) row."""
    return len(row[3])


def _workflow_conditions(where: WorkflowFilter) -> _Conditions:
    """The WHERE conditions of a workflow filter, over alias `c`."""
    sql = ""
    params: list[object] = []
    if where.workflow_name:
        sql += " AND c.workflow_name = ?"
        params.append(where.workflow_name)
    for condition in where.metadata:
        match, values = metadata_match(condition)
        sql += f" AND EXISTS (SELECT 1 FROM json_each(c.metadata) m WHERE m.key = ? AND {match})"
        params.extend([condition.key, *values])
    return sql, params


def metadata_match(condition: MetadataCondition) -> tuple[str, list[object]]:
    """How a `json_each` row must look to match: its JSON type, and its value."""
    if condition.kind == "string":
        return "m.type = 'text' AND m.atom = ?", [condition.value]
    if condition.kind == "number":
        return "m.type IN ('integer', 'real') AND m.atom = ?", [condition.value]
    if condition.kind == "bool":
        return ("m.type = 'true'" if condition.value else "m.type = 'false'"), []
    return "m.type = 'null'", []


def _prune(
    conn: sqlite3.Connection,
    table: _Table,
    namespace: str,
    owner: str,
    policy: RetentionPolicy,
    now_us: int,
) -> int:
    """Drop what `policy` does not keep of one owner's history; never the head."""
    dropped = 0
    if policy.keep_last > 0:
        dropped += conn.execute(
            f"DELETE FROM {table.name} WHERE namespace = ? AND {table.owner} = ? AND seq <= ("
            f"SELECT seq FROM {table.name} WHERE namespace = ? AND {table.owner} = ?"
            " ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (namespace, owner, namespace, owner, policy.keep_last),
        ).rowcount
    cutoff = policy.cutoff_us(now_us)
    if cutoff is not None:
        dropped += conn.execute(
            f"DELETE FROM {table.name} WHERE namespace = ? AND {table.owner} = ?"
            " AND create_us < ? AND is_head IS NULL",
            (namespace, owner, cutoff),
        ).rowcount
    return dropped


def _policy_in_force(
    conn: sqlite3.Connection, table: _Table, namespace: str, owner: str, defaults: RetentionPolicy
) -> RetentionPolicy:
    """The retention named by the owner's newest save, resolved against `defaults`."""
    row = conn.execute(
        f"SELECT keep_last, ttl_us FROM {table.name}"
        f" WHERE namespace = ? AND {table.owner} = ? AND is_head = 1",
        (namespace, owner),
    ).fetchone()
    if row is None:
        return RetentionPolicy()
    return RetentionOverride(keep_last=row[0], ttl_us=row[1]).resolve(defaults)


def _sweep_reader(
    table: _Table, cursor: tuple[str, str], defaults: RetentionPolicy, now_us: int
) -> Callable[[sqlite3.Connection], tuple[tuple[str, str] | None, list[tuple[str, str]]]]:
    """A read of the next chunk of heads after `cursor`.

    It returns the cursor to continue from (None after the last chunk) and
    the (namespace, owner) pairs that hold more than their policy keeps:
    more rows than `keep_last`, or a non-head row older than the TTL (create
    times grow with seq, so the oldest row is the first by seq).
    """
    t, o = table.name, table.owner
    sql = (
        f"SELECT h.namespace, h.{o},"
        f" (h.k > 0 AND (SELECT COUNT(*) FROM {t} c"
        f"   WHERE c.namespace = h.namespace AND c.{o} = h.{o}) > h.k)"
        f" OR (h.ttl > 0 AND (SELECT c.create_us FROM {t} c"
        f"   WHERE c.namespace = h.namespace AND c.{o} = h.{o} AND c.seq < h.seq"
        "   ORDER BY c.seq LIMIT 1) < ? - h.ttl)"
        f" FROM (SELECT namespace, {o}, seq, COALESCE(keep_last, ?) AS k,"
        f"   COALESCE(ttl_us, ?) AS ttl FROM {t}"
        f"   WHERE is_head = 1 AND (namespace, {o}) > (?, ?)"
        f"   ORDER BY namespace, {o} LIMIT ?) h"
    )
    args = (now_us, defaults.keep_last, defaults.ttl_us, *cursor, SWEEP_CHUNK)

    def work(
        conn: sqlite3.Connection,
    ) -> tuple[tuple[str, str] | None, list[tuple[str, str]]]:
        rows = conn.execute(sql, args).fetchall()
        candidates = [(namespace, owner) for namespace, owner, excess in rows if excess]
        following = (rows[-1][0], rows[-1][1]) if len(rows) == SWEEP_CHUNK else None
        return following, candidates

    return work


def _sweep_writer(
    table: _Table, candidates: list[tuple[str, str]], defaults: RetentionPolicy, now_us: int
) -> Callable[[sqlite3.Connection], dict[str, int]]:
    """A write pruning each candidate by the policy in force at that moment; how many
    it dropped per namespace."""

    def work(conn: sqlite3.Connection) -> dict[str, int]:
        dropped: dict[str, int] = {}
        for namespace, owner in candidates:
            policy = _policy_in_force(conn, table, namespace, owner, defaults)
            count = _prune(conn, table, namespace, owner, policy, now_us)
            dropped[namespace] = dropped.get(namespace, 0) + count
        return dropped

    return work
