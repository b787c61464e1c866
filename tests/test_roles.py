"""The role table: every RPC of every service requires a role, read from the contract."""

from __future__ import annotations

import pytest

from statekeeper_server.auth.permissions import Permission, Principal
from statekeeper_server.auth.roles import Role, method_path, role_table, services

ALL_METHODS = [method for service in services() for method in service.methods]


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda method: method.full_name)
def test_every_rpc_of_every_service_requires_a_role(method: object) -> None:
    assert method_path(method) in role_table()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("path", "role"),
    [
        ("/statekeeper.v1.SnapshotService/LoadSnapshot", Role.READ),
        ("/statekeeper.v1.SnapshotService/DeleteSnapshot", Role.WRITE),
        ("/statekeeper.v1.EventLogService/ReplayEvents", Role.READ),
        ("/statekeeper.v1.EventLogService/AppendEvent", Role.WRITE),
        ("/statekeeper.v1.EventLogService/DeleteRun", Role.ADMIN),
        ("/statekeeper.v1.EventLogService/TruncateRun", Role.ADMIN),
        ("/statekeeper.v1.JobService/LeaseJobs", Role.WRITE),
        ("/statekeeper.v1.JobService/WatchJobs", Role.READ),
        ("/statekeeper.v1.CheckpointService/DeleteWorkflowCheckpoints", Role.ADMIN),
        ("/statekeeper.v1.CheckpointService/RecoverAgentCheckpoint", Role.READ),
        ("/statekeeper.v1.ThreadCheckpointService/GetThreadCheckpoint", Role.READ),
        ("/statekeeper.v1.ThreadCheckpointService/ListThreadCheckpoints", Role.READ),
        ("/statekeeper.v1.ThreadCheckpointService/PutThreadCheckpoint", Role.WRITE),
        ("/statekeeper.v1.ThreadCheckpointService/PutThreadWrites", Role.WRITE),
        ("/statekeeper.v1.ThreadCheckpointService/CopyThread", Role.WRITE),
        ("/statekeeper.v1.ThreadCheckpointService/DeleteThread", Role.ADMIN),
        ("/statekeeper.v1.ThreadCheckpointService/DeleteThreadRuns", Role.ADMIN),
        ("/statekeeper.v1.ThreadCheckpointService/PruneThreads", Role.ADMIN),
    ],
)
def test_the_table_holds_the_documented_role(path: str, role: Role) -> None:
    assert role_table()[path] is role


def test_a_higher_role_includes_the_lower_ones() -> None:
    writer = Principal.of("ci", ["acme:write"])
    assert writer.allows("acme", Role.READ)
    assert writer.allows("acme", Role.WRITE)
    assert not writer.allows("acme", Role.ADMIN)


def test_a_permission_holds_only_in_its_namespace_unless_it_names_every_one() -> None:
    acme = Principal.of("acme", ["acme:admin"])
    reader = Principal.of("dash", ["*:read"])
    assert not acme.allows("globex", Role.READ)
    assert reader.allows("globex", Role.READ)
    assert not reader.allows("globex", Role.WRITE)


def test_a_principal_of_one_namespace_has_it_as_its_sole_namespace() -> None:
    assert Principal.of("a", ["acme:read", "acme:write"]).sole_namespace == "acme"
    assert Principal.of("b", ["acme:read", "globex:read"]).sole_namespace is None
    assert Principal.of("c", ["*:read"]).sole_namespace is None


@pytest.mark.parametrize("text", ["acme", "acme:owner", "../x:read", ":read", "acme:"])
def test_a_malformed_permission_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"permission|role"):
        Permission.parse(text)
