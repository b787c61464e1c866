"""One servicer per proto service: validate, call the store, return."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol

import grpc


class Service(Protocol):
    """What the application needs of each servicer."""

    service_name: str
    """Full proto name, such as `statekeeper.v1.SnapshotService` (for health)."""

    def add_to(self, server: grpc.aio.Server) -> None:
        """Register the servicer's handlers on `server`."""

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """Loops to run while the server serves; cancelled on shutdown."""
