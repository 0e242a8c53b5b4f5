"""An SMTP catcher keeping each message as an .eml file: the local mailbox, a benchmark sink, fault drills.

Run as `python -m collabkare.stack.smtp_catcher --host 127.0.0.1 --port N --dir DIR [--faults FILE]`.
The faults file is JSON, reread whenever it changes:
    {"tempfail_count": 3, "tempfail_code": 421, "reject_recipients": ["x@example.com"]}
answers the next 3 DATA commands with 421 (or 451, connection kept) and RCPT TO x@example.com with 550.
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import email.policy
import json
import os
import re
import signal
import socket
import sys
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from collabkare.stack.managed import ManagedServer
from collabkare.stack.ports import HOST, ensure_port_free
from collabkare.stack.processes import Supervisor

NAME = "smtp"
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*<?([^>\r\n]*)", re.IGNORECASE | re.MULTILINE)
_SIMPLE_ADDRESS = re.compile(r"\s*<([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+)>(.*)", re.DOTALL)
_UNSAFE = re.compile(rb"[^A-Za-z0-9._@+=-]")


class FaultFile:
    """The fault rules, reread only when the file's identity or mtime changes (one stat per check)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self.tempfail_left = 0
        self.tempfail_code = 421
        self.rejected: frozenset[str] = frozenset()

    def refresh(self) -> None:
        try:
            stat = os.stat(self.path) if self.path else None
        except FileNotFoundError:
            stat = None
        seen = (stat.st_mtime_ns, stat.st_ino, stat.st_size) if stat else None
        if seen == self._seen:
            return
        self._seen = seen
        # Rewriting the file re-arms the count, so a test can ask for "the next N" again.
        self.tempfail_left, self.tempfail_code, self.rejected = 0, 421, frozenset()
        if self.path is None or stat is None:
            return
        try:
            rules = json.loads(self.path.read_bytes())
            self.tempfail_left = int(rules.get("tempfail_count", 0))
            self.tempfail_code = int(rules.get("tempfail_code", 421))
            self.rejected = frozenset(address.lower() for address in rules.get("reject_recipients", []))
        except (OSError, ValueError, TypeError, AttributeError) as error:
            print(f"smtp_catcher: ignoring faults file {self.path}: {error!r}", file=sys.stderr, flush=True)


class MaildirHandler:
    """aiosmtpd handler: applies the fault rules, then writes each accepted message to its own file."""

    def __init__(self, maildir: Path, faults: FaultFile) -> None:
        self.maildir = maildir
        self.faults = faults
        self._sequence = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        self.faults.refresh()
        if address.lower() in self.faults.rejected:
            return f"550 5.1.1 <{address}>: recipient rejected (fault drill)"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.faults.refresh()
        if self.faults.tempfail_left > 0:
            self.faults.tempfail_left -= 1
            if self.faults.tempfail_code == 421:
                # 421 means "closing the channel": close once the reply has been written.
                asyncio.get_running_loop().call_soon(server.transport.close)
            return f"{self.faults.tempfail_code} 4.3.2 try again later (fault drill)"
        self._store(envelope.mail_from, envelope.rcpt_tos, envelope.original_content)
        return "250 2.0.0 OK stored"

    def _store(self, sender: str, recipients: list[str], content: bytes) -> None:
        now = time.time()
        self._sequence += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
        name = f"{stamp}-{self._sequence:08d}-{_safe_message_id(content)}.eml"
        envelope = f"X-Envelope-From: {sender}\r\nX-Envelope-To: {', '.join(recipients)}\r\n".encode()
        # Written under a dot-name and renamed, so that a reader never sees half a message.
        partial = self.maildir / f".{name}.part"
        try:
            file = partial.open("wb")
        except FileNotFoundError:  # someone emptied the mailbox by deleting the directory
            self.maildir.mkdir(parents=True, exist_ok=True)
            file = partial.open("wb")
        with file:
            file.write(envelope + content)
        partial.rename(self.maildir / name)


def _safe_message_id(content: bytes) -> str:
    end = content.find(b"\r\n\r\n")
    found = _MESSAGE_ID.search(content, 0, end if end >= 0 else len(content))
    value = _UNSAFE.sub(b"_", found.group(1).strip())[:80] if found else b""
    return value.decode() or "no-message-id"


