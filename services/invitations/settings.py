"""Settings of the invitations service, from the environment."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator

from services.runtime.settings import MIN_SECRET_BYTES, RuntimeSettings

# Domain separation for the development fallback below: the derived key is useless as a JWT key and vice versa.
_DERIVATION_LABEL = b"collabkare/invitations/identity-hmac/v1"


class InvitationsSettings(RuntimeSettings):
    service_name: str = "invitations"
    port: int = Field(default=8002, ge=1, le=65535)

    public_base_url: str = Field(
        default="http://127.0.0.1:8080",
        description="Base of the patient app; accept links are {PUBLIC_BASE_URL}/invites/accept?token=<token>",
    )
    identity_hmac_key: SecretStr | None = Field(
        default=None,
        description="Key of the HMAC digests of SSN, date of birth and phone; at least 32 bytes. Required with "
        "RS256; with the HS256 development setup it defaults to a key derived from JWT_SECRET.",
    )
    invite_ttl_days: float = Field(default=7, gt=0, le=365, description="An invite expires this long after sending")
    expiry_sweep_seconds: float = Field(default=60.0, gt=0, description="How often pending invites are expired")
    roster_lines_in_flight: int = Field(
        default=200_000,
        ge=1_000,
        description="Roster lines this process works on at once (preview, send, resend); a roster that finds no "
        "room within ROSTER_ADMISSION_WAIT_SECONDS is answered 503 with Retry-After. Bounds the memory.",
    )
    roster_admission_wait_seconds: float = Field(
        default=5.0, ge=0, le=60, description="How long a roster waits for room before its 503"
    )

    @field_validator("public_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or any(c in value for c in "?#\r\n "):
            raise ValueError("expected an http(s) URL without query or fragment, e.g. https://app.collabkare.example")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _identity_key(self) -> Self:
        if self.identity_hmac_key is not None:
            if len(self.identity_hmac_key.get_secret_value().encode()) < MIN_SECRET_BYTES:
                raise ValueError("IDENTITY_HMAC_KEY: expected at least 32 bytes (256 bits)")
        elif self.jwt_algorithm != "HS256":
            raise ValueError("IDENTITY_HMAC_KEY: required when JWT_ALGORITHM is not HS256")
        return self

    @property
    def invite_ttl(self) -> timedelta:
        return timedelta(days=self.invite_ttl_days)

    @property
    def identity_key_is_derived(self) -> bool:
        return self.identity_hmac_key is None

    def identity_key(self) -> bytes:
        """The HMAC key for identity factors; derived from the HS256 JWT secret only when none is configured."""
        if self.identity_hmac_key is not None:
            return self.identity_hmac_key.get_secret_value().encode()
        assert self.jwt_secret is not None  # guaranteed by the validators for HS256
        return hmac.new(self.jwt_secret.get_secret_value().encode(), _DERIVATION_LABEL, hashlib.sha256).digest()
