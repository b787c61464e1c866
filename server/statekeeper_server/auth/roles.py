"""The role every RPC requires, read from the contract itself, and the capabilities
outside the roles.

Each RPC in `protos/statekeeper/v1/*.proto` carries the option
`(statekeeper.v1.required_role)`; this module turns those options into the
one table the server enforces, keyed by the method's full path
(`/statekeeper.v1.EventLogService/DeleteRun`). A method of a statekeeper
service without a role is a fault of the contract, caught when the table
is built.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping

from google.protobuf import descriptor

from statekeeper.v1 import access_pb2
from statekeeper_server.api_files import SERVICE_FILES


class Role(enum.IntEnum):
    """What a caller may do in a namespace; a higher role includes the lower ones."""

    READ = access_pb2.ROLE_READ
    WRITE = access_pb2.ROLE_WRITE
    ADMIN = access_pb2.ROLE_ADMIN

    @classmethod
    def parse(cls, name: str) -> Role:
        """`read`, `write` or `admin` as a Role; ValueError otherwise."""
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(
                f"unknown role {name!r}: use read, write or admin (or metrics, as *:metrics)"
            ) from None

    @property
    def label(self) -> str:
        """The role as written in permissions: `read`, `write`, `admin`."""
        return self.name.lower()


class Capability(enum.Enum):
    """A right over the server itself rather than a namespace, written `*:<label>`.

    A capability grants no gRPC call: `*:metrics` lets its holder scrape
    `/metrics` on the HTTP side port and nothing else. `*:admin` includes
    every capability.
    """

    METRICS = "metrics"

    @property
    def label(self) -> str:
        """The capability as written in permissions: `metrics`."""
        return self.value


def parse_grant(name: str) -> Role | Capability:
    """A role (`read`, `write`, `admin`) or a capability (`metrics`); ValueError otherwise."""
    for capability in Capability:
        if name.lower() == capability.label:
            return capability
    return Role.parse(name)


def services() -> list[descriptor.ServiceDescriptor]:
    """Every service statekeeper defines."""
    return [
        service
        for module in SERVICE_FILES
        for service in module.DESCRIPTOR.services_by_name.values()
    ]


def method_path(method: descriptor.MethodDescriptor) -> str:
    """The gRPC path of a method, as calls name it: `/package.Service/Method`."""
    return f"/{method.containing_service.full_name}/{method.name}"


@functools.cache
def role_table() -> Mapping[str, Role]:
    """The role each statekeeper RPC requires, by method path."""
    return _table(method for service in services() for method in service.methods)


def _table(methods: Iterable[descriptor.MethodDescriptor]) -> dict[str, Role]:
    table: dict[str, Role] = {}
    for method in methods:
        value = method.GetOptions().Extensions[access_pb2.required_role]
        if value == access_pb2.ROLE_UNSPECIFIED:
            raise LookupError(f"{method.full_name} declares no required_role")
        table[method_path(method)] = Role(value)
    return table
