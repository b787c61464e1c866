"""`python -m tests.fuzz`: a fuzz run of any length against a fresh server (see README.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import secrets
import sys
import tempfile
from collections.abc import Iterator

import pytest

from tests.fuzz.report import summary, violations_text
from tests.fuzz.runner import FuzzConfig, replay_seed, run_fuzz


@contextlib.contextmanager
def store_url(store: str) -> Iterator[str]:
    """The URL of a fresh store of the named backend (or `store` itself if it is a URL)."""
    if store == "memory":
        yield "memory:"
    elif store == "file":
        with tempfile.TemporaryDirectory(prefix="statekeeper-fuzz-") as directory:
            yield f"file:{directory}/statekeeper.db"
    elif store == "postgres":
        from tests.postgres_harness import postgres_schema

        try:
            with postgres_schema() as url:
                yield url
        except (pytest.skip.Exception, pytest.fail.Exception) as error:  # no server answers
            raise SystemExit(str(error)) from None
    else:
        yield store


def main(argv: list[str] | None = None) -> int:
    """Run the fuzzer; exit 1 if any rule was broken."""
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--budget", type=int, default=10_000, help="requests to send")
    parser.add_argument("--store", default="memory", help="memory, file, postgres, or a store URL")
    parser.add_argument("--seed", type=int, help="run seed (random when absent)")
    parser.add_argument("--workers", type=int, default=4, help="concurrent callers")
    parser.add_argument(
        "--replay", type=int, metavar="REQUEST_SEED", help="send only the request of this seed"
    )
    parser.add_argument("--json", metavar="PATH", help="also write every violation here (JSON)")
    args = parser.parse_args(argv)
    with store_url(args.store) as url:
        if args.replay is not None:
            report = asyncio.run(replay_seed(url, args.replay))
            print(violations_text(report.violations))
            return 1 if report.violations else 0
        seed = args.seed if args.seed is not None else secrets.randbits(32)
        config = FuzzConfig(url, budget=args.budget, seed=seed, workers=args.workers)
        report = asyncio.run(run_fuzz(config))
    print(summary(report))
    if args.json:
        with open(args.json, "w") as out:
            json.dump([dataclasses.asdict(v) for v in report.violations], out, indent=1)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
