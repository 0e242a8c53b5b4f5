"""Settings every service reads from the environment, and a start-up check that names what is wrong."""

from __future__ import annotations

import ipaddress
import json
import ssl
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    FilePath,
    PostgresDsn,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.runtime import certificates
from services.runtime.kafka import KafkaSecurity

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]  # LOG_LEVEL, in either case
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
# HMAC secrets for JWTs must carry at least 256 bits.
MIN_SECRET_BYTES = 32
PLACEHOLDER = "SET-ME"  # in a deployment's value: not set yet (deploy/k8s/prod); refused at start


def _holds_certificates(path: Path) -> Path:
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as error:
        raise ValueError(f"{path} holds no PEM certificate ({error.reason or error})") from None
    return path


# A private CA (a hospital's own relay or identity provider): PEM certificates, trusted instead of the system's.
CaFile = Annotated[FilePath, AfterValidator(_holds_certificates)]


def is_loopback(host: str) -> bool:
    """True for a name of this machine (localhost, 127.0.0.0/8, ::1): nobody can listen in on the way there."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    return is_loopback(urlsplit(url).hostname or "")


def _origin_list(value: object) -> object:
    """A JSON list (`["https://a.example"]`) or, as most tools write it, comma-separated origins."""
    if not isinstance(value, str):
        return value
    if value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"expected a JSON list of origins or comma-separated origins ({error})") from None
    return [origin.strip() for origin in value.split(",") if origin.strip()]


Origins = Annotated[list[str], NoDecode, BeforeValidator(_origin_list)]


def _bootstrap_servers(value: str) -> str:
    """host:port[,host:port] (or a host alone, on 9092). aiokafka failed on anything else only once running
    (`PLAINTEXT://kafka:9092`, copied from a broker's listeners; a port that is not a number), the pod ready and
    nothing ever published."""
    for entry in value.split(","):
        server = entry.strip()
        host, _, port = server.rpartition(":")
        if "://" in server:
            raise ValueError(
                f"expected host:port[,host:port] without a scheme ({server!r}: the protocol is "
                "KAFKA_SECURITY_PROTOCOL's)"
            )
        if ":" not in server and server:
            continue  # a host alone: Kafka's port, 9092
        if not host.strip("[]") or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"expected host:port[,host:port] with a port from 1 to 65535 ({server!r})")
    return value


BootstrapServers = Annotated[str, AfterValidator(_bootstrap_servers)]


class RuntimeSettings(BaseSettings):
    """Base of each service's settings class; environment variables carry the upper-case field names."""

    # No inf or nan in any float, here or in a service's settings: a timeout, interval or rate of `inf` would wait
    # forever or overflow the first timedelta made of it, and no such setting means anything by nan.
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True, allow_inf_nan=False)

    service_name: str = "service"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Annotated[LogLevel, BeforeValidator(lambda v: v.strip().upper() if isinstance(v, str) else v)] = "INFO"

    database_url: PostgresDsn = Field(description="The service's own role, e.g. postgresql://svc:pw@host/db")
    database_pool_min: int = Field(default=2, ge=1)
    database_pool_max: int = Field(default=10, ge=1)
    request_deadline_seconds: float = Field(
        default=10.0,
        ge=1,
        le=300,
        description="A request not answered by then gets a 503 with Retry-After (a roster's send, preview or resend: "
        "60 s), rather than waiting out a database or broker that stopped answering",
    )

    kafka_bootstrap_servers: BootstrapServers = Field(min_length=1, description="host:port[,host:port]")
    kafka_topic_prefix: str = Field(default="", description="Prepended to every topic (shared clusters, tests)")
    # At most 15 s: a pod's stop waits this long for its producer, and the manifests' grace periods count 10.
    kafka_send_timeout_seconds: float = Field(default=10.0, gt=0, le=15)
    # Apache Kafka accepts 6 s to 30 min by default (group.min/max.session.timeout.ms). The embedded broker answers a
    # consumer's join only after half of it, so the local stack and the tests use 3 s (consumers join in 1.5 s, not 5).
    kafka_session_timeout_seconds: float = Field(
        default=10.0,
        ge=1,
        le=1800,
        description="A consumer silent this long is taken for dead and its partitions go to the others; "
        "heartbeats every third of it",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_ssl_cafile: CaFile | None = None
    kafka_ssl_certfile: FilePath | None = None
    kafka_ssl_keyfile: FilePath | None = None
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None

    outbox_batch_size: int = Field(default=1000, ge=1, le=10000)
    outbox_poll_seconds: float = Field(default=1.0, gt=0)
    consumer_batch_size: int = Field(default=500, ge=1, le=10000)
    consumer_max_attempts: int = Field(default=5, ge=1)
    inbox_retention_days: float = Field(
        default=30,
        ge=15,
        le=3650,
        description="Applied event ids are forgotten after this long; the topics keep 14 days",
    )

    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    jwt_secret: SecretStr | None = Field(default=None, description="HS256 key, at least 32 bytes")
    jwt_jwks_url: str | None = Field(default=None, description="RS256 key set URL")
    jwt_jwks_ca_file: CaFile | None = Field(
        default=None, description="PEM file of the CAs that sign the key set's HTTPS certificate"
    )
    jwt_issuer: str = "collabkare"
    jwt_audience: str = "collabkare-api"
    cors_origins: Origins = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _no_placeholder_left(cls, data: Any) -> Any:
        """The manifests' overlays mark what each deployment must set with PLACEHOLDER: a pod started with one
        would refuse every token or email patients from a domain nobody owns, so it does not start at all."""
        if isinstance(data, dict):
            # Named, not quoted: DATABASE_URL, assembled from a placeholder host, carries the password.
            unset = [name.upper() for name, value in data.items() if isinstance(value, str) and PLACEHOLDER in value]
            if unset:
                where = " (DATABASE_HOST in the overlay)" if "DATABASE_URL" in unset else ""
                raise ValueError(
                    f"{', '.join(sorted(unset))}: still the overlay's {PLACEHOLDER} placeholder; set it{where}"
                )
        return data

    @model_validator(mode="after")
    def _keys_match_algorithm(self) -> Self:
        if self.jwt_algorithm == "HS256":
            secret = self.jwt_secret.get_secret_value() if self.jwt_secret else ""
            if len(secret.encode()) < MIN_SECRET_BYTES:
                raise ValueError("JWT_SECRET: expected at least 32 bytes (256 bits) when JWT_ALGORITHM=HS256")
        elif not self.jwt_jwks_url:
            raise ValueError("JWT_JWKS_URL: expected a JWKS URL when JWT_ALGORITHM=RS256")
        jwks_url = self.jwt_jwks_url or ""
        if jwks_url and not jwks_url.startswith("https://") and not is_loopback_url(jwks_url):
            # Whoever sits between the pod and the identity provider could hand over their own key and sign tokens.
            raise ValueError("JWT_JWKS_URL: expected an https:// URL (plain http only to this machine)")
        if self.jwt_jwks_ca_file is not None and not (self.jwt_jwks_url or "").startswith("https://"):
            raise ValueError(
                "JWT_JWKS_CA_FILE: it checks the key set's HTTPS certificate; JWT_JWKS_URL is not https://"
            )
        self.kafka_security  # noqa: B018 - validates the KAFKA_SSL_* / KAFKA_SASL_* combination at start-up
        if self.database_pool_min > self.database_pool_max:
            raise ValueError("DATABASE_POOL_MIN: expected at most DATABASE_POOL_MAX")
        return self

    @property
    def kafka_security(self) -> KafkaSecurity:
        return KafkaSecurity(
            protocol=self.kafka_security_protocol,
            ssl_cafile=_text(self.kafka_ssl_cafile),
            ssl_certfile=_text(self.kafka_ssl_certfile),
            ssl_keyfile=_text(self.kafka_ssl_keyfile),
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
        )

    def topic(self, name: str) -> str:
        return f"{self.kafka_topic_prefix}{name}"

    def certificate_files(self) -> list[str]:
        """The certificate files the process loads once, at start (tls_certificate_expiry_timestamp_seconds)."""
        files = [str(path) for path in (self.kafka_ssl_cafile, self.kafka_ssl_certfile) if path is not None]
        return files + certificates.database_files(str(self.database_url))


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def describe_errors(error: ValidationError) -> list[str]:
    """One line per problem: the environment variable and what it expects."""
    lines = []
    for problem in error.errors():
        variable = "_".join(str(part) for part in problem["loc"]).upper()
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "missing":
            lines.append(f"{variable}: required but not set")
        elif not variable:
            lines.append(message)
        else:
            lines.append(f"{variable}: {message}")
    return lines


def load_settings(cls: type[SettingsT]) -> SettingsT:
    """Build settings from the environment or stop the process with one line per bad variable."""
    try:
        return cls()
    except ValidationError as error:
        for line in describe_errors(error):
            print(f"configuration error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
