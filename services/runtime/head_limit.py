"""A bound on a request's head (request line and headers): uvicorn's httptools parser has none.

A reviewer sent one 64 MB Authorization header: the service parsed it for 10 s (httptools grows the value a fragment
at a time), grew by 130 MB it never gave back, and only then answered 401; a few at once would have the pod killed for
its memory. Now a head past MAX_HEAD_BYTES is answered 431 and the connection closed, as soon as that much has
arrived. Bodies are bounded elsewhere (middleware.LimitBody).
"""

from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.runtime.logging import get_logger
from services.runtime.problems import MAX_INSTANCE

log = get_logger(__name__)

# Far above any real head (proxies stop at 8-64 KiB; a JWT is a few KiB), and above one read of the event loop, so
# that a read holding the end of one request and the start of the next is never mistaken for a long head.
MAX_HEAD_BYTES = 256 * 1024
LINGER_SECONDS = 2.0
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/problem+json\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


def _problem(url: bytes) -> bytes:
    """The 431's ProblemDetails, its instance the request's path as far as it arrived (cut as every instance is)."""
    path = url.split(b"?", 1)[0][:MAX_INSTANCE].decode("ascii", "replace") or "/"
    problem = {
        "type": "about:blank",
        "title": "Request Header Fields Too Large",
        "status": 431,
        "detail": f"The request line and headers are larger than {MAX_HEAD_BYTES} bytes.",
        "instance": path,
    }
    return json.dumps(problem, separators=(",", ":")).encode()


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop the parser: the head was refused."""


class _OwnRefusal(logging.Filter):
    """uvicorn logs the parser error that stops the parser as "Invalid HTTP request received.": for a head refused
    here that line is noise after the 431's own, so it is dropped while the refusing read is handled."""

    refusing = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.refusing and record.getMessage() == "Invalid HTTP request received.")


_OWN_REFUSAL = _OwnRefusal()
logging.getLogger("uvicorn.error").addFilter(_OWN_REFUSAL)


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, counting what arrives while a request's head is incomplete (so that an
    endless head is refused as it grows), and measuring each complete head (so that one which ended within the
    read that took it past the limit is refused too: such a read was not counted)."""

    _in_head = False
    _head_bytes = 0
    _refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # what the client still sends is read and dropped until the connection closes
        try:
            super().data_received(data)
        finally:
            _OWN_REFUSAL.refusing = False
        if not self._in_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            log.warning("http.head_too_large", received=self._head_bytes, limit=MAX_HEAD_BYTES)
            self._refuse()

    def _refuse(self) -> None:
        """Answer 431 and close gently: closing with the client's bytes unread would reset the connection, and the
        client, still sending, would lose the answer. So our side is shut, the rest read and dropped for a while."""
        self._refused = True
        problem = _problem(self.url)
        self.transport.write(_TOO_LARGE % (len(problem), problem))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, self.transport.close)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        # The request line and each "name: value" line, as received less optional whitespace.
        size = len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > MAX_HEAD_BYTES:
            log.warning("http.head_too_large", received=size, limit=MAX_HEAD_BYTES)
            self._refuse()
            _OWN_REFUSAL.refusing = True
            raise _HeadTooLarge  # httptools stops and hands uvicorn a parser error: its 400 is not sent
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)
