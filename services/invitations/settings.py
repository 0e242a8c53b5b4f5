"""Settings of the invitations service, from the environment."""

from __future__ import annotations

from pydantic import Field

from services.runtime.settings import RuntimeSettings


class InvitationsSettings(RuntimeSettings):
    service_name: str = "invitations"
    port: int = Field(default=8002, ge=1, le=65535)
