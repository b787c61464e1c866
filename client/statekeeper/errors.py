"""The error every call of both clients raises: its status, and the details the server sent.

The server refuses a call with a gRPC status carrying a `google.rpc.ErrorInfo`
(an UPPER_SNAKE `reason` and facts in `metadata`) and, for INVALID_ARGUMENT,
a `google.rpc.BadRequest` naming the field. `StatekeeperError` holds them
read: `error.reason`, `error.info.metadata`, `error.field_violations`.

It is a `grpc.aio.AioRpcError`, gRPC's public class for the outcome of a
failed call, so code that catches `grpc.RpcError` (or, with the asyncio
client, `grpc.aio.AioRpcError`) and calls `code()`, `details()` or
`trailing_metadata()` keeps working with both clients.

The details are read without `googleapis-common-protos` (the client needs
only grpcio and protobuf): the three messages are declared here, in a
private descriptor pool, with the field numbers of `google/rpc/status.proto`
and `google/rpc/error_details.proto`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

STATUS_DETAILS_KEY = "grpc-status-details-bin"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


@dataclass(frozen=True)
class ErrorInfo:
    """`google.rpc.ErrorInfo`: why the call failed (`reason`), and facts about it."""

    reason: str
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FieldViolation:
    """One entry of `google.rpc.BadRequest`: the request field at fault, and what is wrong."""

    field: str
    description: str


class StatekeeperError(grpc.aio.AioRpcError):
    """A failed call: its status code and message, and the server's ErrorInfo and
    BadRequest read from the trailing metadata."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str | None,
        *,
        initial_metadata: grpc.aio.Metadata | None = None,
        trailing_metadata: grpc.aio.Metadata | None = None,
        debug_error_string: str | None = None,
    ) -> None:
        super().__init__(
            code,
            initial_metadata if initial_metadata is not None else grpc.aio.Metadata(),
            trailing_metadata if trailing_metadata is not None else grpc.aio.Metadata(),
            details,
            debug_error_string,
        )
        self.info, self.field_violations = read_details(self.trailing_metadata())

    @property
    def reason(self) -> str:
        """The ErrorInfo reason (`SNAPSHOT_NOT_FOUND`, ...); "" when the server sent none."""
        return self.info.reason if self.info is not None else ""

    @classmethod
    def from_call(cls, error: grpc.RpcError) -> StatekeeperError:
        """The error of a failed call of either gRPC API (a sync call's error is also
        its `grpc.Call`, an asyncio one an `AioRpcError`); itself if it is one already."""
        if isinstance(error, StatekeeperError):
            return error
        call: Any = error
        debug = call.debug_error_string() if hasattr(call, "debug_error_string") else None
        return cls(
            call.code(),
            call.details(),
            initial_metadata=_metadata(call.initial_metadata()),
            trailing_metadata=_metadata(call.trailing_metadata()),
            debug_error_string=debug,
        )

    def __str__(self) -> str:
        reason = f" ({self.reason})" if self.reason else ""
        return f"{self.code().name}{reason}: {self.details()}"

    __repr__ = __str__


def _metadata(entries: Any) -> grpc.aio.Metadata:
    """The entries of a call's metadata (a sequence of pairs, or Metadata) as Metadata."""
    if entries is None:
        return grpc.aio.Metadata()
    if isinstance(entries, grpc.aio.Metadata):
        return entries
    return grpc.aio.Metadata(*((key, value) for key, value in entries))


def read_details(
    trailing_metadata: grpc.aio.Metadata,
) -> tuple[ErrorInfo | None, tuple[FieldViolation, ...]]:
    """The ErrorInfo and BadRequest field violations of a status's details, if any.

    Details that do not decode are ignored: the status code and message still
    tell the caller what happened.
    """
    raw = trailing_metadata.get(STATUS_DETAILS_KEY)
    if not isinstance(raw, bytes):
        return None, ()
    info: ErrorInfo | None = None
    violations: list[FieldViolation] = []
    try:
        status = _STATUS.FromString(raw)
        for detail in status.details:
            if detail.type_url == ERROR_INFO_TYPE and info is None:
                parsed = _ERROR_INFO.FromString(detail.value)
                info = ErrorInfo(
                    reason=parsed.reason,
                    domain=parsed.domain,
                    metadata={entry.key: entry.value for entry in parsed.metadata},
                )
            elif detail.type_url == BAD_REQUEST_TYPE:
                parsed = _BAD_REQUEST.FromString(detail.value)
                violations += (
                    FieldViolation(field=v.field, description=v.description)
                    for v in parsed.field_violations
                )
    except message.DecodeError:
        return None, ()
    return info, tuple(violations)


def _detail_messages() -> tuple[Any, Any, Any]:
    """Status, ErrorInfo and BadRequest classes, wire-compatible with google.rpc's."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="statekeeper/client/rpc_details.proto", package="statekeeper.client.rpc"
    )
    string, bytes_, msg = (
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
        descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
    )
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED

    def add(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        described = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            added = described.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                added.type_name = type_name

    prefix = ".statekeeper.client.rpc."
    # An Any is {type_url, value}; a map<string, string> is a repeated {key, value}.
    add("Any", ("type_url", 1, string, optional, ""), ("value", 2, bytes_, optional, ""))
    add(
        "Status",
        ("message", 2, string, optional, ""),
        ("details", 3, msg, repeated, prefix + "Any"),
    )
    add("Entry", ("key", 1, string, optional, ""), ("value", 2, string, optional, ""))
    add(
        "ErrorInfo",
        ("reason", 1, string, optional, ""),
        ("domain", 2, string, optional, ""),
        ("metadata", 3, msg, repeated, prefix + "Entry"),
    )
    add(
        "FieldViolation",
        ("field", 1, string, optional, ""),
        ("description", 2, string, optional, ""),
    )
    add("BadRequest", ("field_violations", 1, msg, repeated, prefix + "FieldViolation"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)

    def message_class(name: str) -> Any:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))

    return (
        message_class("statekeeper.client.rpc.Status"),
        message_class("statekeeper.client.rpc.ErrorInfo"),
        message_class("statekeeper.client.rpc.BadRequest"),
    )


_STATUS, _ERROR_INFO, _BAD_REQUEST = _detail_messages()
