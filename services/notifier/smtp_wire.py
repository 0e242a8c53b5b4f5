"""The hot path of one SMTP connection: MAIL, RCPT, DATA and the message, pipelined when the server allows it.

aiosmtplib opens the connection (TLS, STARTTLS, EHLO, AUTH: the parts worth a well-kept library); `Wire` then
takes the transport over. aiosmtplib awaits one reply per command and cannot pipeline: its protocol drops a
reply that arrives before the previous one was read. With PIPELINING (RFC 2920, offered by every mainstream
server) a message costs two round trips instead of four: MAIL + RCPT + DATA in one write, then the message.
That halves what each email waits on the network, and the writes and wake-ups on both ends. A mailbox name
that is not ASCII goes with SMTPUTF8 (RFC 6531) where the server offers it, and nowhere else.
"""

from __future__ import annotations

import asyncio
import collections
from typing import cast

import aiosmtplib
from aiosmtplib import SMTPResponse
from aiosmtplib.protocol import normalize_message_line_endings

_MAX_REPLY_BYTES = 32 * 1024  # a reply (with its continuation lines) longer than this is not SMTP
_MAX_QUEUED_REPLIES = 8  # a transaction awaits 3 at most: more is a server talking to itself
_LAST_LOOK_SECONDS = 0.01  # long enough for the event loop to read what the socket holds
_UNSAFE = frozenset(b"<>\x7f" + bytes(range(0x21)))  # in an address these would end or inject a command


class Disconnected(aiosmtplib.SMTPServerDisconnected):
    """The server closed the connection, or it was closed here, before the replies we wait for."""


