"""Server settings: command-line flags > `STATEKEEPER_*` environment > defaults.

Every field of `Settings` is also a `statekeeper serve` flag (`log_level`
becomes `--log-level`), so the flag list, the environment and the README's
settings table never disagree.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything `statekeeper serve` can be told."""

    model_config = SettingsConfigDict(env_prefix="STATEKEEPER_", extra="forbid")

    listen: str = Field("127.0.0.1:50051", description="address to listen on (host:port)")
    store: str = Field(
        "file:./data/statekeeper.db",
        description="store URL: memory:, file:PATH or postgresql://user@host:port/db",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="lowest level of log lines written to stderr"
    )
    grace_period: float = Field(
        10.0, ge=0, description="seconds in-flight calls get to finish on SIGTERM/SIGINT"
    )
    max_message_bytes: int = Field(
        4 * 1024 * 1024, gt=0, description="largest request accepted, in bytes"
    )
    health_check_interval: float = Field(
        2.0, gt=0, description="seconds between checks of the store for the health service"
    )
    heartbeat_interval: float = Field(
        5.0, gt=0, description="seconds of silence before an idle stream gets a heartbeat"
    )
