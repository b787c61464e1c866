"""TLS on the gRPC port: the server's certificate, and the CA of client certificates.

With `--tls-cert` and `--tls-key` the port speaks TLS; with `--tls-client-ca`
as well, every client must present a certificate signed by that CA (mTLS)
or its connection is refused during the handshake. Without them the port
is plaintext.

The files are read at start and again on `ServerTls.reload` (SIGHUP), so a
certificate can be rotated without a restart: connections made after the
reload get the new files, open connections keep the ones they started
with. Files that cannot serve (missing, unreadable, not PEM, a key that
does not match the certificate) stop the start with a message naming the
setting and the file; on reload they are refused and the files in use
stay in use.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc

from statekeeper_server.config import Settings

log = logging.getLogger(__name__)

PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


class TlsError(Exception):
    """TLS settings or files that cannot serve; the message names the flag and the file."""


@dataclass(frozen=True)
class TlsFiles:
    """Where the server's TLS material lives."""

    cert: Path
    key: Path
    client_ca: Path | None
    """The CA client certificates must be signed by; None accepts clients without one."""

    @classmethod
    def from_settings(cls, settings: Settings) -> TlsFiles | None:
        """The files the settings name; None for a plaintext port.

        Raises TlsError when only one of `tls_cert` and `tls_key` is given,
        or `tls_client_ca` without them.
        """
        if not (settings.tls_cert or settings.tls_key):
            if settings.tls_client_ca:
                raise TlsError("--tls-client-ca needs --tls-cert and --tls-key")
            return None
        if not settings.tls_cert:
            raise TlsError("--tls-key needs --tls-cert")
        if not settings.tls_key:
            raise TlsError("--tls-cert needs --tls-key")
        return cls(
            cert=Path(settings.tls_cert),
            key=Path(settings.tls_key),
            client_ca=Path(settings.tls_client_ca) if settings.tls_client_ca else None,
        )


def read_certificate_configuration(files: TlsFiles) -> grpc.ServerCertificateConfiguration:
    """Read and check the files (blocking I/O): a certificate chain, its unencrypted
    private key and, if named, CA certificates. Raises TlsError saying which file
    is wrong and how."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert = _read("--tls-cert", files.cert)
    _check_certificates(context, "--tls-cert", files.cert, cert)
    key = _read("--tls-key", files.key)
    client_ca = None
    if files.client_ca is not None:
        client_ca = _read("--tls-client-ca", files.client_ca)
        _check_certificates(context, "--tls-client-ca", files.client_ca, client_ca)
    try:
        # The standard library pairs key and certificate only from files, so this reads
        # them again; should they change in between, gRPC refuses a pair that does not
        # match and keeps the one in use. A callable password makes an encrypted key
        # fail here instead of prompting on a terminal.
        context.load_cert_chain(files.cert, files.key, password=lambda: b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsError(
                f"--tls-key {files.key} is not the key of the certificate"
                f" in --tls-cert {files.cert}"
            ) from None
        raise TlsError(
            f"--tls-key {files.key} holds no usable private key (PEM, not encrypted)"
        ) from None
    except OSError as exc:
        raise TlsError(f"cannot read the TLS files: {exc.strerror}") from None
    return grpc.ssl_server_certificate_configuration([(key, cert)], client_ca)


def _read(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None


def _check_certificates(context: ssl.SSLContext, flag: str, path: Path, pem: bytes) -> None:
    """Raise TlsError unless `pem` holds PEM certificates that parse."""
    try:
        if PEM_CERTIFICATE not in pem:
            raise ValueError
        context.load_verify_locations(cadata=pem.decode("ascii"))
    except (ValueError, ssl.SSLError):
        raise TlsError(f"{flag} {path} holds no PEM certificate") from None


class ServerTls:
    """The TLS credentials of the gRPC port, whose files can be re-read while serving."""

    def __init__(self, files: TlsFiles, configuration: grpc.ServerCertificateConfiguration) -> None:
        self.files = files
        self._initial = configuration
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None

    @classmethod
    async def load(cls, settings: Settings) -> ServerTls | None:
        """The TLS the settings ask for, its files read and checked; None for plaintext.

        Raises TlsError for settings or files that cannot serve.
        """
        files = TlsFiles.from_settings(settings)
        if files is None:
            return None
        return cls(files, await asyncio.to_thread(read_certificate_configuration, files))

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that pick up every successful `reload`."""
        # gRPC's type stubs leave out that the fetcher returns None to keep what it has.
        fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], self._fetch)
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            fetch,
            require_client_authentication=self.files.client_ca is not None,
        )

    async def reload(self) -> None:
        """Re-read the files; connections made from now on use them.

        Raises TlsError (the files in use stay in use) if they cannot serve.
        """
        configuration = await asyncio.to_thread(read_certificate_configuration, self.files)
        with self._lock:
            self._pending = configuration
        log.info("TLS certificate re-read from %s", self.files.cert)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC on its own threads before each handshake: the configuration
        read since the last call, or None to keep the current one."""
        with self._lock:
            configuration, self._pending = self._pending, None
        return configuration


def bind(server: grpc.aio.Server, address: str, tls: ServerTls | None) -> int:
    """Add the listening port, with TLS when given; the port bound (0 if none)."""
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, tls.credentials())