class Wire(asyncio.Protocol):
    """The protocol of a connection taken over from aiosmtplib: writes commands, parses replies as they come."""

    def __init__(self, transport: asyncio.Transport, *, pipelining: bool, smtputf8: bool = False) -> None:
        self.pipelining = pipelining
        self.smtputf8 = smtputf8  # the server takes UTF-8 mailbox names (RFC 6531)
        self._transport = transport
        self._buffer = bytearray()
        self._replies: collections.deque[SMTPResponse] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lost = False
        self._why = "Connection lost"  # said by Disconnected once the connection is gone
        self._owed = 0  # replies to commands written and not yet read: not usable for a new message until 0
        self._overdue = False  # the current transaction's deadline has passed (its alarm rang)
        transport.set_protocol(self)

    @classmethod
    def take_over(cls, smtp: aiosmtplib.SMTP) -> Wire:
        """The connection of a connected (and, where configured, secured and authenticated) aiosmtplib client;
        that client must not be used afterwards."""
        if smtp.transport is None or smtp.transport.is_closing():
            raise Disconnected("Connection lost")
        return cls(
            cast(asyncio.Transport, smtp.transport),
            pipelining=smtp.supports_extension("pipelining"),
            smtputf8=smtp.supports_extension("smtputf8"),
        )

    @property
    def usable(self) -> bool:
        """Open, no reply still owed (a send cancelled half-way) and none nobody asked for (a server's idle-timeout
        421, say): safe for a new message."""
        lost = self._lost or self._transport.is_closing()
        return not lost and not self._owed and not self._replies and not self._buffer

    # asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            reply = self._take_reply()
            if reply is None:
                break
            self._replies.append(reply)
        if len(self._buffer) > _MAX_REPLY_BYTES or len(self._replies) > _MAX_QUEUED_REPLIES:
            self._give_up("the server sent more than SMTP replies")
            return
        self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self._lost:
            self._why = f"Connection lost: {type(exc).__name__}: {exc}"[:300]
        self._lost = True
        self._wake()

    # Commands

    async def transaction(
        self, sender: str, recipient: str, message: bytes, *, deadline: float
    ) -> tuple[bool, SMTPResponse, bytes]:
        """One message: (True, the 250 to the message, b"") or (False, the first refusal, the verb it answered:
        MAIL, RCPT, DATA, or b"" for the message itself). Raises Disconnected when the
        connection ends first, ValueError for an address no command line can carry, TimeoutError once the event
        loop's clock passes `deadline` with a reply still missing.

        Not asyncio.timeout: a process frozen past its deadline (SIGSTOP, a stalled VM) wakes with the server's
        250 already read and the timer due in the same turn of the loop, and the timer's cancellation won; the
        message was then recorded as failed and sent again. Here a reply that is in counts, and a message whose 354
        came too late is not sent at all."""
        mail_from, rcpt_to = self._address(sender), self._address(recipient)
        utf8 = b" SMTPUTF8" if not (mail_from + rcpt_to).isascii() else b""
        envelope = [b"MAIL FROM:<" + mail_from + b">" + utf8 + b"\r\n", b"RCPT TO:<" + rcpt_to + b">\r\n"]
        self._overdue = False
        alarm = asyncio.get_running_loop().call_at(deadline, self._deadline_passed)
        try:
            return await self._transaction(envelope, message, deadline)
        except BaseException:
            # Cancelled or failed with replies still owed: the next message must not read them as its own.
            if self._owed:
                self.close()
            raise
        finally:
            alarm.cancel()

    async def _transaction(
        self, envelope: list[bytes], message: bytes, deadline: float
    ) -> tuple[bool, SMTPResponse, bytes]:
        expected: list[tuple[int, ...]] = [(250,), (250, 251), (354,)]
        verbs = [b"MAIL", b"RCPT", b"DATA"]
        if self.pipelining:
            self._write(b"".join(envelope) + b"DATA\r\n", replies=3)
            replies = await self._read(3, deadline)
            for reply, codes, verb in zip(replies, expected, verbs, strict=False):
                if reply.code not in codes:
                    if replies[-1].code == 354:
                        # DATA accepted after a refusal (a server breaking RFC 2920): no message may follow.
                        self.close()
                    return False, reply, verb
            if len(replies) < 3:
                raise Disconnected(self._why)
        else:
            for command, codes, verb in zip([*envelope, b"DATA\r\n"], expected, verbs, strict=True):
                reply = await self.command(command, deadline)
                if reply.code not in codes:
                    return False, reply, verb
        if self._past(deadline):
            self.close()  # the server waits for a message in DATA mode: nothing else may follow on this connection
            raise TimeoutError  # the 354 came too late: the message is not sent, so it cannot arrive twice
        reply = await self.command(data_lines(message), deadline)
        return reply.code == 250, reply, b""

    async def command(self, line: bytes, deadline: float | None = None) -> SMTPResponse:
        """Write a command line (CRLF included) and read its one reply."""
        self._write(line, replies=1)
        replies = await self._read(1, deadline)
        if not replies:
            raise Disconnected(self._why)
        return replies[0]

    def close(self) -> None:
        self._transport.close()

    # Internals

    def _address(self, address: str) -> bytes:
        """The address for a command line; ValueError (the caller's "invalid address") when none can carry it."""
        if not address.isascii() and not self.smtputf8:
            raise ValueError("its mailbox name is not ASCII and the SMTP server does not offer SMTPUTF8")
        encoded = address.encode("utf-8", "strict")
        if not encoded or any(byte in _UNSAFE for byte in encoded) or not address.isprintable():
            raise ValueError("the address contains a character an SMTP command cannot carry")
        return encoded

    def _write(self, data: bytes, *, replies: int) -> None:
        if self._lost or self._transport.is_closing():
            raise Disconnected(self._why)
        self._owed += replies
        self._transport.write(data)

    async def _read(self, count: int, deadline: float | None = None) -> list[SMTPResponse]:
        """Up to `count` replies: fewer only when the connection ended first. TimeoutError when the loop's clock
        passes `deadline` before they are all in."""
        loop = asyncio.get_running_loop()
        replies: list[SMTPResponse] = []
        while len(replies) < count:
            if self._replies:
                replies.append(self._replies.popleft())
                self._owed = max(0, self._owed - 1)
            elif self._lost:
                break
            else:
                # Woken by a reply, or by the transaction's alarm at the deadline. Past it already (the process was
                # frozen), one last short look first: the reply may be in the socket, not yet read.
                late = deadline is not None and self._past(deadline)
                self._waiter = loop.create_future()
                look = loop.call_later(_LAST_LOOK_SECONDS, self._wake) if late else None
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                    if look is not None:
                        look.cancel()
                if deadline is not None and not self._replies and not self._lost and self._past(deadline):
                    raise TimeoutError
        return replies

    def _deadline_passed(self) -> None:
        """The transaction's alarm: a read waiting for a reply wakes, finds none, and gives up."""
        self._overdue = True
        self._wake()

    def _past(self, deadline: float) -> bool:
        # The alarm may ring a hair before the clock reads the deadline (the loop's clock resolution).
        return self._overdue or asyncio.get_running_loop().time() >= deadline

    def _give_up(self, why: str) -> None:
        self._why = why
        self._lost = True
        del self._buffer[:]
        self._transport.abort()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _take_reply(self) -> SMTPResponse | None:
        """The first complete reply in the buffer (consumed), or None. Malformed input closes the connection."""
        lines: list[bytes] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end == -1:
                return None
            line = bytes(self._buffer[start:end]).rstrip(b"\r")
            start = end + 1
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                self._give_up(f"Malformed SMTP reply line: {line[:100].decode('ascii', 'replace')}")
                return None
            lines.append(line[4:].strip())
            if line[3:4] != b"-":
                del self._buffer[:start]
                # Replies end up in the database and in logs: undecodable bytes become U+FFFD, not surrogates.
                return SMTPResponse(int(line[:3]), b"\n".join(lines).decode("utf-8", "replace"))


def data_lines(message: bytes) -> bytes:
    """The message as DATA carries it: CRLF line endings, dot-stuffed, ended by the lone dot."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = normalize_message_line_endings(message)  # a bare CR or LF (our renderer writes none)
    elif not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"
