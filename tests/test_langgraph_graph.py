"""A real LangGraph graph on StatekeeperSaver: a tool-calling loop with a scripted model,
human approval through interrupt(), a server SIGKILLed between the interrupt and the
resume, time travel, concurrent threads and subgraphs.

The graphs run through LangGraph's blocking API on worker threads, with the saver's
blocking methods: interrupt() inside a graph run on asyncio needs Python 3.11's task
contexts, while the blocking path works on every Python statekeeper supports. The
saver's async methods are LangGraph's conformance suite's to prove."""

from __future__ import annotations

import asyncio
import operator
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from typing_extensions import TypedDict

import statekeeper
from statekeeper.langgraph import StatekeeperSaver
from tests.harness import ServerProcess, data_file, running_app


class State(TypedDict):
    messages: Annotated[list[str], operator.add]


def model(state: State) -> dict[str, list[str]]:
    """A scripted model: asks for a tool until it has a tool result, then answers."""
    last = state["messages"][-1]
    if last.startswith("tool-result:"):
        return {"messages": [f"answer: {last.removeprefix('tool-result:')}"]}
    return {"messages": [f"call: search({last})"]}


def after_model(state: State) -> str:
    return "approve" if state["messages"][-1].startswith("call:") else END


def approve(state: State) -> dict[str, list[str]]:
    decision = interrupt({"tool_call": state["messages"][-1]})
    return {"messages": [f"approved: {decision}"]}


def tools(state: State) -> dict[str, list[str]]:
    return {"messages": [f"tool-result:{len(state['messages'])}"]}


def agent() -> StateGraph[State]:
    builder = StateGraph(State)
    builder.add_node("model", model)
    builder.add_node("approve", approve)
    builder.add_node("tools", tools)
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", after_model, ["approve", END])
    builder.add_edge("approve", "tools")
    builder.add_edge("tools", "model")
    return builder


FINISHED = [
    "question",
    "call: search(question)",
    "approved: yes",
    "tool-result:3",
    "answer: 3",
]


def thread(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}}


@pytest.fixture
async def saver(store_url: str) -> AsyncIterator[StatekeeperSaver]:
    async with (
        running_app(store_url) as app,
        statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client,
    ):
        yield StatekeeperSaver(client)


async def test_a_graph_resumes_after_the_server_was_killed_at_its_interrupt(
    tmp_path: Path,
) -> None:
    server = ServerProcess(data_file(tmp_path)).start()
    try:
        async with statekeeper.AsyncClient(server.target) as client:
            graph = agent().compile(checkpointer=StatekeeperSaver(client))
            paused = await asyncio.to_thread(
                graph.invoke, {"messages": ["question"]}, thread("t-1")
            )
        server.kill()
        server.start()
        async with statekeeper.AsyncClient(server.target) as client:
            graph = agent().compile(checkpointer=StatekeeperSaver(client))
            waiting = await asyncio.to_thread(graph.get_state, thread("t-1"))
            finished = await asyncio.to_thread(graph.invoke, Command(resume="yes"), thread("t-1"))
    finally:
        server.stop()

    assert [i.value for i in paused["__interrupt__"]] == [{"tool_call": "call: search(question)"}]
    assert waiting.next == ("approve",)
    assert finished["messages"] == FINISHED


async def test_history_lists_every_step_and_a_fork_from_the_past_runs_on(
    saver: StatekeeperSaver,
) -> None:
    graph = agent().compile(checkpointer=saver)
    await asyncio.to_thread(graph.invoke, {"messages": ["question"]}, thread("t-1"))
    await asyncio.to_thread(graph.invoke, Command(resume="yes"), thread("t-1"))

    history = await asyncio.to_thread(lambda: list(graph.get_state_history(thread("t-1"))))
    at_interrupt = next(s for s in history if s.next == ("approve",))
    forked = await asyncio.to_thread(
        graph.update_state,
        at_interrupt.config,
        {"messages": ["approved: edited"]},
        as_node="approve",
    )
    rerun = await asyncio.to_thread(graph.invoke, None, forked)

    assert history[0].values["messages"] == FINISHED
    assert [s.values.get("messages", []) for s in history][-1] == []
    assert rerun["messages"] == [*FINISHED[:2], "approved: edited", *FINISHED[3:]]


async def test_two_threads_run_at_once_without_touching_each_other(
    saver: StatekeeperSaver,
) -> None:
    graph = agent().compile(checkpointer=saver)

    async def run(thread_id: str, question: str) -> Any:
        await asyncio.to_thread(graph.invoke, {"messages": [question]}, thread(thread_id))
        return await asyncio.to_thread(graph.invoke, Command(resume=thread_id), thread(thread_id))

    one, two = await asyncio.gather(run("t-1", "first"), run("t-2", "second"))

    assert one["messages"][:3] == ["first", "call: search(first)", "approved: t-1"]
    assert two["messages"][:3] == ["second", "call: search(second)", "approved: t-2"]


async def test_a_subgraph_keeps_its_checkpoints_in_its_own_namespace(
    saver: StatekeeperSaver,
) -> None:
    parent = StateGraph(State)
    parent.add_node("agent", agent().compile())
    parent.add_edge(START, "agent")
    graph = parent.compile(checkpointer=saver)

    await asyncio.to_thread(graph.invoke, {"messages": ["question"]}, thread("t-1"))
    inside = await asyncio.to_thread(graph.get_state, thread("t-1"), subgraphs=True)
    finished = await asyncio.to_thread(graph.invoke, Command(resume="yes"), thread("t-1"))
    namespaces = {
        t.config["configurable"]["checkpoint_ns"] async for t in saver.alist(thread("t-1"))
    }

    assert inside.tasks[0].state is not None
    assert inside.tasks[0].state.next == ("approve",)
    # The subgraph hands back its whole list, which the parent's reducer appends.
    assert finished["messages"] == ["question", *FINISHED]
    assert "" in namespaces
    assert any(ns.startswith("agent:") for ns in namespaces)
