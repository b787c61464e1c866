"""The summary of a fuzz run: what was sent, what came back, what broke."""

from __future__ import annotations

from collections import Counter

from tests.fuzz.plan import KIND_WEIGHTS
from tests.fuzz.runner import FuzzReport
from tests.fuzz.session import READ_BACK, Violation

MIB = 1024 * 1024
KIND_COLUMNS = {
    "valid": "valid",
    "boundary-scalars": "bound",
    "hostile-strings": "str",
    "unknown-enums": "enum",
    "non-finite": "nan",
    "time-range": "time",
    "deep-json": "deep",
    "wide-json": "wide",
    "forged-token": "token",
    "oversized-repeated": "many",
    "raw-random": "rand",
    "raw-truncated": "trunc",
    "raw-bad-utf8": "utf8",
    "raw-wire-type": "wire",
    "namespace-header": "nshdr",
    READ_BACK: "rdbk",
}
assert set(KIND_WEIGHTS) | {READ_BACK} == set(KIND_COLUMNS), "a kind has no column"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _counts_table(counts: Counter[tuple[str, str]], columns: list[str], first: str) -> str:
    rows_keys = sorted({row for row, _ in counts})
    rows = [
        [
            row,
            str(sum(counts[row, c] for c in columns)),
            *(str(counts[row, c] or "") for c in columns),
        ]
        for row in rows_keys
    ]
    totals = [
        "total",
        str(sum(counts.values())),
        *(str(sum(counts[r, c] for r in rows_keys)) for c in columns),
    ]
    return _table([first, "total", *columns], [*rows, totals])


def summary(report: FuzzReport) -> str:
    """The tables of a run: requests per RPC and kind, status codes, violations, memory, time."""
    config, tally = report.config, report.tally
    kinds = [k for k in KIND_COLUMNS if any(kind == k for _, kind in tally.sent)]
    sent = Counter({(rpc, KIND_COLUMNS[kind]): n for (rpc, kind), n in tally.sent.items()})
    codes = sorted({code for _, code in tally.codes}, key=lambda c: (c != "OK", c))
    rate = report.requests / report.elapsed if report.elapsed else 0.0
    read_backs = sum(n for (_, kind), n in tally.sent.items() if kind == READ_BACK)
    parts = [
        f"store {config.store_url}  seed {config.seed}  workers {config.workers}",
        f"{report.requests} requests (+{read_backs} read-backs) in {report.elapsed:.1f} s"
        f" ({rate:.0f} requests/s);"
        f" {tally.streams_left_open} streams left open, {tally.refused_locally} refused by the"
        " client library",
        f"server RSS {report.rss_before / MIB:.1f} MiB before, {report.rss_after / MIB:.1f} MiB"
        f" after; {report.log_lines} log lines",
        "",
        "Requests per RPC and kind of request",
        _counts_table(sent, [KIND_COLUMNS[k] for k in kinds], "RPC"),
        "",
        "Status codes per RPC (read-backs included)",
        _counts_table(tally.codes, codes, "RPC"),
        "",
        "Status codes per kind of request",
        _counts_table(tally.kind_codes, codes, "kind"),
        "",
        violations_text(report.violations),
    ]
    return "\n".join(parts)


def violations_text(violations: list[Violation], limit: int = 40) -> str:
    """Violations by rule: per method a count, kinds and a seed; one full example per rule."""
    if not violations:
        return "Violations: none"
    by_rule: dict[str, list[Violation]] = {}
    for violation in violations:
        by_rule.setdefault(violation.rule, []).append(violation)
    lines = [f"Violations: {len(violations)}, {len(by_rule)} rules broken"]
    for rule, members in by_rule.items():
        by_method: dict[str, list[Violation]] = {}
        for violation in members:
            by_method.setdefault(violation.method or "(server)", []).append(violation)
        lines += ["", f"* {rule}: {len(members)}x in {len(by_method)} methods"]
        if list(by_method) == ["(server)"]:
            details = Counter(v.detail for v in members)
            lines += [f"    {n}x {detail[:200]}" for detail, n in details.most_common(limit)]
            continue
        for method, group in list(by_method.items())[:limit]:
            kinds = Counter(v.kind for v in group if v.kind)
            shown_kinds = ", ".join(f"{kind} {n}" for kind, n in kinds.most_common(4))
            first = group[0]
            lines.append(
                f"    {method} {len(group)}x [{shown_kinds}]"
                + (f" seed {first.seed}" if first.seed is not None else "")
                + f": {(first.status or first.detail)[:140]}"
            )
        lines.append("  example:")
        lines.extend("    " + line for line in members[0].describe().splitlines())
    return "\n".join(lines)
