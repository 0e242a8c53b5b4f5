"""Settings of the notifier service, from the environment."""

from __future__ import annotations

from email.utils import parseaddr
from typing import Annotated, Self

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, Field, SecretStr, StringConstraints, field_validator, model_validator

from services.runtime.kafka import MAX_POLL_INTERVAL_SECONDS
from services.runtime.settings import CaFile, RuntimeSettings, is_loopback


def _ehlo_name(value: str) -> str:
    """RFC 5321's EHLO argument: a fully qualified domain (not `localhost`, which Postfix's
    reject_non_fqdn_helo_hostname refuses) or an address literal; checked by the validator SMTP_FROM's domain is."""
    try:
        if not value.isascii():
            raise EmailNotValidError("not ASCII")
        validate_email(f"ehlo@{value}", check_deliverability=False, allow_domain_literal=True)
    except EmailNotValidError:
        raise ValueError(
            "expected a fully qualified domain name (mail.example.org) or an address literal ([192.0.2.1]): "
            "relays refuse a bare name such as localhost in EHLO"
        ) from None
    return value


EhloName = Annotated[str, AfterValidator(_ehlo_name)]
InstanceName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=253)]


class NotifierSettings(RuntimeSettings):
    service_name: str = "notifier"
    port: int = Field(default=8003, ge=1, le=65535)

    smtp_host: str = Field(default="127.0.0.1", min_length=1)
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = Field(default=False, description="Upgrade with STARTTLS after connecting")
    smtp_tls: bool = Field(default=False, description="Implicit TLS from the first byte (usually port 465)")
    smtp_validate_certs: bool = True
    smtp_ca_file: CaFile | None = Field(
        default=None,
        description="PEM file of the CAs that sign the relay's certificate, trusted instead of the system's",
    )
    smtp_from: str = Field(default="CollabKare <no-reply@collabkare.example>", min_length=3)
    smtp_local_hostname: EhloName | None = Field(
        default=None,
        description="Our name in EHLO, a fully qualified domain name (or an address literal, [192.0.2.1]); default: "
        "SMTP_FROM's domain",
    )
    smtp_pool_size: int = Field(default=8, ge=1, le=64, description="Reused SMTP connections per process")
    smtp_rate_per_second: float = Field(
        default=0.0, ge=0, description="Emails per second per process (token bucket); 0 = unlimited"
    )
    smtp_rate_burst: int = Field(default=0, ge=0, description="Bucket size; 0 = one second's worth of the rate")
    # A 4xx (greylisting, a provider's throttle) often lasts minutes: with these defaults a delivery is tried
    # 10 times over 15 to 30 minutes (5, 10, 20 … s, capped at 600 s, each with jitter) before it is an error.
    smtp_max_attempts: int = Field(default=10, ge=1, le=50)
    smtp_timeout_seconds: float = Field(default=30.0, gt=0)
    smtp_retry_base_seconds: float = Field(default=5.0, gt=0, description="First retry delay; doubles each time")
    smtp_retry_max_seconds: float = Field(default=600.0, gt=0)

    sender_batch_size: int = Field(default=500, ge=1, le=5000, description="Deliveries claimed per round at most")
    sender_poll_seconds: float = Field(default=1.0, gt=0)
    sending_lease_seconds: float = Field(
        default=60.0, gt=0, description="A delivery left `sending` this long by a dead process is retried"
    )
    notifier_instance: InstanceName | None = Field(
        default=None,
        description="This process's slot, unique among the notifiers running at once and kept by its restarts "
        "(Kubernetes: the pod's uid): a restarted process takes back at once what its killed predecessor had "
        "claimed, instead of waiting out SENDING_LEASE_SECONDS",
    )
    pending_high_water: int = Field(
        default=5000, ge=1, description="Consumption pauses while this many deliveries wait to be sent"
    )
    pending_wait_max_seconds: float = Field(
        default=60.0, gt=0, description="Longest pause per consumed batch (below Kafka's max poll interval)"
    )
    directory_grace_seconds: float = Field(
        default=10.0, ge=0, description="How long an invite to an unknown email waits for PatientRegistered"
    )
    delivery_retention_days: float = Field(
        default=30,
        ge=15,
        le=3650,
        description="Decided deliveries (the recipient's address, the server's reply) are deleted after this long; "
        "the topics keep 14 days",
    )

    @field_validator("smtp_from")
    @classmethod
    def _sender_is_an_address(cls, value: str) -> str:
        """An ASCII address at a fully qualified domain: its domain ends every Message-ID and names us in EHLO, so
        `no-reply@localhost` (a name only this machine knows) would mark every email as coming from nowhere."""
        address = parseaddr(value)[1]
        if "@" not in address or not address.isascii():
            raise ValueError("expected 'Name <address@domain>' with an ASCII address")
        try:
            validate_email(address, check_deliverability=False)
        except EmailNotValidError as error:
            raise ValueError(
                f"{address!r} is not a usable sender address at a fully qualified domain: {error}"
            ) from None
        return value

    @field_validator("pending_wait_max_seconds")
    @classmethod
    def _pause_within_max_poll_interval(cls, value: float) -> float:
        """The pause happens while the consumer holds its batch: as long as Kafka's max poll interval, and the
        group takes the consumer for dead and hands its partitions to another member, which pauses in turn."""
        if value > MAX_POLL_INTERVAL_SECONDS - 60:  # the batch is still to be applied after the pause
            raise ValueError(
                f"expected at most {MAX_POLL_INTERVAL_SECONDS - 60:g} s: the consumers' max poll interval "
                f"({MAX_POLL_INTERVAL_SECONDS:g} s) less a minute to apply the batch after the pause (a consumer "
                "that takes longer is taken for dead and leaves its group)"
            )
        return value

    @property
    def sender_domain(self) -> str:
        """SMTP_FROM's domain: one we control, and the right-hand side of the Message-IDs we make."""
        return parseaddr(self.smtp_from)[1].rpartition("@")[2]

    @property
    def ehlo_name(self) -> str:
        """RFC 5321 wants a fully qualified name in EHLO (Postfix's reject_non_fqdn_helo_hostname and spam filters
        hold a bare one against us); the sender's own domain is one, and needs no DNS lookup to find."""
        return self.smtp_local_hostname or self.sender_domain

    @property
    def lease_fresh_seconds(self) -> float:
        """A sender sends a delivery only while it confirmed owning it less than this ago: the SMTP transaction that
        may begin just before then (one deadline, SMTP_TIMEOUT_SECONDS) ends 5 s before the lease can run out."""
        return self.sending_lease_seconds - self.smtp_timeout_seconds - 5

    def certificate_files(self) -> list[str]:
        return [*super().certificate_files(), *([str(self.smtp_ca_file)] if self.smtp_ca_file else [])]

    @property
    def lease_renew_seconds(self) -> float:
        """How often a sender renews the leases it holds (and reaps dead ones): three times per freshness window, so
        two renewals in a row can fail (a slow database) before a claim goes stale and is given back unsent."""
        return self.lease_fresh_seconds / 3

    @model_validator(mode="after")
    def _a_lease_outlasts_a_send(self) -> Self:
        # Until its result is recorded the sender keeps renewing the lease (sender.py: after a database outage,
        # leases expire only once the database has answered for a renewal interval, so the holders renew first).
        # A freshness window under 10 s would have the sender renew every few hundred milliseconds for nothing.
        if self.lease_fresh_seconds < 10:
            raise ValueError(
                f"SENDING_LEASE_SECONDS: at least SMTP_TIMEOUT_SECONDS + 15 s "
                f"({self.smtp_timeout_seconds + 15:g} s): a transaction and 5 s to record it must fit in the "
                "lease with at least 10 s left to confirm the claim before sending, or it could be sent twice"
            )
        return self

    @model_validator(mode="after")
    def _tls_modes_exclusive(self) -> Self:
        if self.smtp_tls and self.smtp_starttls:
            raise ValueError("SMTP_TLS and SMTP_STARTTLS: choose one (implicit TLS or STARTTLS)")
        if self.smtp_ca_file is not None and not (self.smtp_validate_certs and (self.smtp_tls or self.smtp_starttls)):
            raise ValueError(
                "SMTP_CA_FILE: it checks the relay's certificate, so it needs SMTP_STARTTLS or SMTP_TLS on "
                "and SMTP_VALIDATE_CERTS left on"
            )
        if self.smtp_retry_base_seconds > self.smtp_retry_max_seconds:
            raise ValueError("SMTP_RETRY_BASE_SECONDS: expected at most SMTP_RETRY_MAX_SECONDS")
        if (self.smtp_username is None) != (self.smtp_password is None):
            raise ValueError("SMTP_USERNAME and SMTP_PASSWORD: set both or neither")
        plaintext = not (self.smtp_tls or self.smtp_starttls)
        if self.smtp_username is not None and plaintext and not is_loopback(self.smtp_host):
            # The password, the patients' addresses and live invite links would cross the network in clear.
            raise ValueError(
                "SMTP_USERNAME and SMTP_PASSWORD: sent only over TLS; set SMTP_STARTTLS or SMTP_TLS "
                "(plain SMTP with a login only to this machine)"
            )
        return self
