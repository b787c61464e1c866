"""Rows of the results table, the machine they were measured on, and their rendering."""

from __future__ import annotations

import contextlib
import os
import platform
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata

import psutil

MET = "met"
MISSED = "missed"
INFO = "info"
UNAVAILABLE = "unavailable"
ERROR = "error"
SMOKE = "smoke"
"""Status of a checked row in smoke mode: measured, not judged."""


@dataclass(frozen=True)
class Target:
    """A bound on a row's figure (`at_least` or `at_most`), optionally on its ratio."""

    bound: float
    at_least: bool = True
    on_ratio: bool = False

    def met(self, figure: float, ratio: float | None) -> bool:
        """Whether the figure (or the ratio) is within the bound."""
        value = ratio if self.on_ratio else figure
        if value is None:
            return False
        return value >= self.bound if self.at_least else value <= self.bound

    def describe(self, unit: str) -> str:
        """`>= 0.75x`, `<= 2.0 ms`, ..."""
        sign = ">=" if self.at_least else "<="
        return f"{sign} {self.bound:g}x" if self.on_ratio else f"{sign} {number(self.bound)} {unit}"


@dataclass
class Row:
    """One line of the table: a figure and what it is compared with."""

    scenario: str
    figure: float | None = None
    unit: str = ""
    reference: str = ""
    reference_figure: float | None = None
    targets: Sequence[Target] = ()
    status: str = INFO
    note: str = ""
    lower_is_better: bool = False
    details: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """figure / reference figure (None when either is missing)."""
        if self.figure is None or not self.reference_figure:
            return None
        return self.figure / self.reference_figure

    def judge(self, smoke: bool) -> Row:
        """Set the status from the targets (none: info; smoke: measured only)."""
        if self.status in (UNAVAILABLE, ERROR) or not self.targets:
            return self
        if smoke:
            self.status = SMOKE
        elif self.figure is None:
            self.status = ERROR
        else:
            met = all(t.met(self.figure, self.ratio) for t in self.targets)
            self.status = MET if met else MISSED
        return self


def unavailable_rows(names: Sequence[str], reason: str, status: str = UNAVAILABLE) -> list[Row]:
    """A row per scenario name, each saying why it could not be measured."""
    return [Row(name, status=status, note=reason) for name in names]


def number(value: float) -> str:
    """A figure with sensible precision: 12,345 / 123.4 / 1.23 / 0.012."""
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _cells(row: Row) -> list[str]:
    figure = f"{number(row.figure)} {row.unit}" if row.figure is not None else "-"
    reference = row.reference
    if row.reference_figure is not None:
        figure_text = f"{number(row.reference_figure)} {row.unit}".strip()
        reference = f"{reference}: {figure_text}" if reference else figure_text
    ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
    targets = " and ".join(t.describe(row.unit) for t in row.targets)
    return [row.scenario, figure, reference, ratio, targets, row.status, row.note]


HEADERS = ["scenario", "measured", "reference (same run)", "ratio", "target", "status", "note"]


def text_table(rows: Sequence[Row]) -> str:
    """The table for a terminal."""
    cells = [HEADERS, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADERS) - 1)]
    lines = []
    for line in cells:
        parts = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        lines.append("  ".join([*parts, line[-1]]).rstrip())
        if line is HEADERS:
            lines.append("-" * min(160, sum(widths) + 2 * len(widths) + 10))
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    """The table as GitHub markdown."""

    def escape(cell: str) -> str:
        indent = len(cell) - len(cell.lstrip(" "))
        return "&emsp;" * (indent // 2) + cell.lstrip(" ").replace("|", "\\|")

    lines = [
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(escape(c) for c in _cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


LOOP_STEPS = 2_000_000


def python_loop_time() -> str:
    """How long this machine takes for a fixed loop of plain Python right now (the best of
    three): its speed moves with the host's other load, and every figure moves with it."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for step in range(LOOP_STEPS):
            total += step
        best = min(best, time.perf_counter() - started)
    return f"{best * 1000:.0f} ms for {LOOP_STEPS:,} additions"


def machine_info(extra: dict[str, Callable[[], str]] | None = None) -> dict[str, str]:
    """Cores, memory, OS and the versions that decide the figures."""
    info = {
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} logical ({psutil.cpu_count(logical=False)} physical)",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": platform.platform(),
        "python": sys.version.split()[0] + f" ({platform.python_implementation()})",
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "sqlite": sqlite3.sqlite_version,
        "asyncpg": _version("asyncpg"),
        "redis-py": _version("redis"),
        "nats-py": _version("nats-py"),
        "load average at start": load_average(),
        "python loop at start": python_loop_time(),
    }
    for name, probe in (extra or {}).items():
        info[name] = probe()
    return info


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
