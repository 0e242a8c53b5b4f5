"""The life cycle the embedded servers share: one supervised child each, started, probed, stopped, killed."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Self

from collabkare.stack.processes import Supervisor


class ManagedServer(ABC):
    """One server run by `supervisor` under `name`; a subclass says how to launch it and when it answers.

    `start()` launches the child (with `Supervisor.start`) and then calls `_wait_ready()`; `restart()`
    keeps the command it was started with, so the fault drills can stop, kill and restart it freely.
    """

    name: ClassVar[str]
    supervisor: Supervisor
    startup_timeout: float

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @abstractmethod
    def start(self) -> None:
        """Launch the child with `self.supervisor.start(...)`, then `self._wait_ready()`."""

    def stop(self) -> None:
        self.supervisor.stop(self.name)

    def kill(self) -> None:
        self.supervisor.kill(self.name)

    def freeze(self) -> None:
        self.supervisor.freeze(self.name)

    def thaw(self) -> None:
        self.supervisor.thaw(self.name)

    def restart(self) -> None:
        self.supervisor.restart(self.name)
        self._wait_ready()

    def alive(self) -> bool:
        return self.supervisor.alive(self.name)

    def _wait_ready(self) -> None:
        self.supervisor.wait_ready(self.name, self._answers, self.startup_timeout)

    @abstractmethod
    def _answers(self) -> bool:
        """One readiness probe: True, or an exception saying why not yet."""
