"""How every Kafka client of a service connects: plaintext locally, TLS and/or SASL against a real cluster."""

from __future__ import annotations

import asyncio
import ssl
from functools import cached_property
from typing import Any, Literal

from aiokafka.client import AIOKafkaClient
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
_FASTSTREAM_SASL = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
# Kafka's max.poll.interval.ms for every consumer group (its default, said once): a consumer that takes longer
# than this over one batch is taken for dead and its partitions go to another member, batch and all.
MAX_POLL_INTERVAL_SECONDS = 300.0


class KafkaSecurity(BaseModel):
    """The KAFKA_SECURITY_PROTOCOL / KAFKA_SSL_* / KAFKA_SASL_* settings, turned into client options."""

    model_config = ConfigDict(frozen=True, ignored_types=(cached_property,))

    protocol: SecurityProtocol = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None  # client certificate, for mutual TLS (e.g. a Strimzi TLS KafkaUser)
    ssl_keyfile: str | None = None
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None

    @model_validator(mode="after")
    def _complete(self) -> KafkaSecurity:
        if self.protocol.startswith("SASL_") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD: required with {self.protocol}"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE: set both or neither")
        if not self.uses_tls and (self.ssl_cafile or self.ssl_certfile):
            # Ignored, they would leave an operator believing the connections (invite links and all) were encrypted.
            raise ValueError(
                f"KAFKA_SSL_CAFILE, KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE: used only with KAFKA_SECURITY_PROTOCOL=SSL "
                f"or SASL_SSL, and it is {self.protocol}"
            )
        if self.ssl_certfile and self.ssl_keyfile:
            try:
                self.ssl_context  # noqa: B018 - loads the pair now: a broken Secret is one line at start, not a traceback
            except (ssl.SSLError, OSError) as error:
                expected = "expected a PEM certificate and its private key"
                raise ValueError(f"KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE: {expected} ({error})") from None
        return self

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        """One context per process: building one per connection costs ~30 ms of CPU each."""
        if not self.uses_tls:
            return None
        context = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.ssl_certfile and self.ssl_keyfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context

    def aiokafka_options(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer / AIOKafkaConsumer / AIOKafkaAdminClient / AIOKafkaClient."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context
        if self.protocol.startswith("SASL_"):
            assert self.sasl_password is not None
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return options

    def faststream_security(self) -> BaseSecurity | None:
        if self.protocol == "PLAINTEXT":
            return None
        if self.protocol == "SSL":
            return BaseSecurity(ssl_context=self.ssl_context)
        assert self.sasl_mechanism and self.sasl_username and self.sasl_password
        sasl = _FASTSTREAM_SASL[self.sasl_mechanism]
        return sasl(
            self.sasl_username,
            self.sasl_password.get_secret_value(),
            ssl_context=self.ssl_context,
            use_ssl=self.uses_tls,
        )


async def reach_cluster(bootstrap_servers: str, security: KafkaSecurity, timeout: float) -> None:
    """Raise unless the cluster answers a metadata request within `timeout`. Asked by a bare client, closed however
    the request ends. (One gap is aiokafka's, aio-libs/aiokafka#715: a bootstrap cancelled while it waits for the
    first metadata answer leaves that connection to the garbage collector, which reports it unclosed. The client's
    own request timeout, the same as this one, usually ends the wait first and closes it.)"""
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout * 1000), **security.aiokafka_options()
    )
    try:
        async with asyncio.timeout(timeout):
            await client.bootstrap()
    finally:
        await client.close()
