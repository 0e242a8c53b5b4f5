"""The `make up` reviver against real child processes: a killed service comes back, the rest is left alone."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from collabkare.stack.errors import StackError
from collabkare.stack.processes import Supervisor
from collabkare.stack.revive import Backoff, Reviver

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
CRASHER = [sys.executable, "-c", "raise SystemExit(3)"]
QUICK = Backoff(first=0.01, cap=1.0, stable_after=60.0, limit=5, window=120.0)
POLLS = 1000  # each poll sleeps 10 ms: a bound of about 10 s, far more than a child needs to start or die


def _poll_until(reviver: Reviver, done: Callable[[], bool], what: str) -> None:
    for _ in range(POLLS):
        reviver.poll()
        if done():
            return
        time.sleep(0.01)
    pytest.fail(f"never happened: {what}")


def test_a_killed_child_is_relaunched_with_a_new_pid_and_reported_ready(tmp_path: Path) -> None:
    lines: list[str] = []
    with Supervisor(tmp_path) as supervisor:
        first = supervisor.start("notifier", SLEEPER)
        reviver = Reviver(supervisor, ["notifier"], ready=lambda name: True, backoff=QUICK, say=lines.append)
        os.kill(first, signal.SIGKILL)
        _poll_until(reviver, lambda: any("ready again" in line for line in lines), "the relaunched child is ready")
        second = supervisor.pid("notifier")
        assert second != first and supervisor.alive("notifier")
        log = tmp_path / "notifier.log"
        assert lines == [
            f"notifier exited unexpectedly (code -9, see {log}): restarting in 0.01 s",
            f"notifier is ready again (pid {second})",
        ]
        assert log.read_text().count("starting: ") == 2  # the same log, one banner per launch


def test_a_child_stopped_on_purpose_stays_stopped(tmp_path: Path) -> None:
    lines: list[str] = []
    with Supervisor(tmp_path) as supervisor:
        supervisor.start("notifier", SLEEPER)
        reviver = Reviver(supervisor, ["notifier"], ready=lambda name: True, backoff=QUICK, say=lines.append)
        supervisor.stop("notifier")
        for _ in range(20):  # twice the backoff, many times over
            reviver.poll()
            time.sleep(0.01)
        assert not supervisor.alive("notifier")
        assert lines == []


def test_a_child_not_on_the_list_stops_everything(tmp_path: Path) -> None:
    lines: list[str] = []
    with Supervisor(tmp_path) as supervisor:
        supervisor.start("notifier", SLEEPER)
        broker = supervisor.start("broker", SLEEPER)
        reviver = Reviver(supervisor, ["notifier"], ready=lambda name: True, backoff=QUICK, say=lines.append)
        os.kill(broker, signal.SIGKILL)
        with pytest.raises(StackError, match=r"^broker exited unexpectedly \(code -9\)"):
            _poll_until(reviver, lambda: False, "the broker's death is noticed")
        assert lines == []
        assert supervisor.alive("notifier")  # untouched: stopping it is the caller's unwinding


def test_a_child_that_keeps_dying_gives_up_after_the_limit(tmp_path: Path) -> None:
    lines: list[str] = []
    backoff = Backoff(first=0.01, cap=0.02, stable_after=60.0, limit=3, window=120.0)
    with Supervisor(tmp_path) as supervisor:
        supervisor.start("invitations", CRASHER)
        reviver = Reviver(supervisor, ["invitations"], ready=lambda name: False, backoff=backoff, say=lines.append)
        with pytest.raises(StackError) as raised:
            _poll_until(reviver, lambda: False, "the crash loop is given up")
        message = str(raised.value)
        assert message.startswith("invitations exited unexpectedly (code 3)")
        assert message.endswith("it was restarted 3 times in 120 s: giving up, stopping the stack")
        # Doubling from `first`, capped; one line per crash that was restarted, none for the last.
        assert [line.rsplit(" in ", 1)[1] for line in lines] == ["0.01 s", "0.02 s", "0.02 s"]
        assert not supervisor.alive("invitations")


def test_a_child_that_stayed_up_long_enough_starts_its_backoff_over(tmp_path: Path) -> None:
    lines: list[str] = []
    backoff = Backoff(first=0.01, cap=1.0, stable_after=0.0, limit=3, window=120.0)  # every run counts as stable
    with Supervisor(tmp_path) as supervisor:
        supervisor.start("connections", CRASHER)
        reviver = Reviver(supervisor, ["connections"], ready=lambda name: False, backoff=backoff, say=lines.append)
        with pytest.raises(StackError):
            _poll_until(reviver, lambda: False, "the crash loop is given up")
        assert [line.rsplit(" in ", 1)[1] for line in lines] == ["0.01 s", "0.01 s", "0.01 s"]


def test_the_backoff_doubles_up_to_its_cap() -> None:
    assert [Backoff().delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
