"""The metric names a PromQL expression reads, for checking alerts and dashboards.

Not a PromQL parser: a tokenizer that knows which identifiers are not metric
names. Skipped are functions and aggregations (an identifier followed by `(`,
or by `by`/`without` and then `(`), keywords and binary operators (`by`,
`without`, `on`, `ignoring`, `group_left`, `group_right`, `bool`, `and`, `or`,
`unless`, `offset`, `atan2`), literals (`inf`, `nan`), label names and values
inside `{...}` (but `{__name__="x"}` names `x`), the label lists after
grouping keywords, durations and subqueries inside `[...]`, numbers, strings
and Grafana variables (`$instance`, `${instance}`, `$__rate_interval`).
"""

from __future__ import annotations

import re

KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
        "inf",
        "nan",
    }
)
"""Identifiers of the language that are never metric names."""
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
"""Keywords that may be followed by a parenthesised list of label names."""
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
"""The series a histogram exposes beside its base name."""

_TOKEN = re.compile(
    r"""
      (?P<space>\s+|\#[^\n]*)
    | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<variable>\$\{[^}]*\}|\$\w+)
    | (?P<number>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)[a-zA-Z\d]*)
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<punct>=~|!~|!=|==|<=|>=|[{}()\[\],=<>+\-*/%^@:])
    """,
    re.VERBOSE,
)


def _tokens(expr: str) -> list[tuple[str, str]]:
    """(kind, text) of every token of `expr`, spaces and comments left out.

    Raises ValueError on a character that starts no token.
    """
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"unexpected {expr[position]!r} at {position} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def _closing(tokens: list[tuple[str, str]], start: int, opening: str, closing: str) -> int:
    """Index of the token closing the bracket opened at `start`."""
    depth = 0
    for index in range(start, len(tokens)):
        text = tokens[index][1]
        if text == opening:
            depth += 1
        elif text == closing:
            depth -= 1
            if depth == 0:
                return index
    raise ValueError(f"unbalanced {opening!r}")


def _check_balanced(tokens: list[tuple[str, str]]) -> None:
    """Raise ValueError unless every bracket is closed by its own kind, in order."""
    pairs = {")": "(", "]": "[", "}": "{"}
    opened: list[str] = []
    for kind, text in tokens:
        if kind != "punct":
            continue
        if text in "([{":
            opened.append(text)
        elif text in pairs and (not opened or opened.pop() != pairs[text]):
            raise ValueError(f"unbalanced {text!r}")
    if opened:
        raise ValueError(f"unbalanced {opened[-1]!r}")


def _name_in_matchers(tokens: list[tuple[str, str]]) -> str | None:
    """The metric named by `__name__="x"` among a selector's matchers, if any."""
    for index in range(len(tokens) - 2):
        if tokens[index][1] == "__name__" and tokens[index + 1][1] == "=":
            kind, text = tokens[index + 2]
            if kind == "string":
                return text[1:-1]
    return None


def metric_names(expr: str) -> set[str]:
    """The series names `expr` selects, as written (`foo_bucket`, `bar_total`)."""
    tokens = _tokens(expr)
    _check_balanced(tokens)
    names: set[str] = set()
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if text == "{":
            end = _closing(tokens, index, "{", "}")
            named = _name_in_matchers(tokens[index + 1 : end])
            if named is not None:
                names.add(named)
            index = end + 1
            continue
        if text == "[":
            index = _closing(tokens, index, "[", "]") + 1
            continue
        if kind == "ident":
            if text in GROUPING and following == "(":
                index = _closing(tokens, index + 1, "(", ")") + 1
                continue
            is_function = following == "(" or following in ("by", "without")
            if text not in KEYWORDS and not is_function:
                names.add(text)
        index += 1
    return names


def base_name(series: str) -> str:
    """The metric a series belongs to: a histogram's `_bucket`, `_sum` and `_count`
    series map to its base name; every other name (`_total` included) is its own."""
    for suffix in HISTOGRAM_SUFFIXES:
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


def label_values_metric(query: str) -> str | None:
    """The metric of a Grafana `label_values(metric, label)` variable query
    (None for `label_values(label)` or any other query)."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*[a-zA-Z_]\w*\s*\)\s*", query, re.DOTALL)
    if match is None:
        return None
    found = metric_names(match.group(1))
    if len(found) != 1:
        raise ValueError(f"label_values of no single metric: {query!r}")
    return found.pop()
