"""Pieces the scenarios share: method paths, comparison rows, and peer measurements."""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench import servers
from bench.harness import Bench, Measurement, Watched, best
from bench.load import ServiceUnavailable, Window, method
from bench.report import ERROR, UNAVAILABLE, Row, Target

APPEND_EVENT = method("EventLogService", "AppendEvent")
APPEND_EVENTS = method("EventLogService", "AppendEvents")
LIST_EVENTS = method("EventLogService", "ListEvents")
REPLAY_EVENTS = method("EventLogService", "ReplayEvents")
ENQUEUE_JOBS = method("JobService", "EnqueueJobs")
LEASE_JOBS = method("JobService", "LeaseJobs")
COMPLETE_JOB = method("JobService", "CompleteJob")
SAVE_SNAPSHOT = method("SnapshotService", "SaveSnapshot")
LOAD_SNAPSHOT = method("SnapshotService", "LoadSnapshot")
PERSIST_AGENT_CHECKPOINT = method("CheckpointService", "PersistAgentCheckpoint")
RECOVER_AGENT_CHECKPOINT = method("CheckpointService", "RecoverAgentCheckpoint")


def echo(name: str) -> str:
    """The echo reference's method of that name."""
    return f"/bench.Echo/{name}"


def store_label(store: str) -> str:
    """`[file]`, `[postgres]`, `[memory]`."""
    return f"[{store}]"


def compare(
    scenario: str,
    measured: Measurement,
    reference_label: str,
    reference: Measurement | None,
    unit: str,
    targets: Sequence[Target] = (),
    note: str = "",
) -> Row:
    """A row comparing a statekeeper measurement with a reference of the same run."""
    notes = [part for part in (note, measured.note()) if part]
    if reference is not None:
        notes.append(f"reference: {reference.note()}")
    return Row(
        scenario,
        figure=measured.rate,
        unit=unit,
        reference=reference_label,
        reference_figure=reference.rate if reference is not None else None,
        targets=targets,
        note="; ".join(notes),
    )


def repeated(
    bench: Bench, *measures: Callable[[], Measurement], lower_is_better: bool = False
) -> list[Measurement]:
    """Run the measures in turn, `repeats` times interleaved; the best of each.

    Interleaving puts statekeeper and its reference under the same
    disturbances from the rest of the machine.
    """
    results: list[list[Measurement]] = [[] for _ in measures]
    for _ in range(bench.mode.repeats):
        for index, measure in enumerate(measures):
            results[index].append(measure())
    return [best(r, lower_is_better) for r in results]


def interleaved(
    rounds: int, count: int, measure: Callable[[int], Measurement]
) -> list[list[Measurement]]:
    """`measure(index)` of each of `count` servers once per round, for `rounds` rounds;
    every measurement of each server, in round order.

    Each round starts with another server, so none is always measured first and all
    see the same disturbances from the rest of the machine.
    """
    results: list[list[Measurement]] = [[] for _ in range(count)]
    for round_index in range(rounds):
        for offset in range(count):
            index = (round_index + offset) % count
            results[index].append(measure(index))
    return results


def cpu_per_call(measured: Measurement) -> float:
    """Seconds of server CPU per call in a measurement (NaN when nothing was measured)."""
    if not measured.rate or measured.server_cpu is None:
        return float("nan")
    return measured.server_cpu / measured.rate


def plural(count: int, word: str) -> str:
    """`1 round`, `3 rounds`."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def per_round(measured: Sequence[Measurement], reference: Sequence[Measurement]) -> str:
    """`0.97x, 1.01x`: each round's rate against the same round's rate of the reference."""
    return ", ".join(
        f"{m.rate / r.rate:.2f}x" if r.rate else "-"
        for m, r in zip(measured, reference, strict=True)
    )


@dataclass(frozen=True)
class Compared:
    """A server measured against the reference server of an interleaved comparison."""

    label: str
    targets: Sequence[Target] = ()
    """Targets of its rate, as a share of the reference's."""
    cpu_targets: Sequence[Target] = ()
    """Targets of its server CPU per call, as a multiple of the reference's."""
    cpu_note: str = ""
    """Said after the per-round CPU ratios."""


def rate_and_cpu_rows(
    first: str,
    reference: str,
    compared: Sequence[Compared],
    results: Sequence[Sequence[Measurement]],
    rounds: int,
    unit: str = "events/s",
) -> list[Row]:
    """Rows of an interleaved comparison: the reference's best rate (`first`, from
    `results[0]`), each compared server's best rate against it, then each one's median
    server CPU per call against the reference's, with every round's ratio."""
    without = results[0]
    plain = best(list(without))
    plain_cpu = statistics.median(cpu_per_call(m) for m in without)
    same_run = f"{reference}, same run"
    rows = [
        Row(
            first,
            figure=plain.rate,
            unit=unit,
            note=f"best of {plural(rounds, 'round')}; {plain.note()}",
        )
    ]
    cpu_rows = []
    for kind, measured in zip(compared, results[1:], strict=True):
        rows.append(
            compare(
                f"  with {kind.label}",
                best(list(measured)),
                same_run,
                plain,
                unit,
                list(kind.targets),
                note=f"rate vs {reference} per round: {per_round(measured, without)}",
            )
        )
        cpu_ratios = ", ".join(
            f"{cpu_per_call(m) / cpu_per_call(w):.2f}x"
            for m, w in zip(measured, without, strict=True)
        )
        cpu_rows.append(
            Row(
                f"  server CPU per call with {kind.label}",
                figure=statistics.median(cpu_per_call(m) for m in measured) * 1e6,
                unit="us",
                reference=same_run,
                reference_figure=plain_cpu * 1e6,
                targets=list(kind.cpu_targets),
                lower_is_better=True,
                note=f"median of {plural(rounds, 'round')}; per round: {cpu_ratios}"
                + (f"; {kind.cpu_note}" if kind.cpu_note else ""),
            )
        )
    return rows + cpu_rows


def peer_row(
    bench: Bench,
    scenario: str,
    measured: float | None,
    unit: str,
    label: str,
    function: Callable[..., Awaitable[Window]],
    watched: tuple[str, int] | None = None,
    note: str = "",
    latency: bool = False,
    **kwargs: Any,
) -> Row:
    """statekeeper's figure against a peer's, measured now in a generator process.

    `watched` (name, port) is the peer server whose CPU is read; with
    `latency` the figures are median latencies in ms, else rates.
    """
    server: Watched | None = None
    if watched is not None:
        server = servers.listening_process(*watched)
    try:
        result = bench.measure(function, server, f"{scenario} {label}", **kwargs)
    except ServiceUnavailable as exc:
        return Row(f"  vs {label}", status=UNAVAILABLE, note=str(exc))
    except Exception as exc:
        # A peer (an outside server and its client library) that fails under
        # this load is reported in its row; it does not break the run.
        return Row(f"  vs {label}", status=ERROR, note=f"{type(exc).__name__}: {exc}")
    notes = [part for part in (note, result.note()) if part]
    return Row(
        f"  vs {label}",
        figure=measured,
        unit=unit,
        reference_figure=result.window.p50 * 1000 if latency else result.rate,
        note="; ".join(notes),
        lower_is_better=latency,
    )
