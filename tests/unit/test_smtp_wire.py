"""The notifier's SMTP hot path (services/notifier/smtp_wire.py) against real servers on loopback sockets.

A scripted server shows what arrives on the wire (pipelined or one command at a time) and answers what a test
needs; the SMTP catcher (aiosmtpd underneath) shows the stored bytes. Reply parsing is also checked on its own
with every way TCP can cut the replies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collabkare.stack import mailbox
from collabkare.stack.smtp_catcher import FaultFile, SpoolHandler
from collabkare.stack.smtp_protocol import CatcherSMTP
from services.notifier.domain import Attempt
from services.notifier.mailer import Mailer
from services.notifier.smtp_wire import Wire, data_lines
from services.runtime.text import unsendable_character
from tests.integration.notifier_harness import smtp_settings

MESSAGE = b"From: a@collabkare.example\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"
SENDER = "notices@collabkare.example"


class Scripted:
    """A tiny SMTP server that records what arrives on the wire and answers as a test scripts it.

    `answer(line)` overrides the reply to a command (None: the usual one, which follows the transaction's
    state as a real server's does). Offering PIPELINING, it reads on after MAIL until it holds the DATA line
    before answering any of them, as RFC 2920 allows: `batched` records whether they all came at once (the
    wait is bounded). Without it, `sequential` records that nothing else was waiting when it answered.
    """

    def __init__(
        self,
        *,
        pipelining: bool,
        answer: Callable[[bytes], bytes | None] = lambda line: None,
        stall: bool = False,
        smtputf8: bool = False,
    ) -> None:
        self.pipelining = pipelining
        self.smtputf8 = smtputf8
        self.answer = answer
        self.stall = stall  # never answer a message
        self.lines: list[bytes] = []
        self.messages: list[bytes] = []
        self.batched: list[bool] = []
        self.sequential: list[bool] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        writer.write(b"220 scripted ESMTP\r\n")
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await self._session(reader, writer)
        writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mail = recipients = False
        while line := await reader.readline():
            batch = [line]
            if line[:4].upper() == b"MAIL" and self.pipelining:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        while (more := await reader.readline()) and more[:4].upper() != b"DATA":
                            batch.append(more)
                        batch.append(more)
                self.batched.append(len(batch) == 3)
            else:
                self.sequential.append(not reader._buffer)
            for command in batch:
                self.lines.append(command)
                verb = command[:4].upper()
                if verb == b"EHLO":
                    offer = (b"250-PIPELINING\r\n" if self.pipelining else b"") + (
                        b"250-SMTPUTF8\r\n" if self.smtputf8 else b""
                    )
                    writer.write(b"250-scripted\r\n" + offer + b"250 OK\r\n")
                    continue
                usual = {
                    b"MAIL": b"250 2.1.0 OK",
                    b"RCPT": b"250 2.1.5 OK" if mail else b"503 5.5.1 need MAIL",
                    b"DATA": b"354 go ahead" if recipients else b"554 5.5.1 no valid recipients",
                    b"QUIT": b"221 bye",
                }.get(verb, b"250 OK")
                reply = self.answer(command) or usual
                mail = (mail or (verb == b"MAIL" and reply[:1] == b"2")) and verb != b"RSET"
                recipients = (recipients or (verb == b"RCPT" and reply[:1] == b"2")) and verb not in (b"RSET", b"MAIL")
                writer.write(reply + b"\r\n")
                if reply.startswith((b"421", b"221")):
                    return
                if verb == b"DATA" and reply.startswith(b"354"):
                    self.messages.append(await reader.readuntil(b"\r\n.\r\n"))
                    if self.stall:
                        await asyncio.Event().wait()
                    writer.write(b"250 2.0.0 queued\r\n")
                    mail = recipients = False


@asynccontextmanager
async def serving(server: Scripted) -> AsyncIterator[int]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()


async def _send(port: int, *recipients: str, message: bytes = MESSAGE, **settings: Any) -> list[Any]:
    mailer = Mailer(smtp_settings(port, **settings))
    connection = mailer.connection()
    try:
        async with asyncio.timeout(20):
            return [await connection.send(SENDER, recipient, message) for recipient in recipients]
    finally:
        await connection.quit()


async def test_pipelines_mail_rcpt_and_data_when_the_server_offers_it() -> None:
    server = Scripted(pipelining=True)
    async with serving(server) as port:
        results = await _send(port, "ann@example.com", "bob@example.com")
    assert [r.attempt for r in results] == [Attempt.SENT, Attempt.SENT]
    assert results[0].reply == "250 2.0.0 queued"
    assert server.batched == [True, True], "MAIL, RCPT and DATA arrive before the server answers any of them"
    assert len(server.messages) == 2 and server.connections == 1


async def test_one_command_at_a_time_when_the_server_does_not_offer_pipelining() -> None:
    server = Scripted(pipelining=False)
    async with serving(server) as port:
        results = await _send(port, "ann@example.com", "bob@example.com")
    assert [r.attempt for r in results] == [Attempt.SENT, Attempt.SENT]
    assert server.sequential and all(server.sequential), "no command was written before the previous reply"
    assert [line.split(b":")[0] for line in server.lines[1:4]] == [b"MAIL FROM", b"RCPT TO", b"DATA\r\n"]
    assert len(server.messages) == 2


@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_refused_recipient_is_permanent_and_the_connection_carries_the_next_message(pipelining: bool) -> None:
    def answer(line: bytes) -> bytes | None:
        if line.startswith(b"RCPT TO:<gone@"):
            return b"550 5.1.1 <gone@example.com>: no such user"
        return None

    server = Scripted(pipelining=pipelining, answer=answer)
    async with serving(server) as port:
        gone, ann = await _send(port, "gone@example.com", "ann@example.com")
    assert (gone.attempt, gone.reply) == (Attempt.PERMANENT, "550 5.1.1 <gone@example.com>: no such user")
    assert ann.attempt is Attempt.SENT
    assert server.connections == 1 and b"RSET\r\n" in server.lines
    assert len(server.messages) == 1


async def test_a_temporary_refusal_is_transient() -> None:
    server = Scripted(pipelining=True, answer=lambda line: b"451 4.3.0 try later" if line.startswith(b"MAIL") else None)
    async with serving(server) as port:
        (result,) = await _send(port, "ann@example.com")
    assert (result.attempt, result.reply) == (Attempt.TRANSIENT, "451 4.3.0 try later")
    assert server.messages == []


@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_permanent_refusal_of_our_sender_is_of_us_not_of_the_message(pipelining: bool) -> None:
    """A review: "553 sender address rejected" (an account suspended, a quota) was taken for the message's refusal,
    so the whole backlog ended `error` in seconds. Retried as an unreachable server is, attempts not counted; a
    MAIL FROM asking for SMTPUTF8 (this message's recipient) is still this message's."""

    def answer(line: bytes) -> bytes | None:
        return b"553 5.7.1 sender address rejected: account suspended" if line.startswith(b"MAIL") else None

    server = Scripted(pipelining=pipelining, answer=answer, smtputf8=True)
    async with serving(server) as port:
        ours, utf8 = await _send(port, "ann@example.com", "josé@example.com")
    assert (ours.attempt, ours.reply) == (Attempt.UNREACHABLE, "553 5.7.1 sender address rejected: account suspended")
    assert utf8.attempt is Attempt.PERMANENT
    assert server.messages == []
    assert server.connections == 2 and b"RSET\r\n" not in server.lines[:4], "closed, not reset: a new session"


async def test_421_closes_and_the_next_message_goes_over_a_new_connection() -> None:
    refusals = iter([b"421 4.3.2 shutting down"])

    def answer(line: bytes) -> bytes | None:
        return next(refusals, None) if line.startswith(b"MAIL") else None

    server = Scripted(pipelining=True, answer=answer)
    async with serving(server) as port:
        first, second = await _send(port, "ann@example.com", "bob@example.com")
    assert (first.attempt, first.reply) == (Attempt.TRANSIENT, "421 4.3.2 shutting down")
    assert second.attempt is Attempt.SENT
    assert server.connections == 2 and len(server.messages) == 1


async def test_data_accepted_after_a_refused_recipient_sends_no_message() -> None:
    """A server breaking RFC 2920 (354 with no valid recipient): the connection is dropped, nothing is sent."""

    def answer(line: bytes) -> bytes | None:
        return {b"RCPT TO:<gone": b"550 5.1.1 no", b"DATA": b"354 go ahead"}.get(line[:13].rstrip(b"\r\n"))

    server = Scripted(pipelining=True, answer=answer)
    async with serving(server) as port:
        first, second = await _send(port, "gone@example.com", "ann@example.com")
    assert (first.attempt, first.reply) == (Attempt.PERMANENT, "550 5.1.1 no")
    assert second.attempt is Attempt.SENT
    assert server.connections == 2
    assert len(server.messages) == 1 and b"ann@example.com" not in server.messages[0]  # only the second message


async def test_a_server_that_never_answers_the_message_times_out_as_transient() -> None:
    server = Scripted(pipelining=True, stall=True)
    async with serving(server) as port:
        (result,) = await _send(port, "ann@example.com", smtp_timeout_seconds=0.5)
    assert result.attempt is Attempt.TRANSIENT and "Timeout" in result.reply, result


async def test_an_address_that_could_inject_a_command_is_refused_before_anything_is_written() -> None:
    server = Scripted(pipelining=True)
    async with serving(server) as port:
        results = await _send(port, "ann@example.com>\r\nRCPT TO:<evil@example.com", "b\u00e9@example.com")
    assert [r.attempt for r in results] == [Attempt.PERMANENT, Attempt.PERMANENT]
    assert all(r.reply.startswith("invalid address") for r in results)
    assert not any(b"evil" in line for line in server.lines) and server.messages == []


async def test_a_utf8_mailbox_goes_over_smtputf8_and_only_to_a_server_offering_it() -> None:
    offering, refusing = Scripted(pipelining=True, smtputf8=True), Scripted(pipelining=True)
    async with serving(offering) as port:
        (sent,) = await _send(port, "josé@example.com")
    async with serving(refusing) as port:
        (refused,) = await _send(port, "josé@example.com")
    assert sent.attempt is Attempt.SENT
    assert offering.lines[1:3] == [
        f"MAIL FROM:<{SENDER}> SMTPUTF8\r\n".encode(),
        "RCPT TO:<josé@example.com>\r\n".encode(),
    ]
    assert refused.attempt is Attempt.PERMANENT and "does not offer SMTPUTF8" in refused.reply
    assert [line[:4] for line in refusing.lines] == [b"EHLO", b"QUIT"], "nothing of the transaction was written"


async def test_a_reply_sent_while_idle_makes_the_next_message_reconnect() -> None:
    """An idle-timeout 421 arrives between messages: it must not be taken for the next MAIL's reply."""
    server = Scripted(pipelining=True)
    async with serving(server) as port:
        connection = Mailer(smtp_settings(port)).connection()
        try:
            async with asyncio.timeout(20):
                assert (await connection.send(SENDER, "ann@example.com", MESSAGE)).attempt is Attempt.SENT
                server.writers[0].write(b"421 4.4.2 idle too long\r\n")  # and the connection stays open
                while connection._wire is not None and connection._wire.usable:  # until it has arrived
                    await asyncio.sleep(0.01)
                assert (await connection.send(SENDER, "bob@example.com", MESSAGE)).attempt is Attempt.SENT
        finally:
            await connection.quit()
    assert server.connections == 2 and len(server.messages) == 2


async def test_the_catcher_stores_pipelined_messages_dot_stuffing_undone(tmp_path: Path) -> None:
    box = tmp_path / "mail.mbox"
    handler = SpoolHandler(mailbox.Spool(box), FaultFile(None))
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: CatcherSMTP(handler, hostname="catcher"), "127.0.0.1", 0)
    messages = [
        MESSAGE,
        b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nend",  # a lone dot line, no final CRLF
        b"Subject: bare\nline feeds\n",
    ]
    try:
        connection = Mailer(smtp_settings(listener.sockets[0].getsockname()[1])).connection()
        async with asyncio.timeout(20):
            results = [await connection.send(SENDER, f"r{i}@example.com", m) for i, m in enumerate(messages)]
        await connection.quit()
    finally:
        listener.close()
    assert [r.attempt for r in results] == [Attempt.SENT] * 3
    stored = mailbox.read_raw(box)  # each record: the catcher's X-Envelope-* headers, then the bytes received
    expected = [
        MESSAGE,
        b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nend\r\n",
        b"Subject: bare\r\nline feeds\r\n",
    ]
    assert len(stored) == 3
    for record, message in zip(stored, expected, strict=True):
        assert record.endswith(b"\r\n" + message), (record, message)


def test_data_lines_stuff_dots_and_end_with_the_lone_dot() -> None:
    assert data_lines(b".a\r\nb\r\n.\r\n") == b"..a\r\nb\r\n..\r\n.\r\n"
    assert data_lines(b"a\nb") == b"a\r\nb\r\n.\r\n"
    assert data_lines(b"a\rb\r\n") == b"a\r\nb\r\n.\r\n"


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.protocol: Any = None

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def is_closing(self) -> bool:
        return self.closed

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def abort(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True


_LINE_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.strip)
_REPLY = st.tuples(st.integers(200, 599), st.lists(_LINE_TEXT, min_size=1, max_size=4))


@given(replies=st.lists(_REPLY, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 400), max_size=12))
@settings(max_examples=200, deadline=None)
def test_replies_are_parsed_however_tcp_cuts_them(replies: list[tuple[int, list[str]]], cuts: list[int]) -> None:
    wire_bytes = b"".join(
        b"".join(f"{code}{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode() for i, line in enumerate(lines))
        for code, lines in replies
    )
    wire = Wire(_Transport(), pipelining=True)
    start = 0
    for cut in sorted({min(c, len(wire_bytes)) for c in cuts} | {len(wire_bytes)}):
        wire.data_received(wire_bytes[start:cut])
        start = cut
    parsed = asyncio.run(wire._read(len(replies)))
    assert [(r.code, r.message) for r in parsed] == [(code, "\n".join(lines)) for code, lines in replies]
    assert wire.usable


def test_a_line_that_is_not_a_reply_closes_the_connection() -> None:
    transport = _Transport()
    wire = Wire(transport, pipelining=True)
    wire.data_received(b"HTTP/1.1 400 Bad Request\r\n")
    assert transport.closed and not wire.usable


def test_an_endless_reply_closes_the_connection() -> None:
    transport = _Transport()
    wire = Wire(transport, pipelining=True)
    for _ in range(100):
        wire.data_received(b"250-" + b"x" * 1000 + b"\r\n")
    assert transport.closed


async def test_replies_in_latin1_or_with_a_nul_become_storable_text() -> None:
    """A NUL or an undecodable byte in a reply would fail the whole batch of results PostgreSQL records."""
    answers = {b"RCPT TO:<ann@": b"550 5.1.1 Empf\xe4nger unbekannt", b"RCPT TO:<bob@": b"452 4.2.2 mailbox full\x00"}
    server = Scripted(pipelining=True, answer=lambda line: answers.get(line[:13]))
    async with serving(server) as port:
        ann, bob = await _send(port, "ann@example.com", "bob@example.com")
    assert (ann.attempt, ann.reply) == (Attempt.PERMANENT, "550 5.1.1 Empf\ufffdnger unbekannt")
    assert bob.attempt is Attempt.TRANSIENT and unsendable_character(bob.reply) is None, bob.reply


async def test_a_send_cancelled_mid_transaction_never_lends_its_envelope_to_the_next() -> None:
    """The sender cancels workers at shutdown: replies still owed must not be read as the next message's."""
    server = Scripted(pipelining=True, stall=True)
    async with serving(server) as port:
        connection = Mailer(smtp_settings(port)).connection()
        try:
            async with asyncio.timeout(20):
                first = asyncio.create_task(connection.send(SENDER, "ann@example.com", MESSAGE))
                while not server.messages:  # the message is on the server, its 250 owed for ever
                    await asyncio.sleep(0.01)
                first.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await first
                server.stall = False
                result = await connection.send(SENDER, "bob@example.com", b"Subject: bob\r\n\r\nfor Bob\r\n")
        finally:
            await connection.quit()
    assert result.attempt is Attempt.SENT
    assert server.connections == 2, "the cancelled connection was not reused"
    assert server.messages[-1] == b"Subject: bob\r\n\r\nfor Bob\r\n.\r\n"


async def test_a_2xx_where_a_refusal_or_354_belongs_is_retried_not_counted_as_sent() -> None:
    server = Scripted(pipelining=False, answer=lambda line: b"250 2.0.0 OK" if line.startswith(b"DATA") else None)
    async with serving(server) as port:
        (result,) = await _send(port, "ann@example.com")
    assert (result.attempt, result.reply) == (Attempt.TRANSIENT, "unexpected reply 250 2.0.0 OK")
    assert server.messages == []


async def test_a_malformed_reply_says_so() -> None:
    server = Scripted(pipelining=True, answer=lambda line: b"hello?" if line.startswith(b"MAIL") else None)
    async with serving(server) as port:
        (result,) = await _send(port, "ann@example.com")
    assert result.attempt is Attempt.TRANSIENT and "Malformed SMTP reply line: hello?" in result.reply, result


def test_a_server_talking_to_itself_is_cut_off() -> None:
    transport = _Transport()
    wire = Wire(transport, pipelining=True)
    wire.data_received(b"250 OK\r\n" * 20)
    assert transport.closed and not wire.usable


@contextlib.contextmanager
def serving_elsewhere(server: Scripted) -> Iterator[int]:
    """The scripted server on an event loop of its own, in a thread: it answers while this test's loop is frozen."""
    ready: concurrent.futures.Future[tuple[int, asyncio.AbstractEventLoop, asyncio.Event]] = concurrent.futures.Future()

    async def serve() -> None:
        stop = asyncio.Event()
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        ready.set_result((listener.sockets[0].getsockname()[1], asyncio.get_running_loop(), stop))
        async with listener:
            await stop.wait()
        sessions = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in sessions:
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    port, loop, stop = ready.result(timeout=10)
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


@pytest.mark.parametrize("frozen_after", [b"\r\n.\r\n", b"DATA\r\n"])
async def test_a_process_frozen_past_its_deadline_neither_loses_a_reply_nor_sends_late(frozen_after: bytes) -> None:
    """Found by a fault drill: a notifier frozen 40 s (SIGSTOP, a stalled VM) woke with the server's 250 already in
    its socket and the SMTP deadline due in the same turn of the event loop; the timeout won, the email was recorded
    as failed and sent again. Frozen after the message: its 250 counts. Frozen after DATA: the 354 came too late, so
    the message is not sent at all (a retry sends it once)."""
    server = Scripted(pipelining=True)
    timeout = 0.5
    with serving_elsewhere(server) as port:
        connection = Mailer(smtp_settings(port, smtp_timeout_seconds=timeout)).connection()
        assert await connection.open() is None
        wire = connection._wire
        assert wire is not None
        write = wire._write

        def write_then_freeze(data: bytes, *, replies: int) -> None:
            write(data, replies=replies)
            if data.endswith(frozen_after):
                time.sleep(timeout + 0.5)  # the whole process stops; the server, elsewhere, answers meanwhile

        wire._write = write_then_freeze  # type: ignore[method-assign]
        try:
            result = await connection.send(SENDER, "ann@example.com", MESSAGE)
        finally:
            await connection.quit()
    if frozen_after == b"DATA\r\n":
        assert result.attempt is Attempt.TRANSIENT and server.messages == []
    else:
        assert result.attempt is Attempt.SENT, result
        assert len(server.messages) == 1
