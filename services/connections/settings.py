"""Settings of the connections service, from the environment."""

from __future__ import annotations

from pydantic import Field

from services.runtime.settings import RuntimeSettings


class ConnectionsSettings(RuntimeSettings):
    service_name: str = "connections"
    port: int = Field(default=8001, ge=1, le=65535)
