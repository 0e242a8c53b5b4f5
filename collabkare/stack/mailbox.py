"""The SMTP catcher's mailbox: one append-only mbox file (mboxrd), every message as it arrived.

One file, not one file per message: creating a file costs the catcher 0.1 to 0.5 ms under load (the
filesystem journal), more than everything else it does for a message; appending costs a few µs.

Each record is a `From ` line, the SMTP envelope as two headers, the arrival time, then the message bytes
exactly as received (CRLF line ends), a line starting with `From ` quoted with one more `>` (mboxrd), and
a blank line. Any mail client opens the file; `read_caught` gives the messages back.

A record is appended under an exclusive flock(2) before the catcher replies 250, so whoever learned that a
message was accepted (the notifier recorded it `sent`) finds it in the file, and a reader (who takes a shared
lock) never sees half a record. An empty message comes back as a blank line: the record needs its line end.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import fcntl
import os
import re
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import BinaryIO

_SEPARATOR = re.compile(rb"^From [^\n]*\n", re.MULTILINE)
_QUOTED = re.compile(rb"^>(>*From )", re.MULTILINE)
_TO_QUOTE = re.compile(rb"^(>*From )", re.MULTILINE)


def record(sender: str, recipients: list[str], content: bytes, now: float) -> bytes:
    """One mbox record: the message, its envelope and the time it was caught (epoch seconds, to the µs)."""
    caught_at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    # SMTP lets a quoted local part carry a bare CR: it must not end the `From ` line or a header early.
    sender, recipients = _one_line(sender), [_one_line(r) for r in recipients]
    head = (
        f"From {sender or 'MAILER-DAEMON'} {time.asctime(time.gmtime(now))}\r\n"
        f"X-Envelope-From: {sender}\r\nX-Envelope-To: {', '.join(recipients)}\r\nX-Caught-At: {caught_at}\r\n"
    ).encode()
    if b"From " in content:
        content = _TO_QUOTE.sub(rb">\1", content)
    ending = b"\r\n" if content.endswith(b"\n") else b"\r\n\r\n"
    return head + content + ending


def _one_line(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ") if "\r" in value or "\n" in value else value


class Spool:
    """The writing end, kept open; reopened when someone deletes or moves the file (or its folder) to empty it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def append(self, sender: str, recipients: list[str], content: bytes) -> None:
        fd = self._open()
        data = memoryview(record(sender, recipients, content, time.time()))
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            start = os.fstat(fd).st_size  # where this record begins (appends go to the end, under the lock)
            try:
                while data:
                    data = data[os.write(fd, data) :]
            except OSError:
                # A full disk: no half record stays behind to be read as an email (the caller tells the client).
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _open(self) -> int:
        if self._fd is not None and _same_file(os.fstat(self._fd), self.path):
            return self._fd
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return self._fd


def _same_file(held: os.stat_result, path: Path) -> bool:
    """Whether `path` still names the open file: not once it was deleted, or moved aside (`mv mail.mbox old.mbox`)."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino)


def read_raw(path: Path) -> list[bytes]:
    """Every message caught so far, oldest first, as received with the X-Envelope-* and X-Caught-At headers."""
    with _locked(path) as file:
        data = file.read() if file else b""
    records = _SEPARATOR.split(data)[1:]
    return [_QUOTED.sub(rb"\1", raw[:-2] if raw.endswith(b"\r\n\r\n") else raw) for raw in records]


def read_caught(path: Path, since: int = 0) -> list[EmailMessage]:
    """Every message caught so far, oldest first, from the `since`-th on (X-Envelope-From/To: the envelope)."""
    return [parse(raw) for raw in read_raw(path)[since:]]


def parse(raw: bytes) -> EmailMessage:
    """One record of `read_raw` as an EmailMessage."""
    return email.parser.BytesParser(_class=EmailMessage, policy=email.policy.default).parsebytes(raw)


def count(path: Path) -> int:
    """How many messages the file holds, read a MiB at a time (a line starting `From ` is a separator)."""
    total, tail = 0, b"\n"  # as if a line ended just before the file: its first line is a separator too
    with _locked(path) as file:
        while file and (chunk := file.read(1 << 20)):
            data = tail + chunk
            total += data.count(b"\nFrom ")
            tail = data[-5:]  # shorter than the pattern: a match is counted once, in the chunk it ends in
    return total


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[BinaryIO | None]:
    """The file open for reading under a shared lock (the catcher appends under an exclusive one)."""
    try:
        file = path.open("rb")
    except FileNotFoundError:
        yield None
        return
    with file:
        fcntl.flock(file, fcntl.LOCK_SH)
        yield file


def empty(path: Path) -> None:
    """Forget every caught message; the catcher starts a new file with its next one."""
    path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    """`python -m collabkare.stack.mailbox [FILE]`: one line per caught message (default: the local stack's)."""
    import argparse

    from collabkare.stack.settings_file import default_workdir

    parser = argparse.ArgumentParser(prog="python -m collabkare.stack.mailbox", description=main.__doc__)
    parser.add_argument("file", nargs="?", type=Path, default=default_workdir() / "mail.mbox")
    path = parser.parse_args(argv).file
    if not path.exists() and not (path.parent / "stack.env").exists():
        # No stack runs there: most often COLLABKARE_STACK_DIR was given to `make up` and not exported here.
        hint = "export COLLABKARE_STACK_DIR as make up was given it"
        print(f"no stack runs in {path.parent} (no stack.env): {hint}", file=sys.stderr)
        raise SystemExit(1)
    messages = read_caught(path)
    for message in messages:
        print(f"{message['X-Caught-At']}  to {message['To']!s:<32}  {message['Subject']}")
        if token := accept_token(message):
            print(f"    invite token: {token}")
    print(f"{len(messages)} message(s) in {path}")


_ACCEPT_TOKEN = re.compile(r"/invites/accept\?token=([A-Za-z0-9_-]+)")


def accept_token(message: EmailMessage) -> str | None:
    """The token of an invite's accept link, decoded from the text part (the raw file holds it quoted-printable,
    with `=3D` for `=` and soft line breaks): what `POST /v1/invites/accept` takes."""
    body = message.get_body(("plain",))
    found = _ACCEPT_TOKEN.search(body.get_content()) if isinstance(body, EmailMessage) else None
    return found.group(1) if found else None


if __name__ == "__main__":
    main()
