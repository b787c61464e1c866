"""Logging to stderr, one line per event."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    """Send log lines at `level` and above to stderr, one per event."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc's own debug lines say nothing about the service.
    logging.getLogger("grpc").setLevel(max(root.level, logging.INFO))
