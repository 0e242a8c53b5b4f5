"""The README's commands as a user runs them: `collabkare demo` and `collabkare stack up` until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import psutil
import pytest

from collabkare.seeding import seeded_patient_id
from collabkare.stack.infra import plan
from collabkare.stack.ports import free_port
from schemas import TOPICS
from tests.support import read_to_end

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "collabkare.cli"]
# The whole stack from cold, as processes: the waits below (a 240 s demo, 180 s to the banner) must not be cut
# short by pytest's 120 s default, which a loaded 2-core machine can reach (55 s here under two busy loops).
pytestmark = pytest.mark.timeout(360)


def _environment(workdir: Path) -> tuple[dict[str, str], dict[str, int]]:
    ports = {name: free_port() for name in ("connections", "invitations", "notifier")}
    env = {**os.environ, "COLLABKARE_STACK_DIR": str(workdir), "PYTHONUNBUFFERED": "1"}
    env.update({f"{name.upper()}_PORT": str(port) for name, port in ports.items()})
    env["CONSOLE_PORT"] = str(free_port())  # `stack up` serves the staff console too
    return env, ports


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """A `collabkare` command as a second terminal runs it, with `env` for that terminal's environment."""
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def _leftovers(workdir: Path, ports: dict[str, int]) -> list[str]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(workdir) in cmdline:
            found.append(f"{process.info['pid']}: {cmdline[:120]}")
    for name, port in ports.items():
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                found.append(f"{name} still listens on {port}")
    return found


