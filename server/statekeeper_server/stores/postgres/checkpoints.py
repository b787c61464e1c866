"""Checkpoints in PostgreSQL: a history table and a head table per kind.

A history row holds one encoded checkpoint; `seq`, from an identity
sequence, orders the history of each run or agent. A head row per run or
agent points at its newest checkpoint (its seq, id and create time) and
keeps the retention the newest save named (NULL columns follow the
server's settings).

Every save locks its head row (`SELECT ... FOR UPDATE`) before reading the
newest checkpoint, so saves of one run or agent through any number of
replicas are applied one after the other: the parent compare-and-set is
race-free, and each insert draws its seq while holding the lock, so seqs
grow in commit order within a run or agent. Two first saves race on the
head's primary key instead: each claims the head with `INSERT ... ON
CONFLICT DO NOTHING` (an empty head, filled in by the same transaction),
and the loser, which waited for the winner's commit, then locks the
winner's head and compares against it. Deletes take the head first too, so
a save and a delete never interleave.

Workflow rows keep their metadata as jsonb; a filter on a key matches when
`metadata -> key` equals the filter value as jsonb, which compares type
and value (1 and 1.0 are equal numbers; 1, "1" and true never match).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from statekeeper.v1 import checkpoints_pb2
from statekeeper_server.limits import PAGE_BUDGET_BYTES
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
    stored_size,
    workflow_history_filters,
)
from statekeeper_server.stores.paging import decode_page_token
from statekeeper_server.stores.postgres.engine import PostgresEngine, Transaction
from statekeeper_server.stores.postgres.migrations import fast_compression
from statekeeper_server.stores.postgres.pages import (
    Params,
    framed_octets,
    page_rows,
    within_bytes,
)

MIGRATIONS = [
    [
        """CREATE TABLE workflow_checkpoints (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            namespace TEXT COLLATE "C" NOT NULL,
            run_id TEXT COLLATE "C" NOT NULL,
            checkpoint_id TEXT COLLATE "C" NOT NULL,
            workflow_name TEXT COLLATE "C" NOT NULL,
            create_us BIGINT NOT NULL,
            metadata JSONB NOT NULL,
            data BYTEA NOT NULL
        )""",
        "CREATE UNIQUE INDEX workflow_checkpoints_by_id"
        " ON workflow_checkpoints (namespace, run_id, checkpoint_id)",
        "CREATE INDEX workflow_checkpoints_history"
        " ON workflow_checkpoints (namespace, run_id, seq)",
        # seq, checkpoint_id, create_us and workflow_name are NULL only inside
        # the transaction of a run's first save, which claims the row.
        """CREATE TABLE workflow_checkpoint_heads (
            namespace TEXT COLLATE "C" NOT NULL,
            run_id TEXT COLLATE "C" NOT NULL,
            seq BIGINT,
            checkpoint_id TEXT COLLATE "C",
            create_us BIGINT,
            workflow_name TEXT COLLATE "C",
            keep_last BIGINT,
            ttl_us BIGINT,
            PRIMARY KEY (namespace, run_id)
        )""",
        "CREATE INDEX workflow_checkpoint_heads_by_workflow"
        " ON workflow_checkpoint_heads (namespace, workflow_name, run_id)",
        """CREATE TABLE agent_checkpoints (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            namespace TEXT COLLATE "C" NOT NULL,
            agent_id TEXT COLLATE "C" NOT NULL,
            checkpoint_id TEXT COLLATE "C" NOT NULL,
            create_us BIGINT NOT NULL,
            data BYTEA NOT NULL
        )""",
        "CREATE UNIQUE INDEX agent_checkpoints_by_id"
        " ON agent_checkpoints (namespace, agent_id, checkpoint_id)",
        "CREATE INDEX agent_checkpoints_history ON agent_checkpoints (namespace, agent_id, seq)",
        """CREATE TABLE agent_checkpoint_heads (
            namespace TEXT COLLATE "C" NOT NULL,
            agent_id TEXT COLLATE "C" NOT NULL,
            seq BIGINT,
            checkpoint_id TEXT COLLATE "C",
            create_us BIGINT,
            keep_last BIGINT,
            ttl_us BIGINT,
            PRIMARY KEY (namespace, agent_id)
        )""",
    ],
    [
        # Large records are compressed with lz4, which costs the database far less CPU.
        fast_compression("workflow_checkpoints", "data", "metadata"),
        fast_compression("agent_checkpoints", "data"),
    ],
]

SWEEP_CHUNK = 256
"""Runs or agents examined per read (and pruned per transaction) by a sweep."""


@dataclass(frozen=True)
class _Table:
    """One kind's tables and owner column (constants: safe to format into SQL)."""

    name: str
    heads: str
    owner: str
    kind: CheckpointKind


