"""An SMTP catcher appending every message to one mbox file: the local mailbox, a benchmark sink, fault drills.

Run as `python -m collabkare.stack.smtp_catcher --host 127.0.0.1 --port N --mbox FILE [--faults FILE]`;
`collabkare.stack.mailbox` reads the file back.
The faults file is JSON, reread whenever it changes:
    {"tempfail_count": 3, "tempfail_code": 421, "reject_recipients": ["x@example.com"]}
answers the next 3 DATA commands with 421 (or 451, connection kept) and RCPT TO x@example.com with 550.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from collabkare.stack.mailbox import Spool
from collabkare.stack.managed import ManagedServer
from collabkare.stack.ports import HOST, ensure_port_free
from collabkare.stack.processes import Supervisor

NAME = "smtp"


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


class SpoolHandler:
    """aiosmtpd handler: applies the fault rules, then appends each accepted message to the mbox file."""

    def __init__(self, spool: Spool, faults: FaultFile) -> None:
        self.spool = spool
        self.faults = faults

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        """aiosmtpd's EHLO reply, offering PIPELINING (RFC 2920) as every mainstream server does: aiosmtpd
        already reads pipelined commands in order, it just never said so."""
        session.host_name = hostname  # what aiosmtpd does itself when no handler takes EHLO
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

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
        try:
            self.spool.append(envelope.mail_from, envelope.rcpt_tos, envelope.original_content)
        except OSError as error:
            # Not stored: a temporary failure, as a real relay answers (aiosmtpd's own "500 Error" is permanent, and
            # the notifier rightly gave up on every email while the disk was full).
            return f"452 4.3.1 Insufficient system storage ({os.strerror(error.errno or 0)})"
        return "250 2.0.0 OK stored"


async def serve(host: str, port: int, mbox: Path, faults_path: Path | None) -> None:
    """Accept mail until SIGTERM or SIGINT."""
    from collabkare.stack.smtp_protocol import CatcherSMTP

    spool = Spool(mbox)
    handler = SpoolHandler(spool, FaultFile(faults_path))
    loop = asyncio.get_running_loop()
    # An explicit hostname: aiosmtpd would otherwise resolve our FQDN for every connection.
    server = await loop.create_server(
        lambda: CatcherSMTP(handler, hostname="collabkare-smtp-catcher", enable_SMTPUTF8=True), host, port
    )
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    print(
        f"smtp_catcher: listening on {host}:{port}, appending to {mbox}, faults from {faults_path}",
        flush=True,
    )
    await stopping.wait()
    server.close()
    spool.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m collabkare.stack.smtp_catcher")
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mbox", type=Path, required=True, help="the mbox file messages are appended to")
    parser.add_argument("--faults", type=Path, help="JSON fault rules (default: smtp-faults.json beside the mbox)")
    args = parser.parse_args(argv)
    served = serve(args.host, args.port, args.mbox, args.faults or args.mbox.parent / "smtp-faults.json")
    try:
        import uvloop  # half the event loop's CPU per message; not on Windows
    except ImportError:
        asyncio.run(served)
    else:
        uvloop.run(served)


class EmbeddedSmtp(ManagedServer):
    """The catcher as a supervised child process on 127.0.0.1:`port`, appending to the mbox file `mailbox`."""

    name = NAME
    host = HOST

    def __init__(
        self,
        port: int,
        mailbox: Path,
        *,
        faults_path: Path | None = None,
        supervisor: Supervisor | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.port = port
        self.mailbox = mailbox.resolve()
        self.faults_path = faults_path or self.mailbox.parent / "smtp-faults.json"
        self.supervisor = supervisor or Supervisor(self.mailbox.parent / "logs")
        self.startup_timeout = startup_timeout

    def start(self, *, wait: bool = True) -> None:
        """Launch the catcher; with wait=False call wait_ready() later (it starts in parallel meanwhile)."""
        ensure_port_free(self.port, "SMTP catcher")
        self.mailbox.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "collabkare.stack.smtp_catcher", "--host", HOST, "--port", str(self.port)]
        command += ["--mbox", str(self.mailbox), "--faults", str(self.faults_path)]
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


if __name__ == "__main__":
    main()
