"""StatekeeperSaver beside LangGraph's own savers, in one run on one machine.

For each saver: a 10-node graph run turn after turn on one thread (each turn
is 11 checkpoints: put, put_writes and the reads LangGraph does), the time
per step; `alist` over the whole thread (1,100 checkpoints by default); and
the bytes the thread takes: on PostgreSQL its tables (with indexes and
TOAST), on SQLite the database file once its last connection has closed.

    python bench/langgraph_saver.py              # 100 turns
    python bench/langgraph_saver.py --turns 20   # quicker
    python bench/langgraph_saver.py --alist 1000 5000

`--alist N ...` measures listing alone, on PostgreSQL: a thread of N
checkpoints of the graph's shape (13 channels, three pending writes each,
small values, so that the time is the listing's and not the bytes'), saved
straight through each saver, then `alist` over it, per N.

Needs the dev extra (which holds the peers measured: langgraph-checkpoint-sqlite
and langgraph-checkpoint-postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import operator
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
from langgraph.checkpoint.base import BaseCheckpointSaver, Checkpoint, empty_checkpoint  # noqa: E402
from langgraph.checkpoint.base.id import uuid6  # noqa: E402
from langgraph.graph import START, StateGraph  # noqa: E402
from typing_extensions import TypedDict  # noqa: E402

import statekeeper  # noqa: E402
from bench.servers import POSTGRES_URL, statekeeper_server, store_url  # noqa: E402
from statekeeper.langgraph import StatekeeperSaver  # noqa: E402

NODES = 10


class State(TypedDict):
    messages: Annotated[list[str], operator.add]
    scratch: str


def node(n: int) -> Callable[[State], dict[str, Any]]:
    def step(state: State) -> dict[str, Any]:
        return {"messages": [f"node {n}: " + "x" * 200], "scratch": f"{n}"}

    return step


def graph(saver: BaseCheckpointSaver[Any]) -> Any:
    builder = StateGraph(State)
    for n in range(NODES):
        builder.add_node(f"n{n}", node(n))
        builder.add_edge(START if n == 0 else f"n{n - 1}", f"n{n}")
    return builder.compile(checkpointer=saver)


async def measure(saver: BaseCheckpointSaver[Any], turns: int) -> tuple[float, float, int]:
    """(ms per step, ms for alist over the thread, checkpoints listed)."""
    compiled = graph(saver)
    config = {"configurable": {"thread_id": f"bench-{secrets.token_hex(4)}"}}
    began = time.perf_counter()
    for turn in range(turns):
        await compiled.ainvoke({"messages": [f"turn {turn}"]}, config)
    steps = turns * (NODES + 1)
    per_step = (time.perf_counter() - began) * 1000 / steps
    began = time.perf_counter()
    listed = [t async for t in saver.alist(config)]
    return per_step, (time.perf_counter() - began) * 1000, len(listed)


async def statekeeper_row(kind: str, turns: int) -> tuple[str, float, float, int, str]:
    """The row of StatekeeperSaver on a fresh store of `kind` with the bytes it keeps."""
    stack = contextlib.ExitStack()
    file_bytes: list[int] = []
    try:
        url = stack.enter_context(store_url(kind))
        if kind == "file":
            # Once the server has stopped (closed its database), before the file goes.
            stack.callback(lambda: file_bytes.append(sqlite_bytes(url.removeprefix("file:"))))
        server = stack.enter_context(statekeeper_server(url))
        async with statekeeper.AsyncClient(server.target, timeout=30) as client:
            per_step, listing, count = await measure(StatekeeperSaver(client), turns)
        size = ""
        if kind == "postgres":
            size = f"{await schema_bytes(url.rsplit('schema=', 1)[1], THREAD_TABLES):,}"
    finally:
        # Dropping the schema runs its own event loop: off this one.
        await asyncio.to_thread(stack.close)
    if file_bytes:
        size = f"{file_bytes[0]:,}"
    return (f"StatekeeperSaver, {kind} store", per_step, listing, count, size)


def sqlite_bytes(path: str) -> int:
    """Bytes of a SQLite database: its file with any write-ahead log beside it."""
    return sum(Path(p).stat().st_size for p in (path, f"{path}-wal") if Path(p).exists())


@contextlib.asynccontextmanager
async def sqlite_saver(path: str) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async with AsyncSqliteSaver.from_conn_string(path) as saver:
        yield saver


@contextlib.asynccontextmanager
async def postgres_saver(schema: str) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    async with AsyncPostgresSaver.from_conn_string(url) as saver:
        await saver.setup()
        yield saver


THREAD_TABLES = ["threads", "thread_checkpoints", "thread_versions", "thread_values"]
THREAD_TABLES += ["thread_writes"]
"""The thread tables of every schema version (`thread_versions` is gone from the second)."""


async def schema_bytes(schema: str, tables: list[str] | None = None) -> int:
    """Bytes of the tables (with their indexes and TOAST) of `schema`, or of `tables` in it."""
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        return int(
            await conn.fetchval(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = $1 AND c.relkind = 'r'"
                " AND ($2::text[] IS NULL OR c.relname = ANY($2::text[]))",
                schema,
                tables,
            )
        )
    finally:
        await conn.close()


def filler_checkpoints(
    saver: BaseCheckpointSaver[Any], count: int
) -> Iterator[tuple[Checkpoint, dict[str, Any], dict[str, Any]]]:
    """`count` checkpoints of one thread: each with the graph's 13 channels, three of them
    changed (so three new values), in id order."""
    channels = ["messages", "scratch", "__start__"] + [f"branch:to:n{n}" for n in range(NODES)]
    versions: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for step in range(count):
        changed = ["messages", "scratch", channels[3 + step % NODES]]
        for channel in changed:
            versions[channel] = saver.get_next_version(versions.get(channel), None)
            values[channel] = f"step {step}: " + "x" * 200
        checkpoint = empty_checkpoint()
        checkpoint["id"] = str(uuid6(clock_seq=step))
        checkpoint["channel_values"] = dict(values)
        checkpoint["channel_versions"] = dict(versions)
        checkpoint["versions_seen"] = {"n0": {"messages": versions["messages"]}}
        metadata = {"source": "loop", "step": step, "parents": {}}
        yield checkpoint, metadata, {channel: versions[channel] for channel in changed}


async def fill_and_list(saver: BaseCheckpointSaver[Any], count: int) -> float:
    """Fill a fresh thread with `count` checkpoints; ms for `alist` over all of it."""
    thread = f"list-{secrets.token_hex(4)}"
    config: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    for checkpoint, metadata, new_versions in filler_checkpoints(saver, count):
        config = await saver.aput(config, checkpoint, metadata, new_versions)  # type: ignore[arg-type]
        writes = [(f"branch:to:n{n}", f"write {n}") for n in range(3)]
        await saver.aput_writes(config, writes, task_id=f"task-{checkpoint['id']}")  # type: ignore[arg-type]
    began = time.perf_counter()
    listed = [t async for t in saver.alist({"configurable": {"thread_id": thread}})]
    elapsed = (time.perf_counter() - began) * 1000
    assert len(listed) == count, (len(listed), count)
    return elapsed


async def listing_rows(counts: list[int]) -> None:
    """StatekeeperSaver on PostgreSQL beside AsyncPostgresSaver: `alist` per thread size."""
    rows: list[tuple[str, int, float]] = []
    stack = contextlib.ExitStack()
    try:
        server = stack.enter_context(statekeeper_server(stack.enter_context(store_url("postgres"))))
        async with statekeeper.AsyncClient(server.target, timeout=60) as client:
            saver = StatekeeperSaver(client)
            for count in counts:
                rows.append(
                    ("StatekeeperSaver, postgres store", count, await fill_and_list(saver, count))
                )
    finally:
        # Dropping the schema runs its own event loop: off this one.
        await asyncio.to_thread(stack.close)
    schema = f"bench_lg_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(POSTGRES_URL)
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.close()
    try:
        async with postgres_saver(schema) as saver:
            rows += [("AsyncPostgresSaver", n, await fill_and_list(saver, n)) for n in counts]
    finally:
        conn = await asyncpg.connect(POSTGRES_URL)
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
    print("alist over one thread, PostgreSQL")
    print("| saver | checkpoints | ms alist (all) | ms per 100 |")
    print("|---|---|---|---|")
    for name, count, elapsed in rows:
        print(f"| {name} | {count:,} | {elapsed:,.0f} | {elapsed * 100 / count:.1f} |")


async def main(turns: int) -> None:
    rows = [await statekeeper_row(kind, turns) for kind in ("file", "postgres")]
    with tempfile.TemporaryDirectory() as directory:
        async with sqlite_saver(f"{directory}/lg.db") as saver:
            per_step, listing, count = await measure(saver, turns)
        size = f"{sqlite_bytes(f'{directory}/lg.db'):,}"
    rows.append(("AsyncSqliteSaver", per_step, listing, count, size))

    schema = f"bench_lg_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(POSTGRES_URL)
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.close()
    try:
        async with postgres_saver(schema) as saver:
            per_step, listing, count = await measure(saver, turns)
        rows.append(
            ("AsyncPostgresSaver", per_step, listing, count, f"{await schema_bytes(schema):,}")
        )
    finally:
        conn = await asyncpg.connect(POSTGRES_URL)
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()

    print(f"{turns} turns of a {NODES}-node graph on one thread")
    print("| saver | ms per step | ms alist (all) | checkpoints | bytes kept |")
    print("|---|---|---|---|---|")
    for name, per_step, listing, count, size in rows:
        print(f"| {name} | {per_step:.2f} | {listing:.0f} | {count} | {size} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--alist", type=int, nargs="+", metavar="N", help="listing alone")
    args = parser.parse_args()
    asyncio.run(listing_rows(args.alist) if args.alist else main(args.turns))