_WORKFLOWS = _Table("workflow_checkpoints", "workflow_checkpoint_heads", "run_id", WORKFLOW)
_AGENTS = _Table("agent_checkpoints", "agent_checkpoint_heads", "agent_id", AGENT)


@dataclass(frozen=True)
class _Head:
    """The newest checkpoint of a run or agent, as its locked head row names it."""

    seq: int
    checkpoint_id: str
    create_us: int


class PostgresCheckpointStore:
    """CheckpointStore on a PostgresEngine (see stores.checkpoints for guarantees)."""

    def __init__(self, engine: PostgresEngine) -> None:
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
        """Lock the run's head, check the parent, insert, advance the head, prune."""
        metadata = await off_loop_if_large(
            checkpoint.metadata.ByteSize(), metadata_json, checkpoint.metadata
        )
        run_id = checkpoint.run_id
        async with self._engine.transaction() as tx:
            head = await _lock_head(tx, _WORKFLOWS, namespace, run_id)
            # Encoding up to 2 MiB: on a thread, as the file store's writer does it.
            minted = await asyncio.to_thread(
                mint_workflow,
                checkpoint,
                newest_id=head.checkpoint_id if head else "",
                newest_create_us=head.create_us if head else None,
                expected_parent=expected_parent,
                now_us=now_us,
            )
            stored = minted.checkpoint
            seq = await tx.conn.fetchval(
                "WITH saved AS (INSERT INTO workflow_checkpoints (namespace, run_id,"
                " checkpoint_id, workflow_name, create_us, metadata, data)"
                " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7) RETURNING seq)"
                " UPDATE workflow_checkpoint_heads h SET seq = saved.seq, checkpoint_id = $3,"
                " create_us = $5, workflow_name = $4, keep_last = $8, ttl_us = $9 FROM saved"
                " WHERE h.namespace = $1 AND h.run_id = $2 RETURNING saved.seq",
                namespace,
                run_id,
                stored.checkpoint_id,
                stored.workflow_name,
                minted.create_us,
                metadata,
                minted.data,
                retention.keep_last,
                retention.ttl_us,
            )
            policy = retention.resolve(defaults)
            dropped = await _prune(tx, _WORKFLOWS, namespace, run_id, seq, policy, minted.create_us)
        return Saved(stored, minted.data, dropped)

    async def load_workflow(
        self, namespace: str, run_id: str, checkpoint_id: str, *, fallback_to_readable: bool
    ) -> Recovered:
        """The run's newest checkpoint (through its head), or the one named."""
        if checkpoint_id:
            row = await self._engine.fetchrow(
                "SELECT seq, run_id, checkpoint_id, data FROM workflow_checkpoints"
                " WHERE namespace = $1 AND run_id = $2 AND checkpoint_id = $3",
                namespace,
                run_id,
                checkpoint_id,
            )
            if row is None:
                raise checkpoint_not_found(WORKFLOW, run_id, checkpoint_id)
            return Recovered(
                readable_checkpoint(checkpoints_pb2.WorkflowCheckpoint, WORKFLOW, _stored(row))
            )
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
            where,
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
        params = Params(namespace, after)
        conditions = await _conditions_off_loop(where, params, name_column="h.workflow_name")
        rows, more = await self._fetch_page(
            "SELECT c.seq, c.run_id AS owner, c.checkpoint_id, c.data"
            " FROM workflow_checkpoint_heads h JOIN workflow_checkpoints c ON c.seq = h.seq"
            f" WHERE h.namespace = $1 AND h.run_id > $2{conditions}"
            f" ORDER BY h.run_id LIMIT {params.add(page_size + 1)}",
            params,
            order="owner",
            limit=page_size,
        )
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
        """Lock the agent's head, insert, advance the head, prune."""
        agent_id = checkpoint.agent_id
        async with self._engine.transaction() as tx:
            head = await _lock_head(tx, _AGENTS, namespace, agent_id)
            # Encoding up to 2 MiB: on a thread, as the file store's writer does it.
            minted = await asyncio.to_thread(
                mint_agent,
                checkpoint,
                newest_id=head.checkpoint_id if head else "",
                newest_create_us=head.create_us if head else None,
                now_us=now_us,
            )
            stored = minted.checkpoint
            seq = await tx.conn.fetchval(
                "WITH saved AS (INSERT INTO agent_checkpoints (namespace, agent_id,"
                " checkpoint_id, create_us, data) VALUES ($1, $2, $3, $4, $5) RETURNING seq)"
                " UPDATE agent_checkpoint_heads h SET seq = saved.seq, checkpoint_id = $3,"
                " create_us = $4, keep_last = $6, ttl_us = $7 FROM saved"
                " WHERE h.namespace = $1 AND h.agent_id = $2 RETURNING saved.seq",
                namespace,
                agent_id,
                stored.checkpoint_id,
                minted.create_us,
                minted.data,
                retention.keep_last,
                retention.ttl_us,
            )
            policy = retention.resolve(defaults)
            dropped = await _prune(tx, _AGENTS, namespace, agent_id, seq, policy, minted.create_us)
        return Saved(stored, minted.data, dropped)

    async def recover_agent(
        self, namespace: str, agent_id: str, *, fallback_to_readable: bool
    ) -> Recovered:
        """The agent's newest checkpoint (through its head)."""
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
            WorkflowFilter(),
            agent_history_filters(agent_id, before),
            before=before,
            page_size=page_size,
            page_token=page_token,
        )

    async def list_latest_agents(
        self, namespace: str, agent_id_prefix: str, *, page_size: int, page_token: str
    ) -> CheckpointPage:
        """A page of agent heads after the token's agent_id: a range scan of the heads'
        primary key (namespace, agent_id), each joined to its row by seq. A head
        still being claimed by a first save (no seq yet) is not listed."""
        filters = latest_agents_filters(agent_id_prefix)
        after = decode_page_token(page_token, filters, str) or ""
        sql, params = latest_agents_query(namespace, agent_id_prefix, after, page_size)
        rows, more = await self._fetch_page(sql, params, order="owner", limit=page_size)
        return latest_page(checkpoints_pb2.AgentCheckpoint, AGENT, rows, more, filters)

    async def delete_agent(self, namespace: str, agent_id: str) -> int:
        """Delete every checkpoint of the agent."""
        return await self._delete(_AGENTS, namespace, agent_id)

    # -- retention -----------------------------------------------------------

    async def sweep(self, defaults: RetentionPolicy, now_us: int) -> int:
        """Prune every run and agent holding more than its policy allows.

        Heads are examined a chunk per statement; those with something to
        drop are pruned in one transaction per chunk, each under its head's
        lock and by the policy in force then, so that a save landing in
        between (through any replica) is honoured and replicas sweeping at
        once never drop a checkpoint twice.
        """
        dropped = 0
        for table in (_WORKFLOWS, _AGENTS):
            cursor: tuple[str, str] | None = ("", "")
            while cursor is not None:
                cursor, candidates = await self._sweep_candidates(table, cursor, defaults, now_us)
                if candidates:
                    by_namespace = await self._sweep_prune(table, candidates, defaults, now_us)
                    store_metrics.checkpoints_swept(metric_kind(table.kind), by_namespace)
                    dropped += sum(by_namespace.values())
        return dropped

    async def _sweep_candidates(
        self, table: _Table, cursor: tuple[str, str], defaults: RetentionPolicy, now_us: int
    ) -> tuple[tuple[str, str] | None, list[tuple[str, str]]]:
        """The next chunk of heads after `cursor`: where to continue (None after
        the last chunk), and the (namespace, owner) pairs holding more than their
        policy keeps: a row beyond `keep_last`, or an expired row older than the
        head (create times grow with seq, so the oldest row is the first by seq).
        """
        t, o = table.name, table.owner
        rows = await self._engine.fetch(
            f"SELECT h.namespace, h.{o} AS owner,"
            f" (h.k > 0 AND EXISTS (SELECT 1 FROM {t} c"
            f"   WHERE c.namespace = h.namespace AND c.{o} = h.{o}"
            "   ORDER BY c.seq DESC OFFSET h.k))"
            f" OR (h.ttl > 0 AND (SELECT c.create_us FROM {t} c"
            f"   WHERE c.namespace = h.namespace AND c.{o} = h.{o} AND c.seq < h.seq"
            "   ORDER BY c.seq LIMIT 1) < $3 - h.ttl) AS excess"
            f" FROM (SELECT namespace, {o}, seq, COALESCE(keep_last, $4) AS k,"
            f"   COALESCE(ttl_us, $5) AS ttl FROM {table.heads}"
            f"   WHERE (namespace, {o}) > ($1, $2) AND seq IS NOT NULL"
            f"   ORDER BY namespace, {o} LIMIT $6) h",
            *cursor,
            now_us,
            defaults.keep_last,
            defaults.ttl_us,
            SWEEP_CHUNK,
        )
        candidates = [(row["namespace"], row["owner"]) for row in rows if row["excess"]]
        following = (rows[-1]["namespace"], rows[-1]["owner"]) if len(rows) == SWEEP_CHUNK else None
        return following, candidates

    async def _sweep_prune(
        self,
        table: _Table,
        candidates: list[tuple[str, str]],
        defaults: RetentionPolicy,
        now_us: int,
    ) -> dict[str, int]:
        """Prune each candidate under its head's lock, by the policy in force; how many
        were dropped per namespace (once committed)."""
        dropped: dict[str, int] = {}
        async with self._engine.transaction() as tx:
            for namespace, owner in candidates:
                row = await tx.conn.fetchrow(
                    f"SELECT seq, keep_last, ttl_us FROM {table.heads}"
                    f" WHERE namespace = $1 AND {table.owner} = $2 FOR UPDATE",
                    namespace,
                    owner,
                )
                if row is None or row["seq"] is None:
                    continue
                policy = RetentionOverride(row["keep_last"], row["ttl_us"]).resolve(defaults)
                count = await _prune(tx, table, namespace, owner, row["seq"], policy, now_us)
                dropped[namespace] = dropped.get(namespace, 0) + count
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
        """The newest checkpoint through the head, falling back if asked."""
        row = await self._engine.fetchrow(
            f"SELECT c.seq, c.{table.owner}, c.checkpoint_id, c.data FROM {table.heads} h"
            f" JOIN {table.name} c ON c.seq = h.seq"
            f" WHERE h.namespace = $1 AND h.{table.owner} = $2",
            namespace,
            owner,
        )
        if row is None:
            raise no_checkpoint(table.kind, owner)

        async def older(position: int, limit: int) -> Sequence[StoredCheckpoint]:
            rows, _ = await self._rows_before(
                table, namespace, owner, position, WorkflowFilter(), limit
            )
            return rows

        return await newest_readable(
            message_type,
            table.kind,
            _stored(row),
            older,
            fallback_to_readable=fallback_to_readable,
        )

    async def _history(
        self,
        message_type: type[M],
        table: _Table,
        namespace: str,
        owner: str,
        where: WorkflowFilter,
        filters: dict[str, object],
        *,
        before: str,
        page_size: int,
        page_token: str,
    ) -> CheckpointPage:
        """A page of one owner's history, newest first, below `before` or the token."""
        upper = decode_page_token(page_token, filters, int)
        if upper is None and before:
            upper = await self._engine.fetchval(
                f"SELECT seq FROM {table.name}"
                f" WHERE namespace = $1 AND {table.owner} = $2 AND checkpoint_id = $3",
                namespace,
                owner,
                before,
            )
            if upper is None:
                raise checkpoint_not_found(table.kind, owner, before)
        rows, more = await self._rows_before(table, namespace, owner, upper, where, page_size)
        return history_page(message_type, table.kind, rows, more, filters)

    async def _rows_before(
        self,
        table: _Table,
        namespace: str,
        owner: str,
        upper: int | None,
        where: WorkflowFilter,
        limit: int,
    ) -> tuple[list[StoredCheckpoint], bool]:
        """The matching rows of one owner with seq below `upper` (all if None), newest
        first, at most `limit` and a page's bytes of them; and whether more follow."""
        params = Params(namespace, owner)
        sql = (
            f"SELECT c.seq, c.{table.owner} AS owner, c.checkpoint_id, c.data FROM {table.name} c"
            f" WHERE c.namespace = $1 AND c.{table.owner} = $2"
        )
        if upper is not None:
            sql += f" AND c.seq < {params.add(upper)}"
        sql += await _conditions_off_loop(where, params, name_column="c.workflow_name")
        sql += f" ORDER BY c.seq DESC LIMIT {params.add(limit + 1)}"
        return await self._fetch_page(sql, params, order="seq DESC", limit=limit)

    async def _fetch_page(
        self, sql: str, params: Params, *, order: str, limit: int
    ) -> tuple[list[StoredCheckpoint], bool]:
        """The rows of `sql` (seq, owner, checkpoint_id, data; in `order`, limited to
        `limit` + 1) that fit a page of `limit` rows and PAGE_BUDGET_BYTES, which the
        database reads only that far; and whether more follow."""
        records = await self._engine.fetch(
            within_bytes(
                sql,
                columns="seq, owner, checkpoint_id, data",
                size=framed_octets("octet_length(data)"),
                order=order,
                max_count=params.add(limit),
                max_bytes=params.add(PAGE_BUDGET_BYTES),
            ),
            *params.values,
        )
        return page_rows(records, _stored, stored_size, limit)

    async def _delete(self, table: _Table, namespace: str, owner: str) -> int:
        """Delete the head first: it waits for a save holding it, whose row the
        history delete (a later statement) then sees."""
        async with self._engine.transaction() as tx:
            await tx.conn.execute(
                f"DELETE FROM {table.heads} WHERE namespace = $1 AND {table.owner} = $2",
                namespace,
                owner,
            )
            deleted: int = await tx.conn.fetchval(
                f"WITH gone AS (DELETE FROM {table.name}"
                f" WHERE namespace = $1 AND {table.owner} = $2 RETURNING 1)"
                " SELECT count(*) FROM gone",
                namespace,
                owner,
            )
        return deleted


