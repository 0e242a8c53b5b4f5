"""The README's commands as a user runs them: `collabkare demo` and `collabkare stack up` until Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from collabkare.stack.ports import free_port

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
    time.sleep(0.5)
    assert _leftovers(workdir, ports) == []


def test_stack_up_serves_until_interrupted(tmp_path: Path) -> None:
    workdir = ROOT / "var" / f"e2e-{uuid.uuid4().hex[:8]}"
    env, ports = _environment(workdir)
    stack = subprocess.Popen(
        [*CLI, "stack", "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output: list[str] = []
    try:
        assert stack.stdout is not None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = stack.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(output)
        assert "CollabKare local stack is ready" in text, text
        assert f"http://127.0.0.1:{ports['invitations']}" in text
        assert f"staff console  http://127.0.0.1:{env['CONSOLE_PORT']}/" in text
        token_line = output[output.index("  staff token (practice_manager, 8 h):\n") + 1].strip()
        assert token_line.count(".") == 2, "the banner should print a JWT"
        # The CLI finds this stack through COLLABKARE_STACK_DIR: its stack.env sits in the stack's directory.
        assert "JWT_SECRET=" in (workdir / "stack.env").read_text()
        minted = subprocess.run(
            [*CLI, "token", "patient", "--patient", str(uuid.uuid4()), "--email", "p@example.com"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert minted.stdout.strip().count(".") == 2
        seeded = subprocess.run(
            [*CLI, "seed", "patient", "p@example.com", "--locale", "es"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert seeded.returncode == 0 and seeded.stdout.startswith("PatientRegistered "), seeded.stderr
    finally:
        stack.send_signal(signal.SIGINT)
        remaining, _ = stack.communicate(timeout=90)
    assert stack.returncode == 0, "".join(output) + remaining
    assert "no process left behind" in remaining
    assert not (workdir / "stack.env").exists()
    time.sleep(0.5)
    assert _leftovers(workdir, {**ports, "console": int(env["CONSOLE_PORT"])}) == []


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
