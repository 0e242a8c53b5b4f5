"""A small supervisor for the stack's child processes: start, wait until ready, notice deaths, stop all."""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from collabkare.stack.errors import StackError

STOP_TIMEOUT_SECONDS = 10.0
# util-linux's setpriv (Linux): a child gets its stop signal when the supervisor dies, even by kill -9, instead
# of living on with the stack's ports. Where it is missing (macOS), children outlive a supervisor killed hard.
_SETPRIV = shutil.which("setpriv")
# setpriv arms that signal and then runs the command; a supervisor killed in between orphans the child.
ARM_TIMEOUT_SECONDS = 5.0


def var_dir() -> Path:
    """The repository's `var/` (gitignored): default home of data directories and logs."""
    return Path(__file__).resolve().parents[2] / "var"


def run_as(user: str | None) -> dict[str, Any]:
    """subprocess keyword arguments that run a child as `user` with only its own group, when we are root."""
    if user is None or os.geteuid() != 0:
        return {}
    account = pwd.getpwnam(user)
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


@dataclass
class _Child:
    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    user: str | None
    cwd: Path | None
    stop_signal: signal.Signals
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    # False once we stopped or killed it on purpose, so that check_alive() does not call that a crash.
    expected: bool = field(default=False)
    # Once its group is gone we never signal that pgid again: the number may belong to someone else by then.
    reaped: bool = field(default=False)