def _smtp_class() -> type:
    from aiosmtpd.smtp import SMTP

    class FastSMTP(SMTP):
        # aiosmtpd parses every MAIL FROM and RCPT TO address with the e-mail header parser and builds a
        # typing.Protocol class per call: most of its CPU per message. Plain <local@domain> needs a regex.
        def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
            simple = _SIMPLE_ADDRESS.match(arg)
            return (simple[1], simple[2]) if simple else super()._getaddr(arg)

    return FastSMTP


async def serve(host: str, port: int, maildir: Path, faults_path: Path | None) -> None:
    """Accept mail until SIGTERM or SIGINT."""
    smtp_class = _smtp_class()
    handler = MaildirHandler(maildir, FaultFile(faults_path))
    loop = asyncio.get_running_loop()
    # An explicit hostname: aiosmtpd would otherwise resolve our FQDN for every connection.
    server = await loop.create_server(
        lambda: smtp_class(handler, hostname="collabkare-smtp-catcher", enable_SMTPUTF8=True), host, port
    )
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    print(
        f"smtp_catcher: listening on {host}:{port}, writing to {maildir}, faults from {faults_path}",
        flush=True,
    )
    await stopping.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m collabkare.stack.smtp_catcher")
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="where .eml files go")
    parser.add_argument("--faults", type=Path, help="JSON fault rules (default: DIR/../smtp-faults.json)")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args.host, args.port, args.dir, args.faults or args.dir.parent / "smtp-faults.json"))


class EmbeddedSmtp(ManagedServer):
    """The catcher as a supervised child process on 127.0.0.1:`port`, writing into `maildir`."""

    name = NAME
    host = HOST

    def __init__(
        self,
        port: int,
        maildir: Path,
        *,
        faults_path: Path | None = None,
        supervisor: Supervisor | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.port = port
        self.maildir = maildir.resolve()
        self.faults_path = faults_path or self.maildir.parent / "smtp-faults.json"
        self.supervisor = supervisor or Supervisor(self.maildir.parent / "logs")
        self.startup_timeout = startup_timeout

    def start(self, *, wait: bool = True) -> None:
        """Launch the catcher; with wait=False call wait_ready() later (it starts in parallel meanwhile)."""
        ensure_port_free(self.port, "SMTP catcher")
        self.maildir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "collabkare.stack.smtp_catcher", "--host", HOST, "--port", str(self.port)]
        command += ["--dir", str(self.maildir), "--faults", str(self.faults_path)]
        # The child must import this package even when it is not installed (a plain checkout).
        root = str(Path(__file__).resolve().parents[2])
        python_path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        self.supervisor.start(NAME, command, env={"PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1"})
        if wait:
            self.wait_ready()

    def set_faults(
        self, *, tempfail_count: int = 0, tempfail_code: int = 421, reject_recipients: list[str] | None = None
    ) -> None:
        """Replace the fault rules; the catcher applies them from the next command it receives."""
        rules: dict[str, Any] = {"tempfail_count": tempfail_count, "tempfail_code": tempfail_code}
        rules["reject_recipients"] = reject_recipients or []
        partial = self.faults_path.with_name(f".{self.faults_path.name}.part")
        partial.write_text(json.dumps(rules))
        partial.replace(self.faults_path)

    def clear_faults(self) -> None:
        self.faults_path.unlink(missing_ok=True)

    def wait_ready(self) -> None:
        """Block until the catcher greets: after start(wait=False), once the other servers are launched."""
        self._wait_ready()

    def _answers(self) -> bool:
        with socket.create_connection((HOST, self.port), timeout=1) as connection:
            return connection.recv(64).startswith(b"220")


def read_caught(maildir: Path) -> list[EmailMessage]:
    """Every message caught so far, oldest first (X-Envelope-From/To carry the SMTP envelope)."""
    if not maildir.is_dir():
        return []
    parse = email.parser.BytesParser(_class=EmailMessage, policy=email.policy.default)
    return [parse.parsebytes(path.read_bytes()) for path in sorted(maildir.glob("*.eml"))]


if __name__ == "__main__":
    main()
