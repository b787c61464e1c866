"""Profiles of the server process with py-spy, and their summary by function.

`py-spy record --format raw` writes one collapsed stack per line with its
sample count; the summary gives each function's share of all samples as
"self" (the function was on top of the stack) and "total" (it was anywhere
on the stack), which is what RESULTS.md quotes. Sampling is non-blocking
so the server is not paused; profiled runs are still kept apart from the
measured ones.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SAMPLE_RATE = 250


def py_spy() -> str:
    """The py-spy executable (next to this Python first)."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    found = shutil.which("py-spy")
    if found is None:
        raise FileNotFoundError("py-spy is not installed (it is in the dev extra)")
    return found


class Recording:
    """A py-spy recording of `pid` for `seconds`, running in the background.

    With `gil`, only the thread holding the GIL is sampled: the shares then
    say where the GIL goes, which bounds a Python server on any number of
    cores.
    """

    def __init__(self, pid: int, seconds: float, output: Path, *, gil: bool = False) -> None:
        self.output = output
        self._gil = gil
        output.parent.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [
                py_spy(),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(seconds))),
                "--rate",
                str(SAMPLE_RATE),
                "--format",
                "raw",
                "--nonblocking",
                *(["--gil"] if gil else []),
                "--output",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> Profile | None:
        """End the recording now (py-spy writes what it has) and read it.

        None if py-spy could not attach to the process.
        """
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if not self.output.exists():
            return None
        return Profile.read(self.output, gil=self._gil)


@dataclass
class Profile:
    """Sample counts per collapsed stack."""

    stacks: Counter[str]
    gil: bool = False
    """Only the thread holding the GIL was sampled."""

    @classmethod
    def read(cls, path: Path, *, gil: bool = False) -> Profile:
        """Parse py-spy's raw (collapsed) output."""
        stacks: Counter[str] = Counter()
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks[stack] += int(count)
        return cls(stacks, gil)

    @property
    def samples(self) -> int:
        """Samples recorded (all threads that were not idle)."""
        return sum(self.stacks.values())

    def shares(self) -> tuple[Counter[str], Counter[str]]:
        """Samples per function: (self, total)."""
        own: Counter[str] = Counter()
        total: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            frames = stack.split(";")
            own[_short(frames[-1])] += count
            for frame in {_short(f) for f in frames}:
                total[frame] += count
        return own, total

    def threads(self) -> Counter[str]:
        """Samples per kind of thread: event loop, SQLite writer, readers, grpc poller."""
        kinds: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            kinds[_thread_kind(stack)] += count
        return kinds

    def summary(self, top: int = 15) -> str:
        """Samples per thread, then the top functions by self and by total share, as text."""
        samples = self.samples or 1
        own, total = self.shares()
        sampled = "the thread holding the GIL" if self.gil else "all threads"
        lines = [f"{self.samples} samples at {SAMPLE_RATE} Hz ({sampled})", "thread%  thread"]
        lines += [f"{100 * n / samples:5.1f}  {k}" for k, n in self.threads().most_common()]
        lines += ["self%  function"]
        lines += [f"{100 * n / samples:5.1f}  {f}" for f, n in own.most_common(top)]
        lines += ["total% function"]
        shown = [(f, n) for f, n in total.most_common() if not f.startswith(_PLUMBING)]
        lines += [f"{100 * n / samples:5.1f}  {f}" for f, n in shown[: top * 2]]
        return "\n".join(lines)


_PLUMBING = (
    "Thread._bootstrap",
    "Thread.run ",
    "_run_module_as_main",
    "_run_code",
    "<module>",
    "Runner.run",
    "run (asyncio/runners.py)",
    "BaseEventLoop.run_forever",
    "BaseEventLoop.run_until_complete",
    "main (statekeeper_server/cli.py)",
    "_serve (statekeeper_server/cli.py)",
)
"""Frames on every stack of their thread: left out of the total% list."""


def _thread_kind(stack: str) -> str:
    """Which thread a collapsed stack was sampled on."""
    if "run_forever" in stack or "_run_once" in stack:
        return "event loop (main thread)"
    if "_run_writer" in stack:
        return "SQLite writer thread"
    if "futures/thread.py" in stack or "_worker" in stack:
        return "reader / executor threads"
    if "Thread.run" in stack:
        return "other threads (grpc poller: Cython, shown as Thread.run)"
    # Coroutines that grpc's Cython resumes have no Python frames below them.
    return "event loop (main thread)"


def _short(frame: str) -> str:
    """`func (path/to/module.py:12)` -> `func (module.py)`: lines merged per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})" if where else name
