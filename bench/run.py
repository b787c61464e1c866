"""Run the statekeeper benchmarks and print one table.

    python bench/run.py [--store file|postgres|memory ...] [--quick | --smoke] [--only NAME ...]

Starts the real server (`python -m statekeeper_server serve`) as its own
process for each scenario on a fresh store, the bare echo reference as
another, and drives both from spawned generator processes. Every figure is
printed beside a reference measured in the same run, with the ratio and
the target. `--smoke` runs every scenario for about a second with tiny
data and judges nothing: it exits non-zero only if the harness itself
breaks. A service or store the server does not offer is reported as
"unavailable", not as a failure.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import servers  # noqa: E402
from bench.harness import MODES, Bench  # noqa: E402
from bench.load import Generators, RpcFailed, ServiceUnavailable  # noqa: E402
from bench.report import (  # noqa: E402
    ERROR,
    UNAVAILABLE,
    Row,
    load_average,
    machine_info,
    markdown_table,
    python_loop_time,
    text_table,
)
from bench.scenarios import Scenario, all_scenarios  # noqa: E402

GENERATOR_POOL = 5
"""Generator processes: enough for the largest window (a probe, a lag sampler and three loads)."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    names = [s.name for s in all_scenarios()]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--store",
        nargs="+",
        choices=servers.STORES,
        default=["file", "postgres"],
        help="stores to measure; the first gets every scenario, the others the append, "
        "batch and replay ones (default: file postgres)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="short windows, 100x smaller data")
    size.add_argument(
        "--smoke", action="store_true", help="about a second per scenario, no targets"
    )
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=", ".join(names))
    parser.add_argument("--no-peers", action="store_true", help="skip Redis and NATS")
    parser.add_argument(
        "--generators", type=int, default=1, help="generator processes for throughput loads"
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="record the server with py-spy into DIR"
    )
    parser.add_argument(
        "--gil", action="store_true", help="with --profile, sample only the thread holding the GIL"
    )
    parser.add_argument("--markdown", type=Path, help="also write the report as markdown here")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    return parser.parse_args(argv)


def run_scenario(bench: Bench, scenario: Scenario, store: str, with_peers: bool) -> list[Row]:
    """The scenario's rows; what the server lacks becomes an `unavailable` row."""
    label = f"{scenario.title} [{store}]"
    try:
        return scenario.run(bench, store, with_peers)
    except ServiceUnavailable as exc:
        return [Row(label, status=UNAVAILABLE, note=str(exc))]
    except servers.ServerStartError as exc:
        return [Row(label, status=UNAVAILABLE, note=f"the server cannot serve this store: {exc}")]
    except RpcFailed as exc:
        return [Row(label, status=ERROR, note=str(exc))]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected scenarios; 0 unless the harness itself broke."""
    args = parse_args(argv)
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    command = "python bench/run.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    selected = [s for s in all_scenarios() if not args.only or s.name in args.only]
    info = machine_info()
    print(f"$ {command}")
    for key, value in info.items():
        print(f"  {key}: {value}")
    started = time.monotonic()
    rows: list[Row] = []
    timings: dict[str, float] = {}
    broken = False
    generators = Generators(GENERATOR_POOL)
    echo = servers.echo_server().start()
    try:
        bench = Bench(
            mode=mode,
            generators=generators,
            echo=echo,
            peers=not args.no_peers,
            generator_processes=args.generators,
            profile_dir=args.profile,
            profile_gil=args.gil,
        )
        for index, store in enumerate(args.store):
            for scenario in selected:
                if index > 0 and not scenario.every_store:
                    continue
                began = time.monotonic()
                print(f"-- {scenario.name} [{store}] ...", flush=True)
                try:
                    new = run_scenario(bench, scenario, store, bench.peers and index == 0)
                except Exception:
                    traceback.print_exc()
                    broken = True
                    new = [Row(f"{scenario.title} [{store}]", status=ERROR, note="harness error")]
                rows += [row.judge(smoke=not mode.judged) for row in new]
                timings[f"{scenario.name} [{store}]"] = time.monotonic() - began
                print(text_table(new), flush=True)
                print(f"   ({time.monotonic() - began:.0f} s)", flush=True)
    finally:
        echo.stop()
        generators.close()
    total = time.monotonic() - started
    info["load average at end"] = load_average()
    info["python loop at end"] = python_loop_time()
    print()
    print(text_table(rows))
    print(f"\n{mode.name} run took {total:.0f} s")
    if args.markdown:
        args.markdown.write_text(markdown_report(command, info, rows, timings, total, bench))
    if args.json:
        args.json.write_text(
            json.dumps({"command": command, "machine": info, "rows": [asdict(r) for r in rows]})
        )
    return 1 if broken else 0


def markdown_report(
    command: str,
    info: dict[str, str],
    rows: Sequence[Row],
    timings: dict[str, float],
    total: float,
    bench: Bench,
) -> str:
    """The run as markdown: command, machine, table, timings and profiles."""
    lines = ["```", f"$ {command}", "```", "", "| machine | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in info.items()]
    lines += ["", markdown_table(rows), "", f"Whole run: {total:.0f} s.", ""]
    lines += [f"- {name}: {seconds:.0f} s" for name, seconds in timings.items()]
    for label, summary in bench.profiles.items():
        lines += ["", f"Profile of the server during {label}:", "```", summary, "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
