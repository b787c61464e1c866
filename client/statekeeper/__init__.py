"""statekeeper: the durable state of agent runs, over gRPC.

`AsyncClient` (asyncio) and `Client` (blocking) speak to a statekeeper
server; the generated messages and stubs live in `statekeeper.v1`.
"""

from statekeeper._client import AsyncClient
from statekeeper._sync import Client

__all__ = ["AsyncClient", "Client"]
