"""Reading the rich error details of a failed call, as any caller would."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def error_details(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[str]]:
    """The ErrorInfo of a failed call and the fields its BadRequest names."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the status carries no details"
    info, fields = error_details_pb2.ErrorInfo(), []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [violation.field for violation in bad.field_violations]
    return info, fields


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of a failed call (every error of the service has one)."""
    info, _ = error_details(error)
    assert info.reason, "no ErrorInfo in status"
    return info


def bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields named by the BadRequest of a failed call."""
    _, fields = error_details(error)
    assert fields, "no BadRequest in status"
    return fields
