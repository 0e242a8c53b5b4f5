"""aiosmtpd's SMTP protocol with the two paths a catcher runs per message made cheap: addresses and DATA.

Imported by the catcher process only (aiosmtpd is not needed to manage the catcher from the outside).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, syntax

_SIMPLE_ADDRESS = re.compile(r"\s*<([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+)>(.*)", re.DOTALL)
RFC_LINE_LIMIT = 1001  # aiosmtpd's: 1,000 characters and the CRLF, give or take its own off-by-one
_END = b"\r\n.\r\n"


class CatcherSMTP(SMTP):
    """aiosmtpd.smtp.SMTP, reading DATA in a few reads instead of one await per line.

    `line_length_limit` is also the StreamReader's limit, and that is its buffer's high-water mark: at
    aiosmtpd's 1,001 bytes a 5 kB message paused and resumed the socket several times and was read line by
    line, half of the catcher's CPU per message. Commands stay bounded by aiosmtpd's command_size_limit;
    DATA lines are held to RFC_LINE_LIMIT here, as aiosmtpd does.
    """

    line_length_limit = 64 * 1024

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd parses every MAIL FROM and RCPT TO address with the e-mail header parser and builds a
        # typing.Protocol class per call: most of its CPU per message. Plain <local@domain> needs a regex.
        simple = _SIMPLE_ADDRESS.match(arg)
        return (simple[1], simple[2]) if simple else super()._getaddr(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # The checks and replies of aiosmtpd 1.4's smtp_DATA, in its order.
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            received = await self._read_data()
        except asyncio.CancelledError:
            self._writer.close()  # the connection was lost in the middle of the message (as aiosmtpd does)
            raise
        except asyncio.IncompleteReadError:
            self._writer.close()
            return
        if received is None:
            await self.push("552 Error: Too much mail data")
        elif max(map(len, received.split(b"\r\n"))) + 2 > RFC_LINE_LIMIT:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
        else:
            # Dot-unstuffing (RFC 5321 4.5.2): a line's leading period is removed.
            content = received.replace(b"\r\n.", b"\r\n")[2:]
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()
            await self.push("250 OK" if status is MISSING else status)
            return
        self._set_post_data_state()

    async def _read_data(self) -> bytes | None:
        """CRLF, then the message as sent up to its end marker; None if it exceeds data_size_limit."""
        reader: Any = self._reader
        limit = self.data_size_limit
        # The CRLF that ended the DATA line: the end marker may be the very first line (an empty message).
        buffer = bytearray(b"\r\n")
        too_much = False
        while not buffer.endswith(_END):
            try:
                buffer += await reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as error:  # 64 kB and no ".\r\n" yet: take them, read on
                buffer += await reader.readexactly(error.consumed)
            if limit and len(buffer) > limit + len(_END):  # the CRLF before the message, the '.\r\n' after
                too_much = True
                del buffer[: -len(_END)]  # only the tail matters now, to find the end marker
        return None if too_much else bytes(buffer[: -len(b".\r\n")])
