"""The mailer against a real aiosmtpd server that demands STARTTLS and AUTH, or speaks TLS from the first byte."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from collabkare.stack.ports import free_port
from services.notifier.domain import Attempt
from services.notifier.mailer import Mailer
from services.notifier.settings import NotifierSettings
from tests.integration.notifier_harness import smtp_settings
from tests.tls import PrivateCA, private_ca

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
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    """The relay's certificate (127.0.0.1) comes from a private CA, as a hospital's own relay's would."""
    return private_ca(tmp_path_factory.mktemp("tls"))


def _settings(port: int, ca: PrivateCA | None = None, **values: Any) -> NotifierSettings:
    """Certificates checked against `ca` (SMTP_CA_FILE) when it is given; against the system's CAs otherwise."""
    return smtp_settings(port, **({"smtp_ca_file": ca.ca_file} if ca else {}), **values)


@pytest.fixture(params=[Inbox, PipeliningInbox], ids=["one-by-one", "pipelined"])
def starttls_server(ca: PrivateCA, request: pytest.FixtureRequest) -> Iterator[tuple[int, Inbox]]:
    inbox, port = request.param(), free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        server_hostname="tls-test",
        tls_context=ca.server_context(),
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
def implicit_tls_server(ca: PrivateCA, request: pytest.FixtureRequest) -> Iterator[tuple[int, Inbox]]:
    inbox, port = request.param(), free_port()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, server_hostname="tls-test", ssl_context=ca.server_context()
    )
    controller.start()
    try:
        yield port, inbox
    finally:
        controller.stop()


async def test_starttls_and_login_then_send_over_one_reused_connection(
    starttls_server: tuple[int, Inbox], ca: PrivateCA
) -> None:
    port, inbox = starttls_server
    mailer = Mailer(_settings(port, ca, smtp_starttls=True, smtp_username="notifier", smtp_password="s3cret"))
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
    starttls_server: tuple[int, Inbox], ca: PrivateCA
) -> None:
    port, inbox = starttls_server
    mailer = Mailer(_settings(port, ca, smtp_starttls=True, smtp_username="notifier", smtp_password="wrong"))
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


async def test_implicit_tls(implicit_tls_server: tuple[int, Inbox], ca: PrivateCA) -> None:
    port, inbox = implicit_tls_server
    mailer = Mailer(_settings(port, ca, smtp_tls=True))
    result = await mailer.connection().send("a@collabkare.example", "b@example.com", MESSAGE)
    assert result.attempt is Attempt.SENT, result
    assert [tls for _, tls, _ in inbox.received] == [True]


async def _nothing_sent_unless_unchecked(port: int, inbox: Inbox, mode: str) -> None:
    """Without SMTP_CA_FILE the system's CAs decide: they do not know this relay's, so no email goes out."""
    mailer = Mailer(_settings(port, **{mode: True}))
    result = await mailer.connection().send("a@collabkare.example", "b@example.com", MESSAGE)
    assert result.attempt is Attempt.UNREACHABLE and "CERTIFICATE_VERIFY_FAILED" in result.reply, result
    assert await mailer.reachable() is False and inbox.received == []
    unchecked = Mailer(_settings(port, **{mode: True}, smtp_validate_certs=False))  # the operator's explicit choice
    assert (await unchecked.connection().send("a@collabkare.example", "b@example.com", MESSAGE)).attempt is Attempt.SENT


async def test_starttls_to_a_certificate_nobody_vouches_for_sends_nothing(starttls_server: tuple[int, Inbox]) -> None:
    await _nothing_sent_unless_unchecked(*starttls_server, "smtp_starttls")


async def test_tls_to_a_certificate_nobody_vouches_for_sends_nothing(implicit_tls_server: tuple[int, Inbox]) -> None:
    await _nothing_sent_unless_unchecked(*implicit_tls_server, "smtp_tls")
