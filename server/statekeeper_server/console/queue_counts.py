"""A queue's statistics as the console's pages show them."""

from __future__ import annotations

from typing import Any

from google.protobuf import duration_pb2

from statekeeper.v1 import jobs_pb2

COUNT_LIMIT = 10_000
"""Jobs counted per queue and state before a count shows as "N+" (GetQueueStats'
`count_limit`): a queue of millions costs what counting this many does."""


def _name(state: int) -> str:
    return jobs_pb2.JobState.Name(state).removeprefix("JOB_STATE_")  # type: ignore[arg-type]


def queue_view(stats: jobs_pb2.QueueStats) -> dict[str, Any]:
    """`stats` for a template: `queue`; `by_state` (state name to count text, "N+"
    for a capped state); `by_priority` (priority name, highest first, to state
    name to count text); `oldest_available` (age text, "" when none is available).
    """
    capped = {_name(state) for state in stats.capped_states}
    by_state: dict[str, int] = {}
    by_priority: dict[int, dict[str, int]] = {}
    for count in stats.counts:
        state = _name(count.state)
        by_state[state] = by_state.get(state, 0) + count.count
        row = by_priority.setdefault(count.priority, {})
        row[state] = row.get(state, 0) + count.count

    def shown(counts: dict[str, int]) -> dict[str, str]:
        return {
            state: f"{count}+" if state in capped else str(count) for state, count in counts.items()
        }

    return {
        "queue": stats.queue,
        "by_state": shown(by_state),
        "by_priority": {
            jobs_pb2.JobPriority.Name(priority).removeprefix("JOB_PRIORITY_"): shown(row)  # type: ignore[arg-type]
            for priority, row in sorted(by_priority.items(), reverse=True)
        },
        "oldest_available": (
            age_text(stats.oldest_available_age) if stats.HasField("oldest_available_age") else ""
        ),
    }


def age_text(age: duration_pb2.Duration) -> str:
    """A duration as a person reads it: "45s", "12m 5s", "3h 2m", "4d 1h"."""
    seconds = max(age.seconds, 0)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"
