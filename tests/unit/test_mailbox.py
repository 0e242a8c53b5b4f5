"""The SMTP catcher's mbox: what is appended is read back byte for byte, however its lines look."""

from __future__ import annotations

import mailbox as stdlib_mailbox
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collabkare.stack import mailbox
from services.notifier.messages import Renderer
from tests.unit.notifier_factories import claimed_delivery

MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nbody\r\n"


def test_a_message_comes_back_with_its_envelope(tmp_path: Path) -> None:
    spool = mailbox.Spool(tmp_path / "mail.mbox")
    spool.append("a@example.com", ["b@example.com", "c@example.com"], MESSAGE)
    spool.close()
    [raw] = mailbox.read_raw(tmp_path / "mail.mbox")
    assert raw.startswith(b"X-Envelope-From: a@example.com\r\nX-Envelope-To: b@example.com, c@example.com\r\n")
    assert raw.endswith(b"\r\n" + MESSAGE)
    [message] = mailbox.read_caught(tmp_path / "mail.mbox")
    assert (message["Subject"], message["X-Envelope-To"]) == ("hi", "b@example.com, c@example.com")
    assert message["X-Caught-At"].endswith("Z")
    # Live invite links and patients' details: readable by the stack's own user only (umask or not).
    assert (tmp_path / "mail.mbox").stat().st_mode & 0o077 == 0


_LINE = st.sampled_from([b"From here on", b">From quoted", b">>From twice", b"", b".", b"plain", b"From"])


@given(st.lists(st.lists(_LINE, max_size=6).map(lambda lines: b"".join(line + b"\r\n" for line in lines)), max_size=4))
def test_bodies_with_from_lines_round_trip(bodies: list[bytes]) -> None:
    """mboxrd: a body line starting with `>*From ` gets one more `>` on disk and loses it when read."""
    with tempfile.TemporaryDirectory() as directory:  # tmp_path is shared by every example of one test
        path = Path(directory) / "mail.mbox"
        spool = mailbox.Spool(path)
        for body in bodies:
            spool.append("a@example.com", ["b@example.com"], MESSAGE + body)
        spool.close()
        assert mailbox.count(path) == len(bodies)
        assert [raw.split(b"\r\n", 3)[3] for raw in mailbox.read_raw(path)] == [MESSAGE + body for body in bodies]


def test_the_standard_library_reads_it_too(tmp_path: Path) -> None:
    spool = mailbox.Spool(tmp_path / "mail.mbox")
    spool.append("a@example.com", ["b@example.com"], MESSAGE.replace(b"body", b"From the practice"))
    spool.append("", ["c@example.com"], MESSAGE)
    spool.close()
    messages = list(stdlib_mailbox.mbox(tmp_path / "mail.mbox"))
    assert [m["X-Envelope-To"] for m in messages] == ["b@example.com", "c@example.com"]
    assert ">From the practice" in messages[0].get_payload()  # mboxrd quoting, as mail clients expect


def test_emptying_the_mailbox_starts_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "mail" / "mail.mbox"
    spool = mailbox.Spool(path)
    spool.append("a@example.com", ["b@example.com"], MESSAGE)
    mailbox.empty(path)
    assert mailbox.count(path) == 0 and mailbox.read_raw(path) == []
    spool.append("a@example.com", ["c@example.com"], MESSAGE)
    assert [m["X-Envelope-To"] for m in mailbox.read_caught(path)] == ["c@example.com"]
    shutil.rmtree(path.parent)  # even the folder
    spool.append("a@example.com", ["d@example.com"], MESSAGE)
    spool.close()
    assert [m["X-Envelope-To"] for m in mailbox.read_caught(path)] == ["d@example.com"]


def test_moving_the_mailbox_aside_starts_a_new_file(tmp_path: Path) -> None:
    """The catcher kept writing into the moved file: the README's mailbox path showed nothing new."""
    path = tmp_path / "mail.mbox"
    spool = mailbox.Spool(path)
    spool.append("a@example.com", ["b@example.com"], MESSAGE)
    path.rename(tmp_path / "old.mbox")
    spool.append("a@example.com", ["c@example.com"], MESSAGE)
    spool.close()
    assert [m["X-Envelope-To"] for m in mailbox.read_caught(path)] == ["c@example.com"]
    assert [m["X-Envelope-To"] for m in mailbox.read_caught(tmp_path / "old.mbox")] == ["b@example.com"]


