"""Restart a supervised child that dies, as a Kubernetes Deployment restarts its pod: with a crash-loop backoff,
and a limit past which a child that keeps dying stops everything instead."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from collabkare.stack.errors import StackError
from collabkare.stack.processes import Supervisor


@dataclass(frozen=True)
class Backoff:
    """How long to wait before a restart, and when to stop trying."""

    first: float = 1.0  # the wait before the first restart; it doubles with each crash in a row
    cap: float = 30.0
    stable_after: float = 60.0  # up this long, the child's next crash is a first one again
    limit: int = 5  # this many restarts within `window` seconds, and the next crash gives up
    window: float = 120.0

    def delay(self, crashes_in_a_row: int) -> float:
        return float(min(self.first * 2 ** (crashes_in_a_row - 1), self.cap))


@dataclass
class _Record:
    launched: float  # when the running (or last) process started
    crashes_in_a_row: int = 0
    restarts: list[float] = field(default_factory=list)  # when it was relaunched, for the crash-loop limit
    due: float | None = None  # while it waits out its backoff: when to relaunch it
    awaiting_ready: bool = False


class Reviver:
    """Watches `supervisor`: a child named in `restartable` that dies is relaunched; any other one is fatal.

    `poll()` never waits: call it every second or so from the loop that keeps the stack up. `ready(name)` is
    one quick probe of a relaunched child; `say` prints one line per event for the operator.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        restartable: Collection[str],
        ready: Callable[[str], bool],
        backoff: Backoff | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.backoff = backoff or Backoff()
        self._ready = ready
        self._say = say or (lambda line: print(line, flush=True))
        now = time.monotonic()
        self._records = {name: _Record(launched=now) for name in restartable}

    def poll(self) -> None:
        """Notice deaths, relaunch the children whose backoff is over, report the ones answering again.

        Raises StackError for a child outside `restartable` that died, or one that keeps dying.
        """
        dead = self.supervisor.exited()
        for name in dead:
            if name not in self._records:
                raise StackError(self.supervisor.death_notice(name))
        now = time.monotonic()
        for name in dead:
            self._crashed(name, now)
        for name, record in self._records.items():
            if record.due is not None and now >= record.due:
                self._relaunch(name, record, now)
            elif record.awaiting_ready and self.supervisor.alive(name) and self._ready(name):
                record.awaiting_ready = False
                self._say(f"{name} is ready again (pid {self.supervisor.pid(name)})")

    def _crashed(self, name: str, now: float) -> None:
        record = self._records[name]
        code = self.supervisor.exit_code(name)
        notice = self.supervisor.death_notice(name)
        # Reaps what is left of its process group; from here on it is ours to relaunch, not a crash to report.
        self.supervisor.stop(name)
        record.awaiting_ready = False
        record.restarts = [at for at in record.restarts if now - at < self.backoff.window]
        if len(record.restarts) >= self.backoff.limit:
            raise StackError(
                f"{notice}; it was restarted {len(record.restarts)} times in {self.backoff.window:.0f} s: "
                "giving up, stopping the stack"
            )
        stable = now - record.launched >= self.backoff.stable_after
        record.crashes_in_a_row = 1 if stable else record.crashes_in_a_row + 1
        delay = self.backoff.delay(record.crashes_in_a_row)
        record.due = now + delay
        log = self.supervisor.log_path(name)
        self._say(f"{name} exited unexpectedly (code {code}, see {log}): restarting in {delay:g} s")

    def _relaunch(self, name: str, record: _Record, now: float) -> None:
        self.supervisor.restart(name)  # the same command and environment it was started with
        record.due = None
        record.launched = now
        record.restarts.append(now)
        record.awaiting_ready = True
