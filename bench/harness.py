"""What every scenario gets: the run's sizes, the generator pool, the servers, and `measure`.

A measurement hands a load coroutine to one or more generator processes
with a common wall-clock window (`start_at`, `duration`); the time before
the window is their warm-up. While the window is open, the orchestrator
reads the server's CPU time (and, when profiling, records the server with
py-spy), so every figure comes with how busy the server and the generator
were: a server near 100% of a core is the bottleneck, a generator near
100% means more generator processes are needed.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench import servers
from bench.load import Generators, RpcFailed, Window
from bench.profile import Recording
from bench.servers import ServerProcess


class Watched(Protocol):
    """A process whose CPU time a measurement reads (a server, Redis, NATS)."""

    name: str

    @property
    def pid(self) -> int:
        """Its process id."""

    def cpu_seconds(self) -> float:
        """CPU time it has used so far."""


LOG_LINES = 4
"""Lines of the server's log quoted when one of its calls failed."""


@dataclass(frozen=True)
class Mode:
    """How long and how big: `full` (the real figures), `quick`, or `smoke` (CI)."""

    name: str
    duration: float
    warmup: float
    repeats: int
    scale: float
    """Fraction of the full data sizes (preloads, lag, scale levels)."""
    lead: float = 1.0
    """Seconds a generator gets to start and connect before its warm-up counts."""
    settle: float = 2.0
    """Extra seconds for many followers to connect and catch up before a window."""

    @property
    def judged(self) -> bool:
        """Whether targets are judged (not in smoke mode)."""
        return self.name != "smoke"

    def size(self, full: int, minimum: int = 1) -> int:
        """`full` scaled down for this mode."""
        return max(minimum, int(full * self.scale))


MODES = {
    "full": Mode("full", duration=5.0, warmup=1.5, repeats=2, scale=1.0),
    "quick": Mode("quick", duration=2.0, warmup=1.0, repeats=1, scale=0.01),
    "smoke": Mode("smoke", duration=0.5, warmup=0.2, repeats=1, scale=0.001, lead=0.3, settle=1.0),
}


@dataclass
class Measurement:
    """A merged window of the generators, and the server's CPU share inside it."""

    window: Window
    server_cpu: float | None
    """Share of a core the server used in the window (None: no server watched)."""

    @property
    def rate(self) -> float:
        """Operations per second."""
        return self.window.rate

    def note(self) -> str:
        """`p50 .. ms, p99 .. ms, server CPU ..%, generator CPU ..%`."""
        parts = []
        if self.window.latencies:
            parts.append(
                f"call p50 {self.window.p50 * 1000:.2f} ms, p99 {self.window.p99 * 1000:.2f} ms"
            )
        if self.server_cpu is not None:
            parts.append(f"server CPU {100 * self.server_cpu:.0f}%")
        parts.append(f"generator CPU {100 * self.window.cpu_share:.0f}%")
        return ", ".join(parts)


def best(measurements: Sequence[Measurement], lower_is_better: bool = False) -> Measurement:
    """The best of repeated measurements (the one least disturbed by other load)."""
    if lower_is_better:
        return min(measurements, key=lambda m: m.window.p50)
    return max(measurements, key=lambda m: m.rate)


