"""Stand-ins for families the PostgreSQL store does not keep yet.

Every call on a stand-in fails with UNAVAILABLE (reason FAMILY_UNAVAILABLE)
naming the family, so a replica still serves the families it keeps. A family
leaves this module's use by getting its own `stores/postgres/<family>.py`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn

from statekeeper_server.errors import Unavailable


class UnportedFamily:
    """A family store whose every method raises Unavailable."""

    def __init__(self, family: str) -> None:
        self._family = family

    def __getattr__(self, method: str) -> Callable[..., Awaitable[NoReturn]]:
        family = self._family

        async def unavailable(*_args: object, **_kwargs: object) -> NoReturn:
            raise Unavailable(
                "FAMILY_UNAVAILABLE", f"the PostgreSQL store does not keep {family}", family=family
            )

        return unavailable
