"""What a test does when something it needs from the machine is missing."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Whether the tests run in CI (`CI` set to anything but empty, 0 or false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def skip_or_fail(problem: str) -> NoReturn:
    """Skip the test saying `problem`; in CI, fail it: there everything is installed."""
    if in_ci():
        pytest.fail(problem)
    pytest.skip(problem)
