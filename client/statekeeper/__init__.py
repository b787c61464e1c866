"""statekeeper: the durable state of agent runs, over gRPC.

`AsyncClient` (asyncio) and `Client` (blocking) speak to a statekeeper
server; the generated messages and stubs live in `statekeeper.v1`. A failed
call raises `StatekeeperError` (see `statekeeper.errors`).
"""

from statekeeper._client import AsyncClient
from statekeeper._sync import Client
from statekeeper.errors import StatekeeperError

__all__ = ["AsyncClient", "Client", "StatekeeperError"]
