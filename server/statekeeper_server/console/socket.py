"""The private way in by which the console reaches its own server's gRPC API."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class ConsoleSocket:
    """A Unix socket the gRPC server also listens on, in a directory only this
    server's user may enter (mode 0700).

    The console calls the API through it, so it works whatever the gRPC port
    speaks (plain, TLS or mutual TLS) and wherever that port is bound. Calls on it
    pass through the same interceptors as any other: access control, limits and
    logs treat the console as one more client carrying the visitor's token.
    """

    directory: Path

    @classmethod
    def bind(cls, server: grpc.aio.Server) -> ConsoleSocket:
        """Create the directory and add the socket to `server` (before it starts)."""
        directory = Path(tempfile.mkdtemp(prefix="statekeeper-console-"))
        socket = cls(directory)
        if server.add_insecure_port(socket.target) == 0:
            shutil.rmtree(directory, ignore_errors=True)
            raise OSError("cannot listen on the console's private Unix socket")
        return socket

    @property
    def target(self) -> str:
        """The gRPC target naming the socket."""
        return f"unix:{self.directory / 'grpc.sock'}"

    def remove(self) -> None:
        """Delete the socket and its directory (after the server stopped)."""
        shutil.rmtree(self.directory, ignore_errors=True)
