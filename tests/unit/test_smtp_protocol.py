"""The catcher's DATA reader stores and answers exactly what stock aiosmtpd does, over real loopback sockets."""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collabkare.stack.smtp_protocol import RFC_LINE_LIMIT, CatcherSMTP


class Collect:
    def __init__(self) -> None:
        self.stored: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.stored.append(envelope.original_content)
        return "250 2.0.0 stored"


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """One SMTP reply, multi-line or not."""
    lines = [await reader.readline()]
    while lines[-1][3:4] == b"-":
        lines.append(await reader.readline())
    return b"".join(lines)


async def exchange(protocol: type[SMTP], messages: list[bytes], **options: Any) -> tuple[list[bytes], list[bytes]]:
    """Send each message (already dot-stuffed, without the end marker) on one connection: (stored, replies)."""
    handler = Collect()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: protocol(handler, hostname="test", enable_SMTPUTF8=True, **options), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    replies = []
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await _reply(reader)
            writer.write(b"EHLO client\r\n")
            await _reply(reader)
            for message in messages:
                writer.write(b"MAIL FROM:<a@example.com>\r\n")
                await _reply(reader)
                writer.write(b"RCPT TO:<b@example.com>\r\n")
                await _reply(reader)
                writer.write(b"DATA\r\n")
                await _reply(reader)
                writer.write(message + b".\r\n")
                replies.append(await _reply(reader))
            writer.write(b"QUIT\r\n")
            await _reply(reader)
            writer.close()
    finally:
        server.close()
    return handler.stored, replies


def stuffed(lines: list[bytes]) -> bytes:
    """What a client sends for these lines: CRLF after each, a leading period doubled."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


_LINES = st.lists(
    st.one_of(
        st.sampled_from([b"", b".", b"..", b".x", b"x.", b"end.", b" .", b"From me", b"=2E"]),
        st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LINES, min_size=1, max_size=3))
def test_stores_what_aiosmtpd_stores(messages: list[list[bytes]]) -> None:
    raw = [stuffed(lines) for lines in messages]
    ours = asyncio.run(exchange(CatcherSMTP, raw))
    stock = asyncio.run(exchange(SMTP, raw))
    assert ours == stock
    assert ours[0] == [b"".join(line + b"\r\n" for line in lines) for lines in messages]


def test_a_message_larger_than_the_read_limit_arrives_whole() -> None:
    lines = [f"line {i:06d} ".encode() + b"x" * 60 for i in range(4000)] + [b".", b"end."]  # ~290 kB
    stored, replies = asyncio.run(exchange(CatcherSMTP, [stuffed(lines)]))
    assert replies == [b"250 2.0.0 stored\r\n"]
    assert stored == [b"".join(line + b"\r\n" for line in lines)]


def test_limits_answer_like_aiosmtpd_and_the_connection_carries_on() -> None:
    too_long = stuffed([b"a" * RFC_LINE_LIMIT])
    too_big = stuffed([b"b" * 70] * 40)  # 2,880 bytes
    fine = stuffed([b"fine"])
    for protocol in (CatcherSMTP, SMTP):
        stored, replies = asyncio.run(exchange(protocol, [too_long, too_big, fine], data_size_limit=2000))
        assert [r[:3] for r in replies] == [b"500", b"552", b"250"], protocol
        assert stored == [b"fine\r\n"]


def test_the_size_limit_falls_where_aiosmtpd_puts_it() -> None:
    messages = [b"x" * (size - 2) + b"\r\n" for size in range(97, 104)]
    ours = asyncio.run(exchange(CatcherSMTP, messages, data_size_limit=100))
    assert ours == asyncio.run(exchange(SMTP, messages, data_size_limit=100))
    assert [reply[:3] for reply in ours[1]] == [b"250"] * 4 + [b"552"] * 3


def test_help_still_knows_data() -> None:
    async def help_data(protocol: type[SMTP]) -> bytes:
        server = await asyncio.get_running_loop().create_server(lambda: protocol(Collect()), "127.0.0.1", 0)
        try:
            async with asyncio.timeout(10):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
                await _reply(reader)
                writer.write(b"HELP DATA\r\n")
                answer = await _reply(reader)
                writer.close()
                return answer
        finally:
            server.close()

    assert asyncio.run(help_data(CatcherSMTP)) == asyncio.run(help_data(SMTP)) == b"250 Syntax: DATA\r\n"
