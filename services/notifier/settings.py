"""Settings of the notifier service, from the environment."""

from __future__ import annotations

from pydantic import Field

from services.runtime.settings import RuntimeSettings


class NotifierSettings(RuntimeSettings):
    service_name: str = "notifier"
    port: int = Field(default=8003, ge=1, le=65535)