def split(total: int, parts: int) -> list[int]:
    """`total` callers spread over `parts` processes as evenly as possible."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@dataclass
class Bench:
    """The shared state of one benchmark run."""

    mode: Mode
    generators: Generators
    echo: ServerProcess
    peers: bool = True
    generator_processes: int = 1
    profile_dir: Path | None = None
    profile_gil: bool = False
    """Sample only the thread holding the GIL (py-spy --gil)."""
    profiles: dict[str, str] = field(default_factory=dict)

    @contextlib.contextmanager
    def statekeeper(
        self,
        store: str,
        *extra: str,
        env: Mapping[str, str] | None = None,
        launcher: Sequence[str] = servers.SERVE,
    ) -> Iterator[ServerProcess]:
        """A fresh statekeeper server on an empty store of kind `store`, with `extra`
        flags and `env` in its environment, run by `launcher` (see `servers`).

        A call that failed gets the server's last log lines added to its message.
        """
        with servers.statekeeper(store, *extra, env=env, launcher=launcher) as server:
            try:
                yield server
            except RpcFailed as exc:
                lines = [line for line in server.log if line.strip()][-LOG_LINES:]
                raise RpcFailed(f"{exc} | server log: {' / '.join(lines)}") from None

    def measure(
        self,
        function: Callable[..., Awaitable[Window]],
        server: Watched | None,
        label: str,
        per_process: Sequence[dict[str, Any]] = ({},),
        duration: float | None = None,
        **kwargs: Any,
    ) -> Measurement:
        """Run `function` in one generator per entry of `per_process`, in one window.

        Each process gets `kwargs`, its own entry of `per_process`, and the
        window as `start_at` / `duration`.
        """
        tasks = [(function, {**kwargs, **own}) for own in per_process]
        windows, share = self.measure_each(tasks, server, label, duration)
        return Measurement(Window.merge(windows), share)

    def measure_each(
        self,
        tasks: Sequence[tuple[Callable[..., Awaitable[Window]], dict[str, Any]]],
        server: Watched | None,
        label: str,
        duration: float | None = None,
        lead: float = 0.0,
    ) -> tuple[list[Window], float | None]:
        """Run each (function, kwargs) in its own generator process, in one window.

        Returns each task's window, in order (a probe's latencies stay apart
        from the load beside it), and the server's CPU share in the window.
        `lead` adds seconds before the warm-up (for tasks that build large
        requests first).
        """
        duration = duration or self.mode.duration
        start_at = time.time() + self.mode.lead + lead + self.mode.warmup
        futures = [
            self.generators.submit(function, **kwargs, start_at=start_at, duration=duration)
            for function, kwargs in tasks
        ]
        cpu = ServerCpu(
            server, start_at, duration, self.recording_path(label, server), gil=self.profile_gil
        )
        try:
            windows = [future.result() for future in futures]
        finally:
            cpu.finish()
        if cpu.profile_summary is not None:
            self.profiles[label] = cpu.profile_summary
        return windows, cpu.share

    def recording_path(self, label: str, server: Watched | None) -> Path | None:
        """Where to record `server` during `label` (None: not profiling it)."""
        if self.profile_dir is None or server is None or server.name != "statekeeper":
            return None
        slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
        return self.profile_dir / f"{slug}.raw"


class ServerCpu:
    """The server's CPU share from `start_at` until the window ends or `finish()` is called,
    and a py-spy recording of the same time when asked for."""

    def __init__(
        self,
        server: Watched | None,
        start_at: float,
        duration: float,
        profile: Path | None,
        *,
        gil: bool = False,
    ) -> None:
        self.share: float | None = None
        self.profile_summary: str | None = None
        self._finished = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(server, start_at, duration, profile, gil), daemon=True
        )
        self._thread.start()

    def _run(
        self,
        server: Watched | None,
        start_at: float,
        duration: float,
        profile: Path | None,
        gil: bool,
    ) -> None:
        if self._finished.wait(max(0.0, start_at - time.time())) or server is None:
            return
        recording = Recording(server.pid, duration, profile, gil=gil) if profile else None
        with contextlib.suppress(Exception):
            before, began = server.cpu_seconds(), time.monotonic()
            self._finished.wait(duration)
            self.share = (server.cpu_seconds() - before) / (time.monotonic() - began)
        if recording is not None:
            summary = recording.stop()
            if summary is not None:
                self.profile_summary = summary.summary()
                recording.output.with_suffix(".txt").write_text(self.profile_summary + "\n")

    def finish(self) -> None:
        """End the window now (fixed amounts of work end before their time limit)."""
        self._finished.set()
        self._thread.join()