async def _lock_head(tx: Transaction, table: _Table, namespace: str, owner: str) -> _Head | None:
    """Lock the owner's head row, claiming it if there is none yet.

    Returns the newest checkpoint it names, or None if the owner has none.
    A claim that loses to a concurrent first save waits for that save to
    commit, inserts nothing, and locks the winner's head on the next turn.
    """
    while True:
        row = await tx.conn.fetchrow(
            f"SELECT seq, checkpoint_id, create_us FROM {table.heads}"
            f" WHERE namespace = $1 AND {table.owner} = $2 FOR UPDATE",
            namespace,
            owner,
        )
        if row is not None:
            return None if row["seq"] is None else _Head(*row)
        await tx.conn.execute(
            f"INSERT INTO {table.heads} (namespace, {table.owner}) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING",
            namespace,
            owner,
        )


async def _prune(
    tx: Transaction,
    table: _Table,
    namespace: str,
    owner: str,
    head_seq: int,
    policy: RetentionPolicy,
    now_us: int,
) -> int:
    """Drop what `policy` does not keep of one owner's history; never the head.

    `now_us` is the clock of the TTL: a save passes its checkpoint's create time.
    """
    params = Params(namespace, owner, head_seq)
    reasons = []
    if policy.keep_last > 0:
        reasons.append(
            f"seq <= (SELECT seq FROM {table.name} WHERE namespace = $1 AND {table.owner} = $2"
            f" ORDER BY seq DESC LIMIT 1 OFFSET {params.add(policy.keep_last)})"
        )
    cutoff = policy.cutoff_us(now_us)
    if cutoff is not None:
        reasons.append(f"create_us < {params.add(cutoff)}")
    if not reasons:
        return 0
    dropped: int = await tx.conn.fetchval(
        f"WITH dropped AS (DELETE FROM {table.name}"
        f" WHERE namespace = $1 AND {table.owner} = $2 AND seq < $3"
        f" AND ({' OR '.join(reasons)}) RETURNING 1) SELECT count(*) FROM dropped",
        *params.values,
    )
    return dropped


