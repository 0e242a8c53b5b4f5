"""The mailer against a real aiosmtpd server that demands STARTTLS and AUTH, or speaks TLS from the first byte."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from collabkare.stack.ports import free_port
from services.notifier.domain import Attempt
from services.notifier.mailer import Mailer
from services.notifier.settings import NotifierSettings
from tests.integration.notifier_harness import smtp_settings

MESSAGE = b"From: a@collabkare.example\r\nTo: b@example.com\r\nSubject: tls\r\n\r\nover TLS\r\n"


class Inbox:
    """aiosmtpd handler keeping what arrived and whether the session was encrypted and authenticated."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, bool, Any]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        encrypted = server.transport.get_extra_info("ssl_object") is not None
        self.received.append((envelope.original_content, encrypted, session.auth_data))
        return "250 2.0.0 OK"


class PipeliningInbox(Inbox):
    """The same, offering PIPELINING: the notifier then pipelines over the TLS transport it took over."""

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (b"notifier", b"s3cret")
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A self-signed certificate for 127.0.0.1, as a server-side TLS context."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    directory: Path = tmp_path_factory.mktemp("tls")
    (directory / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


def _settings(port: int, **values: Any) -> NotifierSettings:
    return smtp_settings(port, smtp_validate_certs=False, **values)  # self-signed here; real providers are verified


@pytest.fixture(params=[Inbox, PipeliningInbox], ids=["one-by-one", "pipelined"])
def starttls_server(server_tls: ssl.SSLContext, request: pytest.FixtureRequest) -> Iterator[tuple[int, Inbox]]:
    inbox, port = request.param(), free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        server_hostname="tls-test",
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticate,
        auth_require_tls=True,
    )
    controller.start()
    try:
        yield port, inbox
    finally:
        controller.stop()


@pytest.fixture(params=[Inbox, PipeliningInbox], ids=["one-by-one", "pipelined"])
def implicit_tls_server(server_tls: ssl.SSLContext, request: pytest.FixtureRequest) -> Iterator[tuple[int, Inbox]]:
    inbox, port = request.param(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, server_hostname="tls-test", ssl_context=server_tls)
    controller.start()
    try:
        yield port, inbox
    finally:
        controller.stop()


async def test_starttls_and_login_then_send_over_one_reused_connection(starttls_server: tuple[int, Inbox]) -> None:
    port, inbox = starttls_server
    mailer = Mailer(_settings(port, smtp_starttls=True, smtp_username="notifier", smtp_password="s3cret"))
    connection = mailer.connection()
    for _ in range(2):
        result = await connection.send("a@collabkare.example", "b@example.com", MESSAGE)
        assert result.attempt is Attempt.SENT, result
    refused = await connection.send("a@collabkare.example", "b@example.com>", MESSAGE)
    assert refused.attempt is Attempt.PERMANENT
    result = await connection.send("a@collabkare.example", "c@example.com", MESSAGE)
    assert result.attempt is Attempt.SENT, result
    await connection.quit()
    assert [(tls, auth) for _, tls, auth in inbox.received] == [(True, (b"notifier", b"s3cret"))] * 3
    assert inbox.received[0][0] == MESSAGE
    assert await mailer.reachable() is True
    # One TLS context for every connection: aiosmtplib would otherwise build one per connection (~30 ms CPU).
    assert mailer.new_client().tls_context is mailer.tls_context() is mailer.new_client().tls_context


async def test_a_wrong_password_is_an_unreachable_server_not_a_failed_email(
    starttls_server: tuple[int, Inbox],
) -> None:
    port, inbox = starttls_server
    mailer = Mailer(_settings(port, smtp_starttls=True, smtp_username="notifier", smtp_password="wrong"))
    result = await mailer.connection().send("a@collabkare.example", "b@example.com", MESSAGE)
    assert result.attempt is Attempt.UNREACHABLE and result.reply.startswith("535")
    assert await mailer.reachable() is False and inbox.received == []


async def test_a_server_wanting_starttls_first_is_not_ready_and_fails_no_email(
    starttls_server: tuple[int, Inbox],
) -> None:
    port, inbox = starttls_server
    mailer = Mailer(_settings(port))
    result = await mailer.connection().send("a@collabkare.example", "b@example.com", MESSAGE)
    assert result.attempt is Attempt.UNREACHABLE and result.reply.startswith("530"), "retried, not an error"
    assert await mailer.reachable() is False, "the probe starts a transaction, which the server refuses"
    assert inbox.received == []


async def test_implicit_tls(implicit_tls_server: tuple[int, Inbox]) -> None:
    port, inbox = implicit_tls_server
    mailer = Mailer(_settings(port, smtp_tls=True))
    result = await mailer.connection().send("a@collabkare.example", "b@example.com", MESSAGE)
    assert result.attempt is Attempt.SENT, result
    assert [tls for _, tls, _ in inbox.received] == [True]