def _lingering(workdir: Path, ports: dict[str, int], bound: float = 5.0) -> list[str]:
    """What is still running or listening, once it is nothing or `bound` seconds have passed (a child the OS has
    not finished tearing down when its parent returns is not left behind)."""
    deadline = time.monotonic() + bound
    while (found := _leftovers(workdir, ports)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_demo_runs_the_scenario_and_leaves_nothing(tmp_path: Path) -> None:
    workdir = ROOT / "var" / f"e2e-{uuid.uuid4().hex[:8]}"
    env, ports = _environment(workdir)
    result = subprocess.run([*CLI, "demo"], env=env, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    ready_lines = [line for line in result.stdout.splitlines() if line.rstrip().endswith(" ready")]
    assert len(ready_lines) == 3, result.stdout
    for name, port in ports.items():
        assert any(name in line and f":{port}" in line for line in ready_lines)
    assert "[BAD]" not in result.stdout
    assert "== done: every outcome as expected" in result.stdout
    assert _lingering(workdir, ports) == []


class _Output:
    """A process's output, read by a thread: every wait for a line is bounded, even if the process hangs."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> str | None:
        """The first line from here on that contains `text`; None at the end of the output or after `timeout`."""
        deadline = time.monotonic() + timeout
        while (line := self._next(deadline - time.monotonic())) is not None:
            if text in line:
                return line
        return None

    def rest(self, timeout: float) -> str:
        """Everything from here to the end of the output (or `timeout`)."""
        deadline = time.monotonic() + timeout
        start = len(self.lines)
        while self._next(deadline - time.monotonic()) is not None:
            pass
        return "".join(self.lines[start:])

    def _next(self, timeout: float) -> str | None:
        try:
            line = self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        if line is not None:
            self.lines.append(line)
        return line

    def __str__(self) -> str:
        return "".join(self.lines)


def _child_pid(parent: int, module: str) -> int:
    [child] = [
        process.pid for process in psutil.Process(parent).children(recursive=True) if module in _command(process)
    ]
    return child


def _command(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # ended while we looked (a PostgreSQL worker)
        return ""


def _kill_tree(parent: subprocess.Popen[str]) -> None:
    """SIGKILL a stack that did not stop, children first: left running, it would slow every later test."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(parent.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
    parent.kill()
    parent.wait(timeout=10)


def _answers_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class _StackUp:
    process: subprocess.Popen[str]
    output: _Output
    workdir: Path
    env: dict[str, str]
    ports: dict[str, int]
    remaining: str = ""  # the output after the block: the stack's last lines

    def leftovers(self) -> list[str]:
        return _lingering(self.workdir, {**self.ports, "console": int(self.env["CONSOLE_PORT"])})


@contextmanager
def _stack_up(**exported: str) -> Iterator[_StackUp]:
    """`collabkare stack up` in its own directory and ports, past its banner; interrupted (Ctrl-C) after the block
    unless it ended by itself. `exported`: more of the user's environment."""
    workdir = ROOT / "var" / f"e2e-{uuid.uuid4().hex[:8]}"
    env, ports = _environment(workdir)
    env.update(exported)
    process = subprocess.Popen(
        [*CLI, "stack", "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    stack = _StackUp(process, _Output(process.stdout), workdir, env, ports)
    try:
        assert stack.output.wait_for("Ctrl-C stops everything", timeout=180) is not None, str(stack.output)
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            _kill_tree(process)
            raise
        finally:
            stack.remaining = stack.output.rest(timeout=10)


def test_stack_up_serves_until_interrupted(tmp_path: Path) -> None:
    """`stack up` serves, restarts a service killed under it (as Kubernetes would) and stops on Ctrl-C."""
    prefix = f"dev-{uuid.uuid4().hex[:6]}."
    with _stack_up(KAFKA_TOPIC_PREFIX=prefix) as stack:
        output, env, ports, workdir = stack.output, stack.env, stack.ports, stack.workdir
        text = str(output)
        assert "CollabKare local stack is ready" in text, text
        assert f"http://127.0.0.1:{ports['invitations']}" in text
        assert f"staff console  http://127.0.0.1:{env['CONSOLE_PORT']}/" in text
        token_line = output.lines[output.lines.index("  staff token (practice_manager, 8 h):\n") + 1].strip()
        assert token_line.count(".") == 2, "the banner should print a JWT"
        # A new user's walkthrough: the database password went to the terminal (and to a log file others could
        # read), and the "more tokens" command failed in a second terminal that lacked this stack's directory.
        stack_env = dict(line.split("=", 1) for line in (workdir / "stack.env").read_text().splitlines())
        password = urlsplit(stack_env["MIGRATION_DATABASE_URL"]).password
        assert password and password not in text and f"(its password: {workdir}/stack.env)" in text
        assert f"more tokens:  COLLABKARE_STACK_DIR={workdir} .venv/bin/collabkare token staff" in text
        other_shell = {k: v for k, v in env.items() if k != "JWT_SECRET"}
        other_shell["COLLABKARE_STACK_DIR"] = str(tmp_path / "no-stack-here")  # not var/stack: one may run there
        elsewhere = _cli(other_shell, "token", "staff", "--practice", str(uuid.uuid4()), "--role", "front_desk")
        assert elsewhere.returncode != 0 and "needs the same COLLABKARE_STACK_DIR here" in elsewhere.stderr
        # The CLI finds this stack through COLLABKARE_STACK_DIR: its stack.env sits in the stack's directory.
        assert "JWT_SECRET=" in (workdir / "stack.env").read_text()
        minted = _cli(env, "token", "patient", "--patient", str(uuid.uuid4()), "--email", "p@example.com")
        assert minted.returncode == 0, minted.stderr
        assert minted.stdout.strip().count(".") == 2
        seeded = _cli(env, "seed", "patient", "p@example.com", "--locale", "es")
        assert seeded.returncode == 0 and seeded.stdout.startswith("PatientRegistered "), seeded.stderr
        assert str(seeded_patient_id("P@example.com")) in seeded.stdout, "an email's id is the same every time"
        # A newcomer's review: the stack ignored an exported KAFKA_TOPIC_PREFIX, so on a shared broker it joined the
        # real consumer groups and published its seeds to the platform's topics. Its topics carry the prefix, and
        # the CLI's seed went to them.
        assert stack_env["KAFKA_TOPIC_PREFIX"] == prefix
        deleted = _cli(env, "delete", "patient", "p@example.com")  # the platform deletes her: a tombstone
        assert deleted.returncode == 0 and deleted.stdout.startswith("patient "), deleted.stderr
        assert _cli(env, "delete", "patient").returncode == 2, "an email or --id"
        topic = TOPICS["platform.patients.v1"]
        bootstrap = stack_env["KAFKA_BOOTSTRAP_SERVERS"]
        records = asyncio.run(read_to_end(bootstrap, prefix + topic.name, partitions=topic.partitions))
        mine = [
            record.value is None for record in records if record.key == str(seeded_patient_id("p@example.com")).encode()
        ]
        assert mine == [False, True], "her registration, then her tombstone"

        # A fault drill by hand: the notifier killed as a node would kill it. The stack says so and restarts it.
        killed = _child_pid(stack.process.pid, "services.notifier")
        os.kill(killed, signal.SIGKILL)
        notice = output.wait_for("notifier exited", timeout=30)
        assert notice is not None, str(output)
        log = workdir / "logs" / "notifier.log"
        assert notice == f"notifier exited unexpectedly (code -9, see {log}): restarting in 1 s\n", str(output)
        for _ in range(240):  # bounded: about two minutes of polls
            if _answers_ready(ports["notifier"]):  # after the notice: only the new process can answer
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the notifier did not answer /readyz again:\n{output}\n{log.read_text()[-3000:]}")
        ready = output.wait_for("notifier is ready again", timeout=30)
        assert ready is not None, str(output)
        revived = _child_pid(stack.process.pid, "services.notifier")
        assert revived != killed and ready == f"notifier is ready again (pid {revived})\n"
        assert stack.process.poll() is None, str(output)
    assert stack.process.returncode == 0, str(stack.output)
    assert "no process left behind" in stack.remaining
    assert not (stack.workdir / "stack.env").exists()
    assert stack.leftovers() == []


@pytest.mark.skipif(plan(os.environ).kafka != "embedded", reason="the broker is not a process of the stack")
def test_stack_up_stops_when_the_broker_dies(tmp_path: Path) -> None:
    """The infrastructure is not restarted (the broker keeps its topics in memory): its death ends `stack up`."""
    with _stack_up() as stack:
        os.kill(_child_pid(stack.process.pid, "memory://tansu/"), signal.SIGKILL)
        stack.process.wait(timeout=90)  # on its own: no Ctrl-C
    assert stack.process.returncode == 1, str(stack.output)
    assert "collabkare: broker exited unexpectedly (code -9)" in stack.remaining, str(stack.output)
    assert "restarting" not in str(stack.output)
    assert stack.leftovers() == []


def test_busy_port_gives_one_clear_line(tmp_path: Path) -> None:
    workdir = ROOT / "var" / f"e2e-{uuid.uuid4().hex[:8]}"
    env, ports = _environment(workdir)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports["connections"]))
        holder.listen()
        result = subprocess.run([*CLI, "demo"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1, result.stderr
    assert f"port {ports['connections']}" in error_lines[0] and "CONNECTIONS_PORT" in error_lines[0]
    assert "Traceback" not in result.stderr
