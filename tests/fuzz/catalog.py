"""The RPCs to fuzz, read from the service descriptors of statekeeper.v1.

Every `*_pb2` module of the generated package is imported and every method
of every service it declares becomes an `Rpc`, so an RPC added to the protos
is fuzzed as soon as its stubs are generated, without touching the fuzzer.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import cast

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from google.protobuf.message import Message

import statekeeper.v1

READ_VERBS = ("Get", "List", "Load", "Recover", "Watch", "Replay")
"""Method name prefixes of RPCs that only read; every other RPC may write."""


@dataclass(frozen=True)
class Rpc:
    """One method of one service, with the classes of its messages."""

    service: str
    """Full name of the service, such as `statekeeper.v1.SnapshotService`."""
    name: str
    """Method name, such as `SaveSnapshot`."""
    request: type[Message]
    response: type[Message]
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        """The HTTP/2 path of the method: `/package.Service/Method`."""
        return f"/{self.service}/{self.name}"

    @property
    def short(self) -> str:
        """`Service.Method` without the package, for tables."""
        return f"{self.service.rsplit('.', 1)[-1]}.{self.name}"

    @property
    def writes(self) -> bool:
        """Whether the method may change stored records (judged by its verb)."""
        return not self.name.startswith(READ_VERBS)


def descriptor_of(message: Message | type[Message]) -> Descriptor:
    """The descriptor of a message or message class.

    The upb runtime's descriptors have the API of the pure-Python ones, under
    which the type stubs know them.
    """
    return cast(Descriptor, message.DESCRIPTOR)


def _generated_modules(package: ModuleType) -> list[ModuleType]:
    names = sorted(
        info.name for info in pkgutil.iter_modules(package.__path__) if info.name.endswith("_pb2")
    )
    return [importlib.import_module(f"{package.__name__}.{name}") for name in names]


def _rpc(service: str, method: MethodDescriptor) -> Rpc:
    return Rpc(
        service=service,
        name=method.name,
        request=message_factory.GetMessageClass(method.input_type),
        response=message_factory.GetMessageClass(method.output_type),
        client_streaming=method.client_streaming,
        server_streaming=method.server_streaming,
    )


@cache
def all_rpcs() -> tuple[Rpc, ...]:
    """Every RPC of every service of statekeeper.v1, in a stable order."""
    rpcs = [
        _rpc(service.full_name, method)
        for module in _generated_modules(statekeeper.v1)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]
    return tuple(sorted(rpcs, key=lambda rpc: rpc.path))


def rpc_named(full_name: str) -> Rpc:
    """The RPC `Service.Method` or `package.Service.Method`."""
    for rpc in all_rpcs():
        if full_name in (f"{rpc.service}.{rpc.name}", rpc.short):
            return rpc
    raise KeyError(full_name)
