"""A misbehaving HTTP/2 client on a raw socket: what real gRPC clients never do.

It opens connections that stop halfway through the handshake, go quiet,
leave streams half-open or never answer pings, and reports what the server
did about it: a GOAWAY, or the connection closed.
"""

from __future__ import annotations

import socket
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def _literal(name: str, value: str) -> bytes:
    """An HPACK header field without indexing, both strings as plain literals (< 127)."""
    encoded_name, encoded_value = name.encode(), value.encode()
    return (
        b"\x00"
        + bytes([len(encoded_name)])
        + encoded_name
        + bytes([len(encoded_value)])
        + encoded_value
    )


def request_headers(path: str) -> bytes:
    """The header block of a gRPC call to `path`."""
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    return b"".join(_literal(name, value) for name, value in fields)


class RawConnection:
    """One TCP connection to the server, driven frame by frame."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        """Write raw bytes."""
        self.sock.sendall(data)

    def handshake(self) -> None:
        """The client's half of the HTTP/2 handshake: preface and an empty SETTINGS."""
        self.send(PREFACE + frame(SETTINGS, 0, 0))

    def open_stream(self, stream_id: int, path: str) -> None:
        """Start a call and never finish its request (a half-open stream)."""
        self.send(frame(HEADERS, END_HEADERS, stream_id, request_headers(path)))

    def wait_for_end(self, seconds: float, *, answer_pings: bool = False) -> str:
        """Read until the server sends GOAWAY or closes; "goaway", "closed" or "open"."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                return "closed"
            if not chunk:
                return "closed"
            self._buffer += chunk
            while len(self._buffer) >= 9:
                length = int.from_bytes(self._buffer[:3], "big")
                if len(self._buffer) < 9 + length:
                    break
                kind, flags = self._buffer[3], self._buffer[4]
                payload = self._buffer[9 : 9 + length]
                self._buffer = self._buffer[9 + length :]
                if kind == GOAWAY:
                    return "goaway"
                if kind == SETTINGS and not flags & ACK:
                    self.send(frame(SETTINGS, ACK, 0))
                if kind == PING and not flags & ACK and answer_pings:
                    self.send(frame(PING, ACK, 0, payload))
        return "open"

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
