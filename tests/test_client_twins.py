"""The asyncio client and the blocking one, compared family by family.

A family, a method or an argument that one client has and the other lacks,
or an answer of another type (beyond coroutine against value and async
iterator against iterator), fails here.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import statekeeper
from statekeeper import _aio_calls, _sync_calls
from statekeeper.jobs import BlockingWorkItem, WorkItem

TARGET = "127.0.0.1:1"  # never dialled: channels connect on the first call


@pytest.fixture
async def clients() -> Any:
    """One client of each kind (the asyncio channel wants a running loop)."""
    async with statekeeper.AsyncClient(TARGET) as asynchronous:
        with statekeeper.Client(TARGET) as blocking:
            yield asynchronous, blocking


def families(client: object) -> dict[str, object]:
    """The family attributes of a client (`snapshots`, `events`, ...)."""
    return {
        name: value
        for name, value in vars(client).items()
        if isinstance(value, _aio_calls.Family | _sync_calls.Family)
    }


def methods(owner: object) -> dict[str, Callable[..., Any]]:
    """The public methods of an object, by name."""
    return {
        name: getattr(owner, name)
        for name in dir(owner)
        if not name.startswith("_") and name != "stub" and callable(getattr(owner, name))
    }


def shape(method: Callable[..., Any]) -> inspect.Signature:
    """A method's signature with its answer's type made comparable across the twins:
    a coroutine's value, an async iterator's items, the blocking names unprefixed."""
    signature = inspect.signature(method)

    def plain(annotation: Any) -> Any:
        if not isinstance(annotation, str):
            return annotation
        annotation = re.sub(r"^Coroutine\[Any, Any, (.*)\]$", r"\1", annotation)
        annotation = re.sub(
            r"AsyncGenerator\[(.*), None\]$", r"Generator[\1, None, None]", annotation
        )
        annotation = annotation.replace("grpc.aio.Channel", "grpc.Channel")
        return annotation.replace("Blocking", "").replace("AsyncClient", "Client")

    return signature.replace(
        parameters=[
            p.replace(annotation=plain(p.annotation)) for p in signature.parameters.values()
        ],
        return_annotation=plain(signature.return_annotation),
    )


def pairs(clients: tuple[Any, Any]) -> Iterator[tuple[str, Callable[..., Any], Callable[..., Any]]]:
    asynchronous, blocking = clients
    for family, methods_of_async in sorted(families(asynchronous).items()):
        methods_of_blocking = methods(families(blocking)[family])
        for name, method in sorted(methods(methods_of_async).items()):
            yield f"{family}.{name}", method, methods_of_blocking[name]


async def test_both_clients_have_the_same_families(clients: tuple[Any, Any]) -> None:
    asynchronous, blocking = clients
    assert sorted(families(asynchronous)) == sorted(families(blocking))
    assert sorted(families(asynchronous)) == [
        "checkpoints",
        "events",
        "jobs",
        "relays",
        "snapshots",
        "threads",
    ]


async def test_each_family_has_the_same_methods_in_both_clients(
    clients: tuple[Any, Any],
) -> None:
    asynchronous, blocking = clients
    for name, family in families(asynchronous).items():
        assert sorted(methods(family)) == sorted(methods(families(blocking)[name])), name


async def test_each_method_takes_the_same_arguments_and_answers_alike(
    clients: tuple[Any, Any],
) -> None:
    compared = 0
    for name, asynchronous, blocking in pairs(clients):
        assert shape(asynchronous) == shape(blocking), name
        compared += 1
    assert compared >= 39  # the methods of the five families today


async def test_only_the_asyncio_clients_methods_are_awaited_or_async_iterated(
    clients: tuple[Any, Any],
) -> None:
    asynchronous_answers = ("Coroutine[", "AsyncGenerator[")
    for name, asynchronous, blocking in pairs(clients):
        answer = str(inspect.signature(asynchronous).return_annotation)
        assert answer.startswith(asynchronous_answers), name
        assert not str(inspect.signature(blocking).return_annotation).startswith(
            asynchronous_answers
        ), name
        assert not inspect.iscoroutinefunction(blocking), name
        assert not inspect.isasyncgenfunction(blocking), name


async def test_both_clients_are_made_with_the_same_arguments() -> None:
    assert shape(statekeeper.AsyncClient.__init__) == shape(statekeeper.Client.__init__)
    assert shape(statekeeper.AsyncClient.from_channel) == shape(statekeeper.Client.from_channel)
    assert sorted(methods(statekeeper.AsyncClient)) == sorted(methods(statekeeper.Client))


def test_both_work_items_have_the_same_methods() -> None:
    assert sorted(methods(WorkItem)) == sorted(methods(BlockingWorkItem))
    for name in methods(WorkItem):
        assert shape(getattr(WorkItem, name)) == shape(getattr(BlockingWorkItem, name)), name
