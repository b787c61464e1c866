"""What the console shows of jobs, as plain values for templates."""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict

from statekeeper.v1 import jobs_pb2

RETRYABLE = ("DEAD", "CANCELLED")
"""States a job may be retried from."""

CANCELLABLE = ("SCHEDULED", "AVAILABLE", "RUNNING")
"""States a job may be cancelled in."""


def job_view(job: jobs_pb2.Job) -> dict[str, Any]:
    """A job as template values: its fields by proto name, `state` without the
    enum prefix, and `payload` and `errors` always present."""
    view = MessageToDict(job, preserving_proto_field_name=True)
    view["state"] = jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
    view.setdefault("payload", {})
    view.setdefault("errors", [])
    return view
