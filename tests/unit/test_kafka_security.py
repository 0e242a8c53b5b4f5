"""Kafka client security settings: what reaches aiokafka and FastStream, and what start-up refuses."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from faststream.security import BaseSecurity, SASLScram512
from pydantic import SecretStr, ValidationError

from services.runtime.kafka import KafkaSecurity
from tests.tls import private_ca
from tests.unit.test_settings import GOOD, _start


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return private_ca(tmp_path_factory.mktemp("ca")).ca_file


def test_plaintext_by_default() -> None:
    security = KafkaSecurity()
    assert security.aiokafka_options() == {"security_protocol": "PLAINTEXT"}
    assert security.faststream_security() is None


def test_tls_loads_the_ca_once_and_verifies_hosts(ca_file: Path) -> None:
    security = KafkaSecurity(protocol="SSL", ssl_cafile=str(ca_file))
    options = security.aiokafka_options()
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any(c["subject"] == ((("commonName", "CollabKare test CA"),),) for c in context.get_ca_certs())
    assert security.aiokafka_options()["ssl_context"] is context, "one context per process, not per client"
    fast = security.faststream_security()
    assert isinstance(fast, BaseSecurity) and fast.use_ssl and fast.ssl_context is context


def test_sasl_scram_over_tls(ca_file: Path) -> None:
    security = KafkaSecurity(
        protocol="SASL_SSL",
        ssl_cafile=str(ca_file),
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="notifier",
        sasl_password=SecretStr("pw"),
    )
    options = security.aiokafka_options()
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("notifier", "pw")
    fast = security.faststream_security()
    assert isinstance(fast, SASLScram512) and fast.use_ssl and fast.username == "notifier"


def test_incomplete_combinations_are_refused() -> None:
    with pytest.raises(ValidationError, match="KAFKA_SASL_USERNAME"):
        KafkaSecurity(protocol="SASL_SSL", sasl_mechanism="PLAIN")
    with pytest.raises(ValidationError, match="KAFKA_SSL_KEYFILE"):
        KafkaSecurity(protocol="SSL", ssl_certfile="/etc/client.crt")


def test_tls_files_without_a_tls_protocol_are_refused(ca_file: Path) -> None:
    """They were ignored: the service connected in plaintext while its operator believed otherwise."""
    with pytest.raises(ValidationError, match="used only with KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL"):
        KafkaSecurity(ssl_cafile=str(ca_file))
    with pytest.raises(ValidationError, match="and it is SASL_PLAINTEXT"):
        KafkaSecurity(
            protocol="SASL_PLAINTEXT",
            ssl_cafile=str(ca_file),
            sasl_mechanism="PLAIN",
            sasl_username="u",
            sasl_password=SecretStr("p"),
        )


def test_a_client_certificate_that_does_not_load_is_one_line_at_start(tmp_path: Path) -> None:
    """A broken Secret (not PEM, or a key of another certificate) was a traceback from deep inside the first client."""
    not_pem = tmp_path / "client.pem"
    not_pem.write_text("not a certificate")
    env = {**GOOD, "KAFKA_SECURITY_PROTOCOL": "SSL"}
    result = _start({**env, "KAFKA_SSL_CERTFILE": str(not_pem), "KAFKA_SSL_KEYFILE": str(not_pem)})
    assert result.returncode == 2
    assert "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE: expected a PEM certificate and its private key" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_client_certificate_and_its_key_load(tmp_path: Path) -> None:
    chain = private_ca(tmp_path)
    security = KafkaSecurity(
        protocol="SSL",
        ssl_cafile=str(chain.ca_file),
        ssl_certfile=str(chain.cert_file),
        ssl_keyfile=str(chain.key_file),
    )
    assert isinstance(security.aiokafka_options()["ssl_context"], ssl.SSLContext)


def test_start_up_names_the_missing_sasl_settings() -> None:
    result = _start({**GOOD, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"})
    assert result.returncode == 2
    assert "KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD: required with SASL_SSL" in result.stderr
    assert "Traceback" not in result.stderr