class Supervisor:
    """Child processes, each in its own process group and logging to `<log_dir>/<name>.log`."""

    def __init__(self, log_dir: Path, stop_timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        self.log_dir = log_dir
        self.stop_timeout = stop_timeout
        self._children: dict[str, _Child] = {}
        # A forked copy of this process inherits the supervisor but does not own its children.
        self._owner_pid = os.getpid()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        command: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        cwd: Path | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> int:
        """Start `command` as `name` (environment = ours + `env`); returns its pid."""
        if name in self._children and self.alive(name):
            raise StackError(f"{name} is already running (pid {self.pid(name)})")
        child = _Child(
            name,
            [str(part) for part in command],
            {**os.environ, **(env or {})},
            self.log_dir / f"{name}.log",
            user,
            cwd,
            stop_signal,
        )
        self._children[name] = child
        self._launch(child)
        return self.pid(name)

    def _launch(self, child: _Child) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        _register(self)
        child.log = child.log_path.open("ab")
        banner = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(child.command)}\n"
        child.log.write(banner.encode())
        child.log.flush()
        identity = run_as(child.user)
        command = child.command
        if _SETPRIV is not None:
            # setpriv would start fine and then fail to run a missing program: say so here, as Popen would.
            if shutil.which(command[0], path=child.env.get("PATH")) is None:
                child.log.close()
                reason = "Permission denied" if os.path.exists(command[0]) else "No such file or directory"
                raise StackError(f"cannot start {child.name}: {command[0]}: {reason}")
            command = [_SETPRIV, "--pdeathsig", child.stop_signal.name.removeprefix("SIG"), "--", *command]
        try:
            child.process = subprocess.Popen(  # noqa: S603 - commands are built by this package, never from input
                command,
                env=child.env,
                cwd=child.cwd,
                stdin=subprocess.DEVNULL,
                stdout=child.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **identity,
            )
        except OSError as error:
            child.log.close()
            raise StackError(f"cannot start {child.name}: {child.command[0]}: {error.strerror}") from None
        child.expected, child.reaped = True, False
        if _SETPRIV is not None:
            _wait_until_past(child.process.pid, Path(_SETPRIV).resolve())

    def pid(self, name: str) -> int:
        process = self._children[name].process
        return process.pid if process else -1

    def pids(self) -> dict[str, int]:
        """The running children by name."""
        return {name: self.pid(name) for name in self._children if self.alive(name)}

    def log_path(self, name: str) -> Path:
        return self._children[name].log_path

    def alive(self, name: str) -> bool:
        child = self._children.get(name)
        return bool(child and child.process and child.process.poll() is None)

    def exited(self) -> list[str]:
        """The children that died without being asked to, in the order they were started."""
        return [
            child.name
            for child in self._children.values()
            if child.expected and child.process and child.process.poll() is not None
        ]

    def check_alive(self) -> None:
        """Raise StackError for the first child that died without being asked to."""
        if dead := self.exited():
            raise StackError(self.death_notice(dead[0]))

    def exit_code(self, name: str) -> int | None:
        """The last process's exit status (negative: the signal that ended it); None while it runs."""
        process = self._children[name].process
        return process.poll() if process else None

    def wait_ready(self, name: str, check: Callable[[], bool], timeout: float, every: float = 0.05) -> None:
        """Poll `check` until it returns True; fail early if the child dies, or after `timeout` seconds."""
        child = self._children[name]
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            if child.process is None or child.process.poll() is not None:
                raise StackError(self.death_notice(name))
            try:
                if check():
                    return
            except Exception as error:  # not ready yet, in whatever way the check reports it
                last_error = f" (last attempt: {error})".replace("\n", " ")
            if time.monotonic() > deadline:
                raise StackError(f"{name} not ready after {timeout:.0f} s{last_error}: see {child.log_path}")
            time.sleep(every)

    def stop(self, name: str, timeout: float | None = None) -> None:
        """Ask the group to stop (the child's stop signal), then SIGKILL it after `timeout` seconds."""
        child = self._children[name]
        child.expected = False
        process = child.process
        if process is None or child.reaped:
            return
        if process.poll() is None:
            _signal_group(process.pid, child.stop_signal)
            _signal_group(process.pid, signal.SIGCONT)  # a frozen child (see `freeze`) must see the signal
            try:
                process.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(5)
        # Members that outlive the leader (a crashed postmaster's backends) go too. Safe: Linux does not
        # reuse a pid while it still names a process group with members.
        _signal_group(process.pid, signal.SIGKILL)
        child.reaped = True
        if child.log is not None:
            child.log.close()

    def kill(self, name: str) -> None:
        """SIGKILL the whole group at once, as a crash would (fault drills)."""
        child = self._children[name]
        if child.process is not None and not child.reaped:
            _signal_group(child.process.pid, signal.SIGKILL)
        self.stop(name)

    def freeze(self, name: str) -> None:
        """SIGSTOP the group: the server keeps its state and its sockets but answers nothing (fault drills)."""
        child = self._children[name]
        if child.process is not None and not child.reaped:
            _signal_group(child.process.pid, signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        """SIGCONT: a frozen server carries on where it was."""
        child = self._children[name]
        if child.process is not None and not child.reaped:
            _signal_group(child.process.pid, signal.SIGCONT)

    def restart(self, name: str) -> int:
        """Stop `name` (gracefully) and start it again with the same command; returns the new pid."""
        self.stop(name)
        self._launch(self._children[name])
        return self.pid(name)

    def stop_all(self, timeout: float | None = None) -> None:
        """Stop every child, the last started first."""
        if os.getpid() != self._owner_pid:
            return
        for name in reversed(list(self._children)):
            self.stop(name, timeout)
        _unregister(self)

    def log_tail(self, name: str, lines: int = 1) -> str:
        with contextlib.suppress(OSError), self._children[name].log_path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
            tail = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
            return " | ".join(tail[-lines:])
        return ""

    def death_notice(self, name: str) -> str:
        """One line on a child that ended: its exit code, its log and that log's last line."""
        child = self._children[name]
        code = child.process.returncode if child.process else None
        tail = self.log_tail(name)
        return f"{name} exited unexpectedly (code {code}): see {child.log_path}, last line: {tail}"


def _wait_until_past(pid: int, wrapper: Path) -> None:
    """Return once `pid` no longer runs `wrapper` (Popen returns once it has started it), or has exited.

    setpriv arms the death signal before it runs the command, so a supervisor killed after start() returned
    never leaves that child behind.
    """
    deadline = time.monotonic() + ARM_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            if Path(os.readlink(f"/proc/{pid}/exe")) != wrapper:
                return
        except OSError:  # exited (or /proc hides it): nothing left to wait for
            return
        time.sleep(0.001)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


# Children run in their own sessions, so a terminal's Ctrl-C or a SIGTERM reaches only us: whoever owns
# them must stop them. Context managers cover normal exits and Ctrl-C; the handler below covers SIGTERM
# and SIGHUP, and atexit covers an interpreter that exits without unwinding.
class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that `with` blocks unwind and pytest ends its session."""


_live: list[Supervisor] = []
_atexit_pid = 0
_previous_handlers: dict[int, Any] = {}
_lock = threading.Lock()


def _register(supervisor: Supervisor) -> None:
    global _atexit_pid
    with _lock:
        if supervisor not in _live:
            _live.append(supervisor)
        if _atexit_pid != os.getpid():
            _atexit_pid = os.getpid()
            atexit.register(_stop_everything)
    # Python lets only the main thread install handlers; from elsewhere, atexit and `with` must do.
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous = signal.getsignal(signum)
            if previous is not signal.SIG_IGN and previous is not _on_signal:
                _previous_handlers[signum] = previous
                signal.signal(signum, _on_signal)


def _unregister(supervisor: Supervisor) -> None:
    with _lock:
        if supervisor in _live:
            _live.remove(supervisor)


def _stop_everything() -> None:
    for supervisor in reversed(list(_live)):
        supervisor.stop_all(timeout=5.0)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Children first: whatever happens while the program unwinds, none of them is left behind.
    _stop_everything()
    previous = _previous_handlers.get(signum)
    if callable(previous):
        previous(signum, frame)
        return
    raise Terminated(f"stopped by {signal.Signals(signum).name}")
