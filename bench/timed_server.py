"""`statekeeper serve`, or the bare echo server, with every step of its event loop timed
(for the max-size benchmark).

    python bench/timed_server.py serve --store ... [flags of statekeeper serve]
    python bench/timed_server.py echo [flags of bench/echo_server.py]

SIGUSR1 starts a window; SIGUSR2 ends it and writes what the window's steps
took, as JSON, to the file named by $STATEKEEPER_BENCH_STEPS. A step is one
callback the event loop runs (most often one stretch of a call's coroutine
between two awaits): its wall time is how long everything else that was
ready waited behind it, and its thread CPU time is the part the step itself
computed (the rest is waiting for the GIL, held by one of the server's
threads, or for a core).
"""

from __future__ import annotations

import asyncio.events
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "server"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

REPORT_ENV = "STATEKEEPER_BENCH_STEPS"
LONG_STEP_SECONDS = 0.005
"""Steps computing longer than this are named in the report."""
LONGEST_KEPT = 8


class StepTimes:
    """The wall and thread CPU seconds of each event loop step inside a window."""

    def __init__(self) -> None:
        self.recording = False
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.longest: list[tuple[float, float, str]] = []
        """(own CPU, wall, what ran) of the steps of over LONG_STEP_SECONDS of CPU."""

    def start(self) -> None:
        """Forget earlier steps and record from now on."""
        self.walls, self.cpus, self.longest, self.recording = [], [], [], True

    def add(self, handle: asyncio.events.Handle, wall: float, cpu: float) -> None:
        """Record one step that took `wall` seconds, `cpu` of them computing."""
        self.walls.append(wall)
        self.cpus.append(cpu)
        if cpu > LONG_STEP_SECONDS:
            self.longest.append((cpu, wall, _what_ran(handle)))

    def report(self) -> dict[str, Any]:
        """What the steps since `start` took (seconds), and stop recording."""
        self.recording = False
        walls, cpus = sorted(self.walls), sorted(self.cpus)
        if not walls:
            return {"steps": 0}

        def at(values: list[float], share: float) -> float:
            return values[min(len(values) - 1, int(share * len(values)))]

        return {
            "steps": len(walls),
            "wall_p99": at(walls, 0.99),
            "wall_p999": at(walls, 0.999),
            "wall_max": walls[-1],
            "cpu_p999": at(cpus, 0.999),
            "cpu_max": cpus[-1],
            "wall_over_5ms": sum(wall > 0.005 for wall in walls),
            "wall_over_10ms": sum(wall > 0.010 for wall in walls),
            "cpu_over_5ms": sum(cpu > 0.005 for cpu in cpus),
            "longest": sorted(self.longest, reverse=True)[:LONGEST_KEPT],
        }


def _what_ran(handle: asyncio.events.Handle) -> str:
    """The task (and the line it stopped at) a step ran, or its callback."""
    callback = getattr(handle, "_callback", None)
    task = getattr(callback, "__self__", None)
    if not isinstance(task, asyncio.Task):
        return repr(callback)[:120]
    awaited: Any = task.get_coro()
    where = ""
    while awaited is not None:
        # Down to the innermost coroutine: where the step stopped, awaiting.
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
        if frame is not None:
            where = f"{frame.f_code.co_name} {Path(frame.f_code.co_filename).name}:{frame.f_lineno}"
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    return f"{task.get_name()} at {where}"[:200]


def timed(times: StepTimes) -> None:
    """Time every step of every event loop of this process into `times`."""
    run = asyncio.events.Handle._run

    def timed_run(handle: asyncio.events.Handle) -> None:
        if not times.recording:
            run(handle)
            return
        wall, cpu = time.perf_counter(), time.thread_time()
        run(handle)
        times.add(handle, time.perf_counter() - wall, time.thread_time() - cpu)

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]


def main() -> int:
    """Serve with timed steps, windows driven by SIGUSR1 and SIGUSR2."""
    report_path = Path(os.environ[REPORT_ENV])
    times = StepTimes()
    timed(times)

    def begin(_signal: int, _frame: FrameType | None) -> None:
        times.start()

    def end(_signal: int, _frame: FrameType | None) -> None:
        report_path.write_text(json.dumps(times.report()))

    signal.signal(signal.SIGUSR1, begin)
    signal.signal(signal.SIGUSR2, end)
    if sys.argv[1:2] == ["echo"]:
        from bench import echo_server

        sys.argv[1:] = sys.argv[2:]
        echo_server.main()
        return 0
    from statekeeper_server.cli import main as serve

    return serve(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
