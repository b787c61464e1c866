"""Counting a server's open client connections, which gRPC does not expose.

grpc.aio has no hook on connections, so they are counted where the kernel
keeps them: the TCP tables of the server's network namespace
(`/proc/net/tcp` and `/proc/net/tcp6`), as established sockets whose local
port is the server's. Only one process listens on that port (the server
binds without SO_REUSEPORT), so every such socket is one of its client
connections. Elsewhere than on Linux there are no such tables and the count
is unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
ESTABLISHED = "01"
"""The state column of an established socket in those tables (hex)."""


def established_connections(port: int, tables: Sequence[Path] = TCP_TABLES) -> int | None:
    """Established TCP connections whose local port is `port`; None when no table
    can be read (not Linux) or the port is unknown (0)."""
    if port <= 0:
        return None
    suffix = f":{port:04X}"
    count = 0
    read_any = False
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        read_any = True
        for line in lines:
            # sl local_address rem_address st ...
            fields = line.split(None, 4)
            if len(fields) >= 4 and fields[3] == ESTABLISHED and fields[1].endswith(suffix):
                count += 1
    return count if read_any else None
