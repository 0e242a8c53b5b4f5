"""SMTP through aiosmtplib: reused connections, a token bucket for the provider's rate, failures as SendResults."""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from email.utils import parseaddr

import aiosmtplib
from aiosmtplib import SMTPResponse

from services.notifier.domain import Attempt, SendResult, classify_reply
from services.notifier.settings import NotifierSettings
from services.notifier.smtp_wire import Wire
from services.runtime.text import UNSENDABLE

_PROBE_TTL_SECONDS = 5.0  # /readyz may be polled every second; the SMTP server need not see each poll
_NOT_AS_CONFIGURED = frozenset({530, 535, 538})  # RFC 4954 / 3207: authentication or TLS required, bad login


class TokenBucket:
    """At most `rate` acquisitions per second on average, `burst` at once; rate 0 means no limit.

    Each caller reserves a token at once (the balance may go negative) and sleeps until the bucket would
    have held it: callers are served in arrival order and nothing spins.
    """

    def __init__(
        self,
        rate: float,
        burst: int = 0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.capacity = float(burst or max(1, math.ceil(rate)))
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._stamp = clock()

    async def acquire(self) -> float:
        """Take one token; returns the seconds waited for it."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1
        if self._tokens >= 0:
            return 0.0
        wait = -self._tokens / self.rate
        try:
            await self._sleep(wait)
        except asyncio.CancelledError:
            self._tokens += 1  # a cancelled caller sends nothing: give its reservation back
            raise
        return wait


class SmtpConnection:
    """One reused connection: connects lazily, reconnects after any failure, never raises on send.

    aiosmtplib connects (TLS, STARTTLS, EHLO, AUTH); `smtp_wire.Wire` then carries the messages, pipelined
    where the server offers PIPELINING.
    """

    def __init__(self, mailer: Mailer) -> None:
        self._mailer = mailer
        self._wire: Wire | None = None

    async def open(self) -> SendResult | None:
        """Connected and ready for a message (None), or why the server cannot be used (UNREACHABLE): so that a
        sender can decide whether to send at the last moment, with only the transaction's deadline still ahead."""
        opened = await self._open()
        return opened if isinstance(opened, SendResult) else None

    async def send(self, sender: str, recipient: str, message: bytes) -> SendResult:
        wire = await self._open()
        if isinstance(wire, SendResult):
            return wire
        # One deadline for the whole transaction, not one per reply.
        deadline = asyncio.get_running_loop().time() + self._mailer.settings.smtp_timeout_seconds
        try:
            accepted, response, verb = await wire.transaction(sender, recipient, message, deadline=deadline)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            # A timeout or a dropped connection: the server may or may not have kept the message.
            self.close()
            return SendResult(Attempt.TRANSIENT, _describe(error))
        except ValueError as error:  # an address no command line can carry
            return SendResult(Attempt.PERMANENT, f"invalid address: {error}")
        if accepted:
            return SendResult(Attempt.SENT, _reply(response.code, response.message))
        # A permanent refusal of our MAIL FROM is of us (the sender address, the account, its quota), not of this
        # message: every email would get it, and the backlog would end `error` in seconds. Unless the command asked
        # for SMTPUTF8, which is this message's (its recipient's address).
        of_us = verb == b"MAIL" and response.code >= 500 and recipient.isascii() and sender.isascii()
        return await self._refused(wire, response, of_us=of_us)

    async def _open(self) -> Wire | SendResult:
        try:
            return await self._connected()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            self.close()
            return SendResult(Attempt.UNREACHABLE, _describe(error))

    async def _connected(self) -> Wire:
        if self._wire is not None and self._wire.usable:
            return self._wire
        self.close()
        smtp = self._mailer.new_client()
        try:
            await smtp.connect()
            if smtp.is_ehlo_or_helo_needed:
                await smtp.ehlo()
            self._wire = Wire.take_over(smtp)
        except BaseException:
            smtp.close()
            raise
        return self._wire

    async def _refused(self, wire: Wire, response: SMTPResponse, *, of_us: bool = False) -> SendResult:
        if of_us:
            # A refusal tied to this session (a limit per connection) is not met again on a new one: no reset.
            self.close()
            return SendResult(Attempt.UNREACHABLE, _reply(response.code, response.message))
        if wire.usable:
            # Reset the envelope so the connection can carry the next message; a failing reset drops it.
            try:
                async with asyncio.timeout(self._mailer.settings.smtp_timeout_seconds):
                    if (await wire.command(b"RSET\r\n")).code != 250:
                        self.close()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                self.close()
        else:
            self.close()
        if 200 <= response.code < 300:
            # A server breaking the protocol (a 250 where DATA needs 354, a 252 to RCPT): nothing was sent.
            return SendResult(Attempt.TRANSIENT, f"unexpected reply {_reply(response.code, response.message)}")
        if response.code in _NOT_AS_CONFIGURED:
            # "Authenticate / STARTTLS first", "bad credentials" (and above: "sender address rejected", "account
            # suspended"): the server refuses us, not this message. Retried like an unreachable server (not counted)
            # instead of failing the whole backlog.
            return SendResult(Attempt.UNREACHABLE, _reply(response.code, response.message))
        return SendResult(classify_reply(response.code), _reply(response.code, response.message))

    def close(self) -> None:
        if self._wire is not None:
            wire, self._wire = self._wire, None
            wire.close()

    async def quit(self, timeout: float = 2.0) -> None:
        if self._wire is not None and self._wire.usable:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    await self._wire.command(b"QUIT\r\n")
        self.close()


class Mailer:
    """The SMTP side of the notifier: its settings, one shared TLS context, the rate limit and a probe."""

    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings
        self.bucket = TokenBucket(settings.smtp_rate_per_second, settings.smtp_rate_burst)
        self.envelope_sender = parseaddr(settings.smtp_from)[1]
        self._tls_context: ssl.SSLContext | None = None
        self._probe: tuple[float, bool] = (-math.inf, False)

    def tls_context(self) -> ssl.SSLContext:
        """Built once: aiosmtplib would otherwise build one per connection (~30 ms of CPU each)."""
        if self._tls_context is None:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.settings.smtp_ca_file)
            if not self.settings.smtp_validate_certs:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._tls_context = context
        return self._tls_context

    def new_client(self, timeout: float | None = None) -> aiosmtplib.SMTP:
        settings = self.settings
        uses_tls = settings.smtp_tls or settings.smtp_starttls
        return aiosmtplib.SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            local_hostname=settings.ehlo_name,  # not socket.getfqdn(), which can block for seconds
            timeout=timeout or settings.smtp_timeout_seconds,
            use_tls=settings.smtp_tls,
            start_tls=settings.smtp_starttls,
            tls_context=self.tls_context() if uses_tls else None,
        )

    def connection(self) -> SmtpConnection:
        return SmtpConnection(self)

    async def reachable(self, timeout: float = 2.0) -> bool:
        """Connect (TLS and login included) and start a transaction for our sender, then reset it.

        At most once per few seconds, bounded in time. MAIL FROM, not NOOP: a server that wants STARTTLS
        or a login first answers NOOP happily and refuses every message.
        """
        checked_at, answer = self._probe
        if time.monotonic() - checked_at < _PROBE_TTL_SECONDS:
            return answer
        smtp = self.new_client(timeout=timeout)
        try:
            async with asyncio.timeout(timeout):
                await smtp.connect()
                answer = (await smtp.mail(self.envelope_sender)).code == 250
                await smtp.rset()
                with contextlib.suppress(aiosmtplib.SMTPException):
                    await smtp.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            answer = False
        finally:
            smtp.close()
        self._probe = (time.monotonic(), answer)
        return answer


def _reply(code: int, message: str) -> str:
    return _storable(f"{code} {' '.join(message.split())}")


def _describe(error: BaseException) -> str:
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return _reply(error.code, error.message)
    return _storable(f"{type(error).__name__}: {error}"[:300])


def _storable(text: str) -> str:
    """A server's words as PostgreSQL can store them: a NUL or an undecodable byte (aiosmtplib keeps those as
    lone surrogates) would fail the whole batch of results being recorded, again and again."""
    return UNSENDABLE.sub("\ufffd", text)
