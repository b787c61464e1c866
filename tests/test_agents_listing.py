"""Listing agents by their newest checkpoint: id prefixes become key ranges, and a page
is an index range scan on every backend, however many agents there are."""

from __future__ import annotations

import sqlite3

import pytest

from statekeeper_server.stores.checkpoints import prefix_end
from statekeeper_server.stores.postgres import checkpoints as postgres_checkpoints
from statekeeper_server.stores.sqlite import checkpoints as sqlite_checkpoints
from tests.postgres_harness import open_engine

AGENTS = 10_000


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        ("agent-1", "agent-2"),
        ("a", "b"),
        ("agent.", "agent/"),
        ("z9", "z:"),
        ("a\U0010ffff", "b"),
        ("x\ud7ff", "x\ue000"),
    ],
)
def test_the_end_of_a_prefix_follows_every_key_starting_with_it(prefix: str, end: str) -> None:
    assert prefix_end(prefix) == end


def test_an_empty_prefix_has_no_end() -> None:
    assert prefix_end("") is None


def test_a_prefix_of_only_the_last_code_point_has_no_end() -> None:
    assert prefix_end("\U0010ffff\U0010ffff") is None


@pytest.mark.parametrize("key", ["agent-1", "agent-1.x", "agent-10", "agent-1\U0010ffff"])
def test_keys_starting_with_the_prefix_lie_before_its_end(key: str) -> None:
    end = prefix_end("agent-1")
    assert end is not None
    assert "agent-1" <= key < end


@pytest.mark.parametrize("key", ["agent-2", "agent-", "agent.1", "agent-2-1"])
def test_keys_not_starting_with_the_prefix_lie_outside_its_range(key: str) -> None:
    end = prefix_end("agent-1")
    assert end is not None
    assert not ("agent-1" <= key < end)


def sqlite_plan(prefix: str, after: str) -> str:
    conn = sqlite3.connect(":memory:")
    try:
        for statement in sqlite_checkpoints.MIGRATIONS[0]:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO agent_checkpoints (namespace, agent_id, checkpoint_id, is_head,"
            " create_us, data) VALUES ('default', ?, ?, 1, 0, x'00')",
            [(f"agent-{n:05}", f"cp-{n}") for n in range(AGENTS)],
        )
        conn.execute("ANALYZE")
        sql, args = sqlite_checkpoints.latest_agents_query("default", prefix, after, 50)
        rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", args).fetchall()
        return "\n".join(row[-1] for row in rows)
    finally:
        conn.close()


@pytest.mark.parametrize(("prefix", "after"), [("", ""), ("agent-01", ""), ("agent-0", "agent-05")])
def test_a_page_of_agents_in_sqlite_searches_the_heads_index_in_order(
    prefix: str, after: str
) -> None:
    plan = sqlite_plan(prefix, after)
    assert "SEARCH c USING INDEX agent_checkpoints_heads (namespace=? AND agent_id>?" in plan
    assert "TEMP B-TREE" not in plan


@pytest.mark.parametrize(("prefix", "after"), [("", ""), ("agent-01", ""), ("agent-0", "agent-05")])
async def test_a_page_of_agents_in_postgresql_scans_the_heads_key_in_order(
    postgres_url: str, prefix: str, after: str
) -> None:
    async with open_engine(postgres_url) as engine:
        await engine.execute(
            "INSERT INTO agent_checkpoints (namespace, agent_id, checkpoint_id, create_us, data)"
            " SELECT 'default', 'agent-' || lpad(n::text, 5, '0'), 'cp-' || n, 0, '\\x00'"
            f" FROM generate_series(0, {AGENTS - 1}) AS n"
        )
        await engine.execute(
            "INSERT INTO agent_checkpoint_heads (namespace, agent_id, seq, checkpoint_id,"
            " create_us) SELECT namespace, agent_id, seq, checkpoint_id, create_us"
            " FROM agent_checkpoints"
        )
        await engine.execute("ANALYZE agent_checkpoints, agent_checkpoint_heads")
        sql, params = postgres_checkpoints.latest_agents_query("default", prefix, after, 50)
        rows = await engine.fetch(f"EXPLAIN {sql}", *params.values)
    plan = "\n".join(row[0] for row in rows)
    assert "Index Scan using agent_checkpoint_heads_pkey on agent_checkpoint_heads" in plan
    assert "Seq Scan" not in plan
    assert "Sort" not in plan
