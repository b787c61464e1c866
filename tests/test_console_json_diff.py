"""The console's JSON diff: the changes it lists turn the old value into the new
one, each path is a JSON Pointer, and equal values have no changes."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from statekeeper_server.console.json_diff import Change, diff, pointer

SCALARS = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-2, 2) | st.text(max_size=3)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(alphabet="ab/~", max_size=3), inner, max_size=4)
    ),
    max_leaves=20,
)


def tokens_of(path: str) -> list[str]:
    return [token.replace("~1", "/").replace("~0", "~") for token in path.split("/")[1:]]


def patched(old: Any, changes: list[Change]) -> Any:
    """`old` with `changes` applied: what a reader of the diff reconstructs."""
    value = copy.deepcopy(old)
    if changes and changes[0].path == "":
        return changes[0].new
    removals = [change for change in changes if change.kind == "removed"]
    for change in [*reversed(removals), *(c for c in changes if c.kind != "removed")]:
        *parents, last = tokens_of(change.path)
        holder = value
        for token in parents:
            holder = holder[int(token)] if isinstance(holder, list) else holder[token]
        key: Any = int(last) if isinstance(holder, list) else last
        if change.kind == "removed":
            del holder[key]
        elif isinstance(holder, list) and change.kind == "added":
            holder.insert(key, change.new)
        else:
            holder[key] = change.new
    return value


def test_added_removed_and_changed_keys_are_listed_with_their_values() -> None:
    old = {"keep": 1, "gone": "x", "moved": {"to": 1}}
    new = {"keep": 1, "came": [1], "moved": {"to": 2}}
    assert diff(old, new) == [
        Change("added", "/came", new=[1]),
        Change("removed", "/gone", old="x"),
        Change("changed", "/moved/to", old=1, new=2),
    ]


def test_a_longer_array_adds_its_extra_indices_and_a_shorter_one_removes_them() -> None:
    assert diff({"a": [1]}, {"a": [1, 2, 3]}) == [
        Change("added", "/a/1", new=2),
        Change("added", "/a/2", new=3),
    ]
    assert diff([1, 2], [1]) == [Change("removed", "/1", old=2)]


def test_a_value_of_another_json_type_is_a_change_even_when_python_finds_it_equal() -> None:
    assert diff({"flag": 1}, {"flag": True}) == [Change("changed", "/flag", old=1, new=True)]
    assert diff({"n": 1}, {"n": 1.0}) == []


def test_an_object_replaced_by_an_array_is_one_change_at_its_path() -> None:
    assert diff({"a": {}}, {"a": []}) == [Change("changed", "/a", old={}, new=[])]


def test_pointer_escapes_tilde_and_slash_in_keys() -> None:
    assert pointer(["a/b", "c~d", 0]) == "/a~1b/c~0d/0"
    assert pointer([]) == ""


@given(JSON)
def test_a_value_has_no_changes_from_itself(value: Any) -> None:
    assert diff(value, copy.deepcopy(value)) == []


@given(JSON, JSON)
def test_applying_the_changes_to_the_old_value_gives_the_new_one(old: Any, new: Any) -> None:
    assert diff(patched(old, diff(old, new)), new) == []


@given(JSON, JSON)
def test_swapping_the_values_swaps_added_and_removed_on_the_same_paths(old: Any, new: Any) -> None:
    swap = {"added": "removed", "removed": "added", "changed": "changed"}
    forward = {(change.path, swap[change.kind]) for change in diff(old, new)}
    assert forward == {(change.path, change.kind) for change in diff(new, old)}