def test_the_command_lists_what_was_caught(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spool = mailbox.Spool(tmp_path / "mail.mbox")
    spool.append("a@example.com", ["b@example.com"], MESSAGE)
    spool.close()
    mailbox.main([str(tmp_path / "mail.mbox")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [lines[0].split()[0], "to", "b@example.com", "hi"]
    assert lines[0].split()[0].endswith("Z")  # X-Caught-At
    assert lines[1] == f"1 message(s) in {tmp_path / 'mail.mbox'}"


def test_the_command_says_where_no_stack_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A newcomer's probe: without COLLABKARE_STACK_DIR exported it printed "0 message(s)" for another directory."""
    with pytest.raises(SystemExit) as stopped:
        mailbox.main([str(tmp_path / "mail.mbox")])
    assert stopped.value.code == 1
    assert "export COLLABKARE_STACK_DIR" in capsys.readouterr().err
    (tmp_path / "stack.env").write_text("KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092\n")  # a stack, no mail yet
    mailbox.main([str(tmp_path / "mail.mbox")])
    assert capsys.readouterr().out.strip() == f"0 message(s) in {tmp_path / 'mail.mbox'}"


def test_the_command_prints_an_invites_token_decoded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The raw file holds the link quoted-printable (`=3D`, soft line breaks): copied from there, it is wrong."""
    token = "LOiV_n7oR5KPQopmszTUzMfRHuJWRf-" * 3
    invite = claimed_delivery(
        recipient="pat@example.com", accept_url=f"http://127.0.0.1:8080/invites/accept?token={token}"
    )
    raw = Renderer("CollabKare <no-reply@collabkare.example>").render(invite)
    assert token.encode() not in raw, "the premise: the raw message does not hold the token as it is"
    spool = mailbox.Spool(tmp_path / "mail.mbox")
    spool.append("no-reply@collabkare.example", ["pat@example.com"], raw)
    spool.append("a@example.com", ["b@example.com"], MESSAGE)
    spool.close()
    mailbox.main([str(tmp_path / "mail.mbox")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"    invite token: {token}"
    assert len(lines) == 4, "no token line for a message without an accept link"


def test_a_cr_in_the_envelope_cannot_merge_two_records(tmp_path: Path) -> None:
    """SMTP accepts a bare CR inside a quoted local part; it must not end the From line early."""
    spool = mailbox.Spool(tmp_path / "mail.mbox")
    spool.append('"a\rFrom b"@example.com', ["c\r\nX-Evil: 1@example.com"], MESSAGE)
    spool.append("a@example.com", ["b@example.com"], MESSAGE)
    spool.close()
    raw = mailbox.read_raw(tmp_path / "mail.mbox")
    assert len(raw) == mailbox.count(tmp_path / "mail.mbox") == 2
    assert raw[0].startswith(b'X-Envelope-From: "a From b"@example.com\r\nX-Envelope-To: c  X-Evil: 1@example.com\r\n')


def test_a_reader_never_sees_half_a_record(tmp_path: Path) -> None:
    """The writer appends under an exclusive lock, readers read under a shared one."""
    path = tmp_path / "mail.mbox"
    body = MESSAGE + b"z" * 70 + b"\r\n"
    big = body * 100  # ~10 kB a record: more than one page
    stop = threading.Event()

    def write() -> None:
        spool = mailbox.Spool(path)
        while not stop.is_set():
            for _ in range(100):
                spool.append("a@example.com", ["b@example.com"], big)
            mailbox.empty(path)  # keeps the file small: every read below stays cheap on a slow machine
        spool.close()

    writer = threading.Thread(target=write)
    writer.start()
    reads_with_records = 0
    deadline = time.monotonic() + 60
    try:
        # Until 100 reads met records (a loaded box's writer thread can lose every race for a while: 300 reads in a
        # row once saw none), or the deadline.
        while reads_with_records < 100 and time.monotonic() < deadline:
            messages = mailbox.read_raw(path)
            assert all(message.endswith(big) for message in messages)
            reads_with_records += bool(messages)
    finally:
        stop.set()
        writer.join()
    assert reads_with_records > 0, "no read saw a record: the check above was never made"


_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from collabkare.stack import mailbox
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as a full disk would
path = Path(sys.argv[1])
spool = mailbox.Spool(path)
spool.append("a@example.com", ["b@example.com"], b"Subject: first\\r\\n\\r\\nfits\\r\\n")
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 100, path.stat().st_size + 100))
try:
    spool.append("a@example.com", ["b@example.com"], b"Subject: second\\r\\n\\r\\n" + b"x" * 10_000 + b"\\r\\n")
except OSError as error:
    print("refused", error.errno)
"""


def test_a_full_disk_leaves_no_half_record_and_the_catcher_answers_452(tmp_path: Path) -> None:
    """Found by a fault drill: with the disk full the last record was left cut off mid-body (and read as an email),
    and aiosmtpd answered "500 Error", permanent, so the notifier gave up on every email while it lasted."""
    import asyncio
    import errno
    import subprocess
    import sys
    from types import SimpleNamespace

    from collabkare.stack.smtp_catcher import FaultFile, SpoolHandler

    path = tmp_path / "mail.mbox"
    done = subprocess.run([sys.executable, "-c", _FULL_DISK, str(path)], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("refused"), done.stdout + done.stderr
    assert [message["Subject"] for message in mailbox.read_caught(path)] == ["first"]
    assert mailbox.read_raw(path)[0].endswith(b"fits\r\n")

    class FullDisk(mailbox.Spool):
        def append(self, sender: str, recipients: list[str], content: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    handler = SpoolHandler(FullDisk(tmp_path / "other.mbox"), FaultFile(None))
    envelope = SimpleNamespace(mail_from="a@example.com", rcpt_tos=["b@example.com"], original_content=MESSAGE)
    answer = asyncio.run(handler.handle_DATA(None, None, envelope))
    assert answer == "452 4.3.1 Insufficient system storage (No space left on device)"