async def _conditions_off_loop(where: WorkflowFilter, params: Params, *, name_column: str) -> str:
    """`_workflow_conditions`, on a worker thread when the filter's text is large (its
    values are written as JSON, a few milliseconds per megabyte)."""
    size = sum(len(c.key) + len(c.value) for c in where.metadata if isinstance(c.value, str))
    return await off_loop_if_large(
        size, _workflow_conditions, where, params, name_column=name_column
    )


def _workflow_conditions(where: WorkflowFilter, params: Params, *, name_column: str) -> str:
    """The SQL to append to a WHERE clause for `where` (metadata over alias `c`)."""
    sql = ""
    if where.workflow_name:
        sql += f" AND {name_column} = {params.add(where.workflow_name)}"
    for condition in where.metadata:
        value = json_value(condition)
        if value is None:
            # Nothing stored can match; the parameters added so far stay in use.
            sql += " AND false"
            continue
        sql += f" AND c.metadata -> {params.add(condition.key)} = {params.add(value)}::jsonb"
    return sql


def latest_agents_query(
    namespace: str, agent_id_prefix: str, after: str, page_size: int
) -> tuple[str, Params]:
    """The query of a page of agent heads (seq, owner, checkpoint_id, data): ids
    after `after` starting with `agent_id_prefix`, `page_size` + 1 of them, by
    a range scan of the heads' primary key."""
    params = Params(namespace, after, agent_id_prefix)
    sql = (
        "SELECT c.seq, c.agent_id AS owner, c.checkpoint_id, c.data"
        " FROM agent_checkpoint_heads h JOIN agent_checkpoints c ON c.seq = h.seq"
        " WHERE h.namespace = $1 AND h.agent_id > $2 AND h.agent_id >= $3"
    )
    end = prefix_end(agent_id_prefix)
    if end is not None:
        sql += f" AND h.agent_id < {params.add(end)}"
    sql += f" ORDER BY h.agent_id LIMIT {params.add(page_size + 1)}"
    return sql, params


def json_value(condition: MetadataCondition) -> str | None:
    """The filter value as a JSON text; None for a number no stored metadata
    can hold (NaN or an infinity: saves refuse them)."""
    if isinstance(condition.value, float) and not math.isfinite(condition.value):
        return None
    return json.dumps(condition.value)


def _stored(row: asyncpg.Record) -> StoredCheckpoint:
    return StoredCheckpoint(row[0], row[1], row[2], row[3])
