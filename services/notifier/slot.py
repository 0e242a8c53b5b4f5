"""A sender's slot: NOTIFIER_INSTANCE's session advisory lock, held by one live process at a time.

A restarted process in its slot takes back at once what its killed predecessor had claimed (the sender does), instead
of waiting out SENDING_LEASE_SECONDS; the lock makes sure no live process's claims are taken so. It goes with the
database session holding it, so it is taken again should PostgreSQL end that session (a failover,
pg_terminate_backend, a proxy's idle timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import asyncpg

from services.notifier import handlers
from services.runtime.database import closed
from services.runtime.logging import get_logger

log = get_logger(__name__)

WAIT_SECONDS = 5.0  # for a killed predecessor's database session to end before its slot is ours
LOOK_SECONDS = 5.0  # how often the slot's connection is looked at, should its closing go unannounced


class Slot:
    def __init__(self, pool: asyncpg.Pool, instance: str) -> None:
        self.pool = pool
        self.instance = instance
        self.connection: asyncpg.Connection | None = None  # holds the lock
        self.lost = asyncio.Event()  # set when the connection closes under it

    async def take(self) -> bool:
        """Whether the slot is ours now, waiting WAIT_SECONDS for another session to let go of it."""
        connection = await handlers.hold_slot(self.pool, self.instance, WAIT_SECONDS)
        if connection is None:
            return False
        self.connection = connection
        with contextlib.suppress(asyncpg.InterfaceError):  # closed already: keep()'s look finds it so
            connection.add_termination_listener(self._closed)
        return True

    async def keep(self) -> None:
        """The lock held again should the session holding it end: PostgreSQL let go of the lock with it, and a second
        process given the same NOTIFIER_INSTANCE would find the slot free, take it, and at each of its restarts take
        this live run's claims back. Only the lock is taken again, nothing taken back: the run's start did that, and a
        run that took the slot meanwhile is a live process. Returns, which ends the run (its results recorded, its
        unsent claims given back), should another session keep the slot for WAIT_SECONDS: the run then names no more
        claims in a slot it does not hold; the next finds the slot taken and claims outside it."""
        failures = 0
        while True:
            self.lost.clear()  # before the look: a closing announced after it wakes the wait
            if self.connection is not None and not closed(self.connection):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LOOK_SECONDS):
                        await self.lost.wait()
                continue
            if self.connection is not None:
                log.warning("sender.slot_lost", instance=self.instance, effect="taking the slot's lock again")
                await self.let_go()
            try:
                taken = await self.take()
            except Exception as error:  # the database is away (the claimer says so): tried again until it answers
                failures += 1
                log.debug("sender.slot_not_taken", error=repr(error)[:200], attempt=failures)
                await asyncio.sleep(min(30.0, 0.2 * 2**failures) * random.uniform(0.5, 1.0))
                continue
            if not taken:
                why = "another process took the slot while its lock was lost: this run ends, the next claims in no slot"
                log.error(
                    "sender.instance_in_use", instance=self.instance, effect=why, fix="one NOTIFIER_INSTANCE each"
                )
                return
            failures = 0
            log.info("sender.slot_held_again", instance=self.instance)

    async def let_go(self) -> None:
        """Back to the pool, whose reset unlocks it (or closed: the lock went with its session)."""
        connection, self.connection = self.connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.remove_termination_listener(self._closed)  # the pool's reset would keep it
            with contextlib.suppress(Exception):
                await self.pool.release(connection, timeout=1)

    def _closed(self, *_: object) -> None:
        self.lost.set()
