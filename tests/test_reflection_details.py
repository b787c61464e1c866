"""Reflection serves the google.rpc detail types of errors, so a client that resolves
`Any` through reflection (grpcurl does) prints a failed call's ErrorInfo and BadRequest
as JSON, as the README shows.

The server runs in its own process and the types are looked up in a descriptor pool
filled only from its reflection answers: nothing the test process imported can stand in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status

from statekeeper.v1 import snapshots_pb2, snapshots_pb2_grpc
from tests.harness import ServerProcess

README = (Path(__file__).parent.parent / "README.md").read_text()
DECODED_ERROR = README.split("<!-- decoded-error -->\n```text\n", 1)[1].split("```", 1)[0]
"""The README's grpcurl example of a failed call with its details decoded."""

# The servers of these tests are open: access control is tested on its own.
pytestmark = pytest.mark.own_access_control


@pytest.fixture(scope="module")
def channel() -> Iterator[grpc.Channel]:
    """A channel to a statekeeper server running in its own process."""
    server = ServerProcess("memory:").start()
    try:
        with grpc.insecure_channel(server.target) as opened:
            yield opened
    finally:
        server.stop()


def reflected_types(channel: grpc.Channel) -> descriptor_pool.DescriptorPool:
    """A descriptor pool that knows only what the server's reflection tells it."""
    return descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))


def decoded_details(channel: grpc.Channel, error: grpc.RpcError) -> list[dict[str, Any]]:
    """The details of a failed call, each decoded with the type reflection resolves for its
    type URL, as grpcurl prints them (field names as in the proto, `@type` first)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    pool = reflected_types(channel)
    decoded = []
    for detail in status.details:
        described = pool.FindMessageTypeByName(detail.TypeName())
        message = message_factory.GetMessageClass(described).FromString(detail.value)
        decoded.append(
            {
                "@type": detail.type_url,
                **json_format.MessageToDict(message, preserving_proto_field_name=True),
            }
        )
    return decoded


def failed_load(channel: grpc.Channel, run_id: str) -> grpc.RpcError:
    stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
    with pytest.raises(grpc.RpcError) as failed:
        stub.LoadSnapshot(snapshots_pb2.LoadSnapshotRequest(run_id=run_id))
    return failed.value


@pytest.mark.parametrize("name", ["google.rpc.ErrorInfo", "google.rpc.BadRequest"])
def test_reflection_resolves_the_error_detail_types(channel: grpc.Channel, name: str) -> None:
    described = reflected_types(channel).FindMessageTypeByName(name)
    assert described.file.name == "google/rpc/error_details.proto"


def test_a_not_found_error_decodes_its_error_info_through_reflection(
    channel: grpc.Channel,
) -> None:
    details = decoded_details(channel, failed_load(channel, "run-404"))
    assert details == [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "SNAPSHOT_NOT_FOUND",
            "domain": "statekeeper.dev",
            "metadata": {"run_id": "run-404"},
        }
    ]


def test_the_readme_shows_the_details_reflection_decodes(channel: grpc.Channel) -> None:
    command = DECODED_ERROR.splitlines()[0]
    run_id = json.loads(re.search(r"-d '([^']*)'", command).group(1))["runId"]  # type: ignore[union-attr]
    error = failed_load(channel, run_id)
    shown = [json.loads(line) for line in re.findall(r"^  \d+\)\t(\{.*\})$", DECODED_ERROR, re.M)]
    assert shown == decoded_details(channel, error)
    assert f"  Message: {error.details()}\n" in DECODED_ERROR
    assert "  Code: InvalidArgument\n" in DECODED_ERROR
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
